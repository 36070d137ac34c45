"""TS-CAM (fixed CAM_THR) and SCM (threshold sweep) GT-known / Top-k Loc."""
import numpy as np
import pytest

from wsol_jax.eval import iou, localization
import reference_boxes as reference

H = W = 16


def _blob(x0, y0, x1, y1, peak=1.0):
  """A (H, W) float32 map that is ``peak`` on the inclusive pixel box, 0 elsewhere."""
  m = np.zeros((H, W), np.float32)
  m[y0:y1 + 1, x0:x1 + 1] = peak
  return m


def test_top_k_indices_and_classification():
  logits = np.array([[0.1, 3.0, 2.0, -1.0, 0.5, 0.7], [5.0, 1.0, 1.0, 0.0, 0.2, 0.3]])
  idx = localization.top_k_indices(logits, 5)
  np.testing.assert_array_equal(idx, [[1, 2, 5, 4, 0], [0, 1, 2, 5, 4]])
  np.testing.assert_array_equal(localization.classification_correct(idx, np.array([2, 0])),
                                [[False, True], [True, True]])


def test_tscam_strict_top_k_versus_inclusive_gt_known():
  # Every map has a 1x2 blob -> TS-CAM box [2, 3, 4, 4] (6 px); GT [2, 3, 4, 6] (12 px):
  # IoU exactly 0.5, so GT-known counts (>=) but Top-1/Top-5 Loc do not (>).
  maps = np.stack([_blob(2, 3, 3, 3)] * 5)[None]
  idx = np.array([[7, 1, 2, 3, 4]])
  gt = np.array([[[2, 3, 4, 6]]])
  acc = localization.TsCamLocalization(cam_thr=0.1)
  out = acc.update(maps, idx, np.array([7]), gt)
  np.testing.assert_array_equal(out["boxes"][0, 0], [2, 3, 4, 4])
  assert out["ious"][0, 0] == 0.5 and out["gt_known_iou"][0] == 0.5
  r = acc.compute()
  assert (r.cls_top1, r.cls_top5, r.loc_top1, r.loc_top5, r.gt_known) == (100, 100, 0, 0, 100)


def test_tscam_top5_uses_the_gt_class_box_and_gt_maps_for_gt_known():
  good, bad = _blob(4, 4, 9, 9), _blob(0, 12, 2, 15)
  gt = np.array([[[4, 4, 10, 10]], [[4, 4, 10, 10]], [[4, 4, 10, 10]]])
  maps = np.stack([np.stack([bad, good, bad, bad, bad]),   # GT class 2nd: top-5 only
                   np.stack([good, bad, bad, bad, bad]),   # GT class 1st
                   np.stack([good] * 5)])                  # GT class not predicted
  idx = np.array([[0, 3, 1, 2, 4], [3, 0, 1, 2, 4], [0, 1, 2, 4, 5]])
  labels = np.array([3, 3, 3])
  acc = localization.TsCamLocalization(cam_thr=0.5)
  with pytest.raises(ValueError, match="gt_maps"):
    acc.update(maps, idx, labels, gt)
  gt_maps = np.stack([good, good, bad])
  out = acc.update(maps, idx, labels, gt, gt_maps=gt_maps)
  np.testing.assert_array_equal(out["gt_known_iou"] >= 0.5, [True, True, False])
  r = acc.compute()
  np.testing.assert_allclose([r.cls_top1, r.cls_top5, r.loc_top1, r.loc_top5, r.gt_known],
                             [100 / 3, 200 / 3, 100 / 3, 200 / 3, 200 / 3])


def _scm_reference(maps, idx, labels, gt, thresholds, ious=(30, 50, 70), topk=(1, 5)):
  """Port of SCM's process_batch counters (V1 boxes, gate = argmax == GT)."""
  det = {t: np.zeros((len(topk), len(thresholds))) for t in ious}
  loc = {t: np.zeros((len(topk), len(thresholds))) for t in ious}
  for i in range(len(maps)):
    cnt_det = {t: np.zeros((max(topk), len(thresholds))) for t in ious}
    cnt_loc = {t: np.zeros((max(topk), len(thresholds))) for t in ious}
    g = gt[i][gt[i][:, 0] >= 0]
    for j in range(max(topk)):
      b, n = reference.compute_bboxes_from_scoremaps(maps[i, j].astype(np.float64), thresholds)
      miou = reference.calculate_multiple_iou(np.concatenate(b), g)
      sliced, k0 = [], 0
      for nb in n:
        sliced.append(max(miou.max(1)[k0:k0 + nb]))
        k0 += nb
      for t in ious:
        ok = np.where(np.asarray(sliced) >= t / 100)[0]
        cnt_det[t][j][ok] += 1
        if idx[i, 0] == labels[i]:
          cnt_loc[t][j][ok] += 1
    for t in ious:
      for c, k in enumerate(topk):
        det[t][c] += (np.sum(cnt_det[t][:k], axis=0) > 0).astype(int)
        loc[t][c] += (np.sum(cnt_loc[t][:k], axis=0) > 0).astype(int)
  return np.stack([det[t] for t in ious]), np.stack([loc[t] for t in ious])


