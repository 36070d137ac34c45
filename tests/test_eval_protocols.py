"""The papers' protocols as the evaluator drives them, on hand-made maps with known answers."""
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from wsol_jax import config_lib
from wsol_jax.eval import protocols


def _context(maps, boxes, labels, top1, valid=None):
  b = len(maps)
  top5 = np.stack([np.asarray(top1)] + [np.full(b, 9)] * 4, axis=1)
  images = jnp.zeros((b, maps.shape[1], maps.shape[2], 3))
  return protocols.BatchContext(maps=maps, topk_maps=None, top5=top5, labels=np.asarray(labels),
                                boxes=np.asarray(boxes), valid=np.ones(b, bool) if valid is None
                                else np.asarray(valid), normalized_images=lambda: images)


def _box_maps():
  """Two 32×32 maps: a perfect 10×10 object map and an empty-ish one far from the GT box."""
  maps = np.zeros((2, 32, 32))
  maps[0, 5:15, 5:15] = 1.0
  maps[1, 25:30, 25:30] = 1.0
  boxes = np.array([[[5, 5, 14, 14]], [[2, 2, 10, 10]]])
  return maps, boxes


def test_vitol_fixed_threshold_protocol():
  cfg = config_lib.base_config().eval
  cfg.fixed_threshold = 0.165
  p = protocols.build(["vitol"], cfg, num_classes=10, all_classes=False)[0]
  maps, boxes = _box_maps()
  p.update(_context(maps, boxes, labels=[3, 4], top1=[3, 4]))
  out = dict(p.results())
  # Image 0: box [5,5,min(15,31),min(15,31)] vs GT [5,5,14,14] -> IoU 100/121 (the +1 quirk).
  assert out["vitol_boxacc_iou50"] == 50.0 and out["vitol_boxacc_iou70"] == 50.0
  assert out["vitol_top1_loc"] == 50.0
  assert out["vitol_boxacc_v2"] == pytest.approx(50.0)
  cfg.fixed_threshold = 0.0
  with pytest.raises(ValueError, match="fixed_threshold"):
    protocols.build(["vitol"], cfg, 10, False)


def test_rfga_protocol_reports_each_iou_and_the_miou():
  cfg = config_lib.base_config().eval
  p = protocols.build(["rfga"], cfg, num_classes=10, all_classes=False)[0]
  maps, boxes = _box_maps()
  p.update(_context(maps, boxes, labels=[0, 0], top1=[0, 0]))
  out = dict(p.results())
  assert out["rfga_maxboxacc_iou50"] == 50.0 and out["rfga_maxboxacc_iou90"] == 0.0
  assert out["rfga_maxboxacc_avg"] == pytest.approx(np.mean([out[f"rfga_maxboxacc_iou{t}"]
                                                             for t in (50, 60, 70, 80, 90)]))
  assert out["rfga_miou"] == pytest.approx((100 / 121) / 2, rel=1e-6)


def test_agcam_protocol_counts_correct_images_and_runs_abpc():
  cfg = config_lib.base_config().eval
  p = protocols.build(["agcam"], cfg, num_classes=10, all_classes=False)[0]
  w = jnp.asarray(np.random.default_rng(0).normal(size=(32 * 32 * 3, 10)), jnp.float32)
  p.start(lambda x: x.reshape(x.shape[0], -1) @ w)
  maps, boxes = _box_maps()
  maps = maps + np.linspace(0, 1e-3, 32 * 32).reshape(32, 32)  # tie-free heat for the ranking
  p.update(_context(maps, boxes, labels=[3, 4], top1=[3, 5]))
  out = dict(p.results())
  assert out["agcam_num_correct"] == 1.0   # image 1 is misclassified: skipped
  # Image 0: the box [5,5,15,15] (x+w, inclusive when rasterised) covers 11×11 pixels, GT 10×10.
  assert out["agcam_iou"] == pytest.approx(100 / 121, rel=1e-4)
  assert np.isfinite(out["abpc"]) and out["abpc"] == pytest.approx(out["auc_lerf"] - out["auc_morf"])


def test_build_skips_all_class_protocols_for_per_target_methods_and_rejects_unknown():
  cfg = config_lib.base_config().eval
  assert [type(p).__name__ for p in protocols.build(["tscam", "scm", "rfga"], cfg, 10, False)] == [
      "RfgaProtocol"]
  assert len(protocols.build(["tscam", "scm"], cfg, 10, True)) == 2
  with pytest.raises(ValueError, match="unknown evaluation protocol"):
    protocols.build(["gradcam"], cfg, 10, True)


