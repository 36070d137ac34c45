"""The evaluator: its standard metrics as accumulators (pinned to the official loop), a pass
driven by a plain maps function, and overlays from the explicit per-image table."""
import dataclasses
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsol_jax import config_lib
from wsol_jax.eval import boxes as boxes_lib
from wsol_jax.eval import evaluator as evaluator_lib
from wsol_jax.eval import protocols
import reference_boxes as reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
STANDARD_KEYS = ["maxboxacc_v2", "maxboxacc_v2_iou30", "maxboxacc_v2_iou50", "maxboxacc_v2_iou70",
                 "optimal_threshold_iou50", "gt_known", "top1_loc", "cls_top1", "cls_top5"]


def _maps_and_boxes(rng, n, size=24):
  """Smooth maps in [0, 1]: an object blob with its GT box (jittered), and on some maps a
  distractor blob (several contours at low thresholds)."""
  y, x = np.mgrid[:size, :size]
  maps = np.zeros((n, size, size))
  boxes = np.full((n, 2, 4), -1, np.int64)
  for i in range(n):
    for j in range(int(rng.integers(1, 3))):
      cy, cx = rng.uniform(4, size - 4, 2)
      s = rng.uniform(1.5, 4)
      maps[i] += rng.uniform(0.3, 1) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))
      if j == 0:
        box = np.array([cx - 2 * s, cy - 2 * s, cx + 2 * s, cy + 2 * s]) + rng.normal(0, 1.5, 4)
        box = np.clip(np.round(box), 0, size - 1).astype(np.int64)
        boxes[i, 0] = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]),
                       max(box[1], box[3])]
    maps[i] = (maps[i] - maps[i].min()) / (maps[i].max() - maps[i].min())
  return maps, boxes


def _batches(seed=0, n_batches=3, b=6, num_classes=10):
  rng = np.random.default_rng(seed)
  out = []
  for k in range(n_batches):
    labels = rng.integers(0, num_classes, b)
    top5 = np.stack([rng.permutation(num_classes)[:5] for _ in range(b)])
    hit = rng.random(b) < 0.6
    top5[hit, 0] = labels[hit]
    valid = np.ones(b, bool)
    if k == n_batches - 1:
      valid[-1] = False  # batch padding
    maps, boxes = _maps_and_boxes(rng, b)
    out.append(protocols.BatchContext(
        maps=maps, topk_maps=None, top5=top5, labels=labels,
        boxes=boxes, valid=valid, normalized_images=lambda: None,
        index=np.arange(k * b, (k + 1) * b), masks=None))
  return out