def test_scm_matches_the_official_counting():
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:H, 0:W]
  maps = np.exp(-((yy - rng.uniform(0, H, (4, 5, 1, 1))) ** 2
                  + (xx - rng.uniform(0, W, (4, 5, 1, 1))) ** 2) / rng.uniform(4, 40, (4, 5, 1, 1)))
  maps = (maps - maps.min((2, 3), keepdims=True)) / np.ptp(maps, (2, 3), keepdims=True)
  idx = np.array([[1, 2, 3, 4, 5], [6, 1, 2, 3, 4], [3, 2, 1, 0, 9], [0, 1, 2, 3, 4]])
  labels = np.array([1, 1, 7, 0])
  gt = np.array([[[2, 2, 9, 9], [-1] * 4], [[5, 1, 15, 8], [0, 0, 3, 3]], [[0, 0, 15, 15],
                [-1] * 4], [[8, 8, 12, 12], [-1] * 4]])
  thresholds = np.arange(0, 1, 0.05)
  acc = localization.ScmLocalization(thresholds, num_threads=2)
  acc.update(maps[:3], idx[:3], labels[:3], gt[:3])
  acc.update(maps[3:], idx[3:], labels[3:], gt[3:])
  r = acc.compute()
  det, loc = _scm_reference(maps, idx, labels, gt, thresholds)
  np.testing.assert_array_equal(r.det_correct, det)
  np.testing.assert_array_equal(r.loc_correct, loc)
  np.testing.assert_array_equal(r.maxbox_acc, (det * 100 / 4).max(axis=2))
  np.testing.assert_array_equal(r.det_opt_threshold, thresholds[(det * 100 / 4).argmax(axis=2)])
  np.testing.assert_array_equal(r.cls_acc, [50, 75])
  assert r.gt_known_top1 == r.maxbox_acc[1, 0] and r.top1_loc == r.loc_acc[1, 0]
  assert r.top5_loc == r.loc_acc[1, 1]


def test_scm_gate_variants_and_inclusive_half():
  # Map 0 (a wrong class) localises with IoU exactly 0.5, map 1 (the GT class) does not.
  hit, miss = _blob(2, 3, 3, 3), _blob(12, 12, 12, 12)
  maps = np.stack([hit, miss, miss, miss, miss])[None]
  idx, labels = np.array([[5, 9, 1, 2, 3]]), np.array([9])
  gt = np.array([[[2, 3, 4, 6]]])  # V1 box [2, 3, 4, 4] (6 px) vs 12 px: IoU exactly 0.5
  for gate, loc5 in (("top1", 0), ("per_class", 0)):
    acc = localization.ScmLocalization([0.5], iou_thresholds=(50,), loc_gate=gate)
    best = acc.update(maps, idx, labels, gt)
    assert best[0, 0, 0] == 0.5
    r = acc.compute()
    assert r.det_correct[0, 0, 0] == 1 and r.det_correct[0, 1, 0] == 1  # any class, >=
    assert r.loc_correct[0, 1, 0] == loc5
  maps = np.stack([miss, hit, miss, miss, miss])[None]  # now the GT class (2nd) localises
  for gate, loc5 in (("top1", 0), ("per_class", 1)):
    acc = localization.ScmLocalization([0.5], iou_thresholds=(50,), loc_gate=gate)
    acc.update(maps, idx, labels, gt)
    assert acc.compute().loc_correct[0, 1, 0] == loc5
  with pytest.raises(ValueError, match="loc_gate"):
    localization.ScmLocalization(loc_gate="any")


def test_tscam_on_golden_maps(golden_dir):
  """Top-5 maps rebuilt the TS-CAM way (float32 cv2 INTER_LINEAR + min-max) from tscam.npz."""
  import cv2  # pylint: disable=import-outside-toplevel
  g = np.load(golden_dir / "tscam.npz")
  targets = np.load(golden_dir / "inputs.npz")["targets"]

  def resize_cam(cam):
    cam = cv2.resize(cam, (224, 224))
    return (cam - cam.min()) / (cam.max() - cam.min())

  np.testing.assert_array_equal(np.stack([resize_cam(c[t]) for c, t in zip(g["cams"], targets)]),
                                g["map224"])
  idx = localization.top_k_indices(g["logits"], 5)
  maps = np.stack([[resize_cam(g["cams"][b, j]) for j in idx[b]] for b in range(4)])
  gt = np.array([[[40, 40, 180, 200]]] * 4)
  acc = localization.TsCamLocalization(cam_thr=0.1)
  out = acc.update(maps, idx, targets, gt, gt_maps=g["map224"])
  expected = np.array([[40, 40, 180, 200]])
  assert (idx == targets[:, None]).any()  # some target class is among the top-5 predictions
  for b in range(4):
    assert out["gt_known_iou"][b] == iou.max_iou(g["box_thr010"][b:b + 1], expected)[0]
    for j in np.flatnonzero(idx[b] == targets[b]):
      np.testing.assert_array_equal(out["boxes"][b, j], g["box_thr010"][b])