def test_an_unknown_protocol_fails_before_any_training(tmp_path):
  config_file = pathlib.Path(__file__).resolve().parents[1] / "configs/agcam_synthetic.py"
  cfg = config_lib.load(f"{config_file}:smoke",
                        [f"data.data_dir={tmp_path / 'tfds'}"])
  protocols.check_supported(("agcam", "tscam"))
  with pytest.raises(ValueError, match=r"eval\.protocols.*'agcm'.*valid.*'agcam'"):
    protocols.check_supported(("agcm",))
  cfg.eval.protocols = ("agcm",)
  from wsol_jax import trainer
  with pytest.raises(ValueError, match=r"eval\.protocols"):
    trainer.train_and_evaluate(cfg, tmp_path / "run")
  assert not (tmp_path / "tfds").exists()  # failed before reading (or generating) any data
  assert not [p for p in (tmp_path / "run").rglob("*") if p.is_dir()]  # no checkpoint folders


def _sat_reference(maps, boxes, labels, top5, thresholds):
  """SAT's val_loc_one_epoch, written out with scipy's labelling (skimage's measure.label and
  regionprops in the official code; 8-connectivity, exclusive bbox ends, +1 IoU)."""
  from scipy import ndimage

  def iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1) * max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return inter / (area(a) + area(b) - inter)
  table = []
  for thr in thresholds:
    rows = []
    for m, gt, label, t5 in zip(maps, boxes, labels, top5):
      lab, n = ndimage.label(m > thr, structure=np.ones((3, 3)))
      if n == 0:
        box = [0, 0, m.shape[1], m.shape[0]]
      else:
        sizes = np.bincount(lab.ravel())[1:]
        ys, xs = np.nonzero(lab == 1 + int(np.argmax(sizes)))
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
      best = max(iou(box, g) for g in gt if g[0] >= 0)
      rows.append((best, t5[0] == label, label in t5))
    table.append(rows)
  scores = [sum(100 * (b >= .5) for b, _, _ in r) / len(r) + sum(100 * (b >= .5 and c)
            for b, c, _ in r) / len(r) for r in table]
  j = int(np.argmax(scores))
  r = table[j]
  return {"sat_gt_known": 100 * np.mean([b >= .5 for b, _, _ in r]),
          "sat_top1_loc": 100 * np.mean([b >= .5 and c for b, c, _ in r]),
          "sat_top5_loc": 100 * np.mean([b >= .5 and c5 for b, _, c5 in r]),
          **{f"sat_boxacc_iou{t}": 100 * np.mean([b >= t / 100 for b, _, _ in r])
             for t in (30, 50, 70)},
          "sat_threshold": thresholds[j]}


def test_sat_protocol_matches_the_official_loop_on_random_blobs():
  cfg = config_lib.base_config().eval
  p = protocols.build(["sat"], cfg, num_classes=10, all_classes=False)[0]
  rng = np.random.default_rng(0)
  from scipy import ndimage
  maps = ndimage.gaussian_filter(rng.random((12, 40, 48)), sigma=(0, 4, 4))
  maps = (maps - maps.min((1, 2), keepdims=True)) / np.ptp(maps, (1, 2), keepdims=True)
  maps[3] = 0.0  # no component at any threshold: the whole image
  boxes = np.full((12, 2, 4), -1)
  x0, y0 = rng.integers(0, 20, 12), rng.integers(0, 20, 12)
  boxes[:, 0] = np.stack([x0, y0, x0 + rng.integers(5, 25, 12), y0 + rng.integers(5, 18, 12)], 1)
  boxes[::3, 1] = [30, 25, 47, 39]
  for i in range(0, 12, 2):  # half of the images: a GT box around the map's main blob
    lab, _ = ndimage.label(maps[i] > 0.4, structure=np.ones((3, 3)))
    if lab.max():
      ys, xs = np.nonzero(lab == 1 + np.argmax(np.bincount(lab.ravel())[1:]))
      boxes[i, 0] = [xs.min(), ys.min() + 1, xs.max() + 2, ys.max()]
  labels = rng.integers(0, 4, 12)
  top5 = np.stack([rng.permutation(10)[:5] for _ in range(12)])
  top5[::2, 0] = labels[::2]
  for half in (slice(0, 7), slice(7, 12)):  # two batches
    p.update(protocols.BatchContext(maps=maps[half], topk_maps=None, top5=top5[half],
                                    labels=labels[half], boxes=boxes[half],
                                    valid=np.ones(len(labels[half]), bool),
                                    normalized_images=lambda: None))
  got = dict(p.results())
  want = _sat_reference(maps, boxes, labels, top5, tuple(cfg.sat_thresholds))
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k]), k
  assert 0 < got["sat_gt_known"] < 100  # the data exercises both outcomes
  cfg.sat_thresholds = (0.0, 0.5)
  with pytest.raises(ValueError, match="sat_thresholds"):
    protocols.build(["sat"], cfg, 10, False)