def test_standard_accumulators_equal_the_official_loop():
  delta, ious = 0.05, (30, 50, 70)
  thresholds = boxes_lib.cam_thresholds(delta)
  accs = [evaluator_lib.MaxBoxAccV2(delta, ious), evaluator_lib.GtKnownTop1Loc(delta),
          evaluator_lib.Classification()]
  ref_v2 = reference.ReferenceBoxEvaluator(thresholds, ious, multi_contour_eval=True)
  ref_v1 = reference.ReferenceBoxEvaluator(thresholds, (50,), multi_contour_eval=False)
  loc = np.zeros(len(thresholds), np.int64)
  top1 = top5 = n = 0
  rows, best_rows = [], []
  for ctx in _batches():
    for acc in accs:
      acc.update(ctx)
    for i in np.flatnonzero(ctx.valid):
      gt = ctx.boxes[i][ctx.boxes[i, :, 0] >= 0]
      best2 = ref_v2.accumulate(ctx.maps[i], gt)
      best1 = np.asarray(ref_v1.accumulate(ctx.maps[i], gt))
      correct = ctx.top5[i, 0] == ctx.labels[i]
      loc += (best1 >= 0.5) & correct
      top1 += int(correct)
      top5 += int(ctx.labels[i] in ctx.top5[i])
      n += 1
      rows.append(ctx.index[i])
      best_rows.append(best2)
  got = [kv for acc in accs for kv in acc.results()]
  assert [k for k, _ in got] == STANDARD_KEYS
  got = dict(got)
  max_acc = ref_v2.compute()
  assert got["maxboxacc_v2"] == pytest.approx(np.mean(max_acc), abs=1e-12)
  for t, a in zip(ious, max_acc):
    assert got[f"maxboxacc_v2_iou{t}"] == pytest.approx(a, abs=1e-12)
  box_acc50 = ref_v2.num_correct[50] * 100.0 / n
  assert got["optimal_threshold_iou50"] == thresholds[int(np.argmax(box_acc50))]
  assert got["gt_known"] == pytest.approx(ref_v1.compute()[0], abs=1e-12)
  assert got["top1_loc"] == pytest.approx(loc.max() * 100.0 / n, abs=1e-12)
  assert got["cls_top1"] == pytest.approx(top1 * 100.0 / n)
  assert got["cls_top5"] == pytest.approx(top5 * 100.0 / n)
  assert 0 < got["gt_known"] < 100 and 0 < got["top1_loc"] < got["cls_top1"]  # not trivial
  table = accs[0].per_image()
  np.testing.assert_array_equal(table.index, rows)
  np.testing.assert_array_equal(table.best_iou, np.asarray(best_rows))
  np.testing.assert_array_equal(table.thresholds, thresholds)


def test_pxap_accumulator_skips_batches_without_masks_and_reports_only_with_foreground():
  ctx = _batches(n_batches=1)[0]
  acc = evaluator_lib.PixelAveragePrecision(0.01)
  acc.update(ctx)
  assert list(acc.results()) == []
  masks = (ctx.maps > 0.5).astype(np.uint8)
  acc.update(dataclasses.replace(ctx, masks=masks))
  (name, value), = acc.results()
  assert name == "pxap" and 0 < value <= 100


# -- a whole pass on the synthetic dataset, with a plain maps function ---------------------------
@pytest.fixture(scope="module")
def config(tmp_path_factory):
  return config_lib.load(f"{ROOT / 'configs/cam_synthetic.py'}:smoke",
                         [f"data.data_dir={tmp_path_factory.mktemp('tfds')}",
                          "eval.batch_size=8"])


NUM_CLASSES = 6  # the classes of the synthetic dataset


def _brightness_maps(variables, images, targets):
  """Maps: local brightness of the normalised image; logits: the target class wins."""
  maps = images.mean(-1)[:, ::4, ::4] * variables["scale"]
  logits = jax.nn.one_hot(targets, NUM_CLASSES) + jnp.arange(NUM_CLASSES) * 1e-3
  return maps, logits


def _predict(variables, images):
  return jnp.zeros((images.shape[0], NUM_CLASSES))


def _evaluator(config, **kwargs):
  return evaluator_lib.LocalizationEvaluator(
      _brightness_maps, _predict, config.eval, config.data, "test", num_classes=NUM_CLASSES,
      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), upsample="bicubic", **kwargs)


def test_a_pass_with_a_plain_maps_function(config):
  ev = _evaluator(config, protocols=("rfga",))
  variables = {"scale": jnp.float32(1.0)}
  report = ev.evaluate(variables)
  keys = list(report.metrics)
  assert keys[:len(STANDARD_KEYS)] == STANDARD_KEYS
  assert keys[len(STANDARD_KEYS)] == "pxap" and keys[-2:] == ["num_examples", "num_skipped"]
  assert [k for k in keys if k.startswith("rfga_")][-1] == "rfga_miou"
  m = report.metrics
  assert m["num_examples"] == 16 and m["num_skipped"] == 0
  assert m["cls_top1"] == 100.0 and m["top1_loc"] == m["gt_known"]  # every image classified right
  assert len(report.per_image) == 16 and sorted(report.per_image.index) == list(range(16))
  # The table holds the best IoUs MaxBoxAccV2 counted.
  best = report.per_image.best_iou
  for t in ev.iou_thresholds:
    assert m[f"maxboxacc_v2_iou{t}"] == pytest.approx((best >= t / 100).mean(0).max() * 100)
  np.testing.assert_array_equal(report.per_image.thresholds, boxes_lib.cam_thresholds(ev.delta))
  # No state carries over: the same pass again, and run() yields the same pairs.
  assert ev.evaluate(variables).metrics == m
  assert list(ev.run(variables)) == list(m.items())


def test_overlays_come_from_the_table_they_are_given(config, tmp_path):
  ev = _evaluator(config)
  variables = {"scale": jnp.float32(1.0)}
  thresholds = boxes_lib.cam_thresholds(ev.delta)
  best = np.zeros((3, len(thresholds)))
  best[:, 40] = [0.1, 0.55, 0.9]  # τ = 0.4 is where most images reach IoU 0.5
  best[2, 10] = 0.7
  table = evaluator_lib.PerImageIoU(index=np.array([3, 5, 7]), best_iou=best,
                                    thresholds=thresholds)
  assert table.optimal_index() == 40
  paths = ev.write_overlays(variables, table, tmp_path / "a", 3)
  assert [p.name for p in paths] == ["worst_000003_iou0.10.png", "best_000007_iou0.90.png",
                                     "best_000005_iou0.55.png"]
  assert all(p.is_file() for p in paths)
  # The table of a real pass works the same way.
  report = ev.evaluate(variables)
  paths = ev.write_overlays(variables, report.per_image, tmp_path / "b", 2)
  k = report.per_image.optimal_index()
  order = np.argsort(report.per_image.best_iou[:, k], kind="stable")
  want = [(tag, int(report.per_image.index[r]), report.per_image.best_iou[r, k])
          for tag, r in (("worst", order[0]), ("best", order[-1]))]
  assert [p.name for p in paths] == [f"{t}_{i:06d}_iou{v:.2f}.png" for t, i, v in want]
  empty = evaluator_lib.PerImageIoU(np.zeros(0, np.int64), np.zeros((0, len(thresholds))),
                                    thresholds)
  assert ev.write_overlays(variables, empty, tmp_path / "c", 2) == []
  assert ev.write_overlays(variables, table, tmp_path / "d", 0) == []


def test_for_method_takes_the_map_kind_upsample_and_protocols_from_the_config(config):
  calls = []

  def maps(variables, images, targets, kind=None):
    calls.append(kind)
    return _brightness_maps(variables, images, targets)

  method = types.SimpleNamespace(
      maps=maps, predict=_predict, map_kinds=("cam", "other"), upsample="bicubic",
      maps_all_classes=False, num_classes=NUM_CLASSES,
      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), eval_protocols=("rfga",))
  cfg = config.copy_and_resolve_references()
  ev = evaluator_lib.for_method(method, cfg, "test")
  assert ev.upsample == "bicubic" and ev.protocol_names == ()
  assert evaluator_lib.for_method(method, cfg, "test", protocols=True).protocol_names == ("rfga",)
  cfg.eval.map_kind, cfg.eval.upsample, cfg.eval.max_examples = "other", "bilinear", 1
  ev = evaluator_lib.for_method(method, cfg, "test")
  assert ev.upsample == "bilinear"
  ev.evaluate({"scale": jnp.float32(1.0)})
  assert calls[-1] == "other"
  cfg.eval.map_kind = "cam"  # the default kind is asked for as None
  evaluator_lib.for_method(method, cfg, "test").evaluate({"scale": jnp.float32(1.0)})
  assert calls[-1] is None
  cfg.eval.protocols = ("nope",)
  with pytest.raises(ValueError, match="unknown evaluation protocol"):
    evaluator_lib.for_method(method, cfg, "test", protocols=True)
