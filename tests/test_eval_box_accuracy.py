"""MaxBoxAcc / MaxBoxAccV2: parity with the official run (metrics.npz) and toy goldens."""
import numpy as np
import pytest

from wsol_jax.eval import box_accuracy, boxes
import reference_boxes as reference


@pytest.fixture(scope="module")
def golden(golden_dir):
  g = dict(np.load(golden_dir / "metrics.npz"))
  g["maps"] = g["scoremaps_q1024"].astype(np.float64) / 1024
  return g


@pytest.mark.parametrize("version,multi_contour", [("v1", False), ("v2", True)])
def test_metrics_golden_parity(golden, version, multi_contour):
  thresholds = golden["cam_thresholds"]
  np.testing.assert_array_equal(thresholds, boxes.cam_thresholds(0.01))
  acc = box_accuracy.BoxAccuracy(iou_thresholds=tuple(golden["iou_thresholds"].tolist()),
                                 multi_contour=multi_contour)
  best = np.concatenate([acc.update(golden["maps"][i:i + 24], golden["gt_boxes"][i:i + 24])
                         for i in range(0, 64, 24)])
  np.testing.assert_array_equal(best, golden[f"{version}_best_iou"])  # float64, exact
  result = acc.compute()
  np.testing.assert_array_equal(result.num_correct, golden[f"{version}_num_correct"])
  np.testing.assert_array_equal(result.max_box_acc, golden[f"{version}_max_box_acc"])
  assert result.count == 64
  if multi_contour:
    assert result.max_box_acc_v2 == golden["v2_maxboxaccv2"]


def test_v1_boxes_golden(golden):
  flat = [boxes.threshold_boxes(m, golden["cam_thresholds"]).flat() for m in golden["maps"]]
  np.testing.assert_array_equal(np.stack([f[1] for f in flat]), golden["v1_num_boxes"])
  np.testing.assert_array_equal(np.stack([f[0] for f in flat]), golden["v1_boxes"])


def test_v2_boxes_golden(golden):
  sel = golden["v2_boxes_sel_idx"]
  flat, counts = [], []
  for m in golden["maps"]:
    per = boxes.threshold_boxes(m, golden["cam_thresholds"], multi_contour=True).per_threshold()
    counts.append([len(b) for b in per])
    flat += [per[s] for s in sel]
  np.testing.assert_array_equal(counts, golden["v2_num_boxes"])
  np.testing.assert_array_equal(np.concatenate(flat), golden["v2_boxes_sel_flat"])


def _toy_a_b():
  a = np.zeros((8, 8))
  a[2:6, 2:6] = 0.5
  a[3:5, 3:5] = 1.0
  b = np.full((8, 8), 0.2)
  b[5:7, 1:3] = 1.0
  return np.stack([a, b])


@pytest.mark.parametrize("gt_b,expected,counts50", [
    ([[1, 5, 2, 6], [-1, -1, -1, -1]], [100, 50, 0], [1, 1, 1, 1]),
    ([[1, 5, 2, 6], [0, 0, 7, 7]], [100, 100, 50], [2, 1, 1, 1]),
])
def test_toy_goldens(gt_b, expected, counts50):
  gt = np.array([[[2, 2, 5, 5], [-1, -1, -1, -1]], gt_b])
  acc = box_accuracy.BoxAccuracy(np.arange(0, 1, 0.25), multi_contour=False)
  best = acc.update(_toy_a_b(), gt)
  np.testing.assert_array_equal(best[0], [0.64, 0.64, 0.5625, 0.5625])
  result = acc.compute()
  np.testing.assert_array_equal(result.max_box_acc, expected)
  np.testing.assert_array_equal(result.num_correct[1], counts50)
  assert result.optimal_index[1] == 0 and result.optimal_threshold[1] == 0.0


def test_toy_image_a_alone_v2_number():
  acc = box_accuracy.BoxAccuracy(np.arange(0, 1, 0.25), multi_contour=False)
  acc.update(_toy_a_b()[:1], np.array([[[2, 2, 5, 5]]]))
  result = acc.compute()
  np.testing.assert_array_equal(result.max_box_acc, [100, 100, 0])
  assert result.max_box_acc_v2 == pytest.approx(200 / 3)
  assert result.max_box_acc_at(50) == 100


def test_iou_exactly_half_counts_at_50():
  m = np.zeros((1, 6, 6))
  m[0, 3, 2:4] = 1  # 1x2 blob -> box [2, 3, 4, 4] (x+w, y+h), 6 pixels
  acc = box_accuracy.BoxAccuracy([0.5], iou_thresholds=(50, 51), multi_contour=False)
  best = acc.update(m, np.array([[[2, 3, 4, 6]]]))  # 12 pixels, inter 6 -> IoU 0.5
  assert best[0, 0] == 0.5
  np.testing.assert_array_equal(acc.compute().num_correct[:, 0], [1, 0])


def test_zero_map_gives_one_pixel_box_and_several_degenerate_gt():
  maps = np.zeros((2, 10, 10))
  gt = np.array([[[0, 0, 3, 0], [5, 5, 5, 5]], [[4, 4, 9, 9], [-1, -1, -1, -1]]])
  best = box_accuracy.BoxAccuracy([0.0, 0.5]).update(maps, gt)
  np.testing.assert_array_equal(best, [[0.25, 0.25], [0.0, 0.0]])  # [0,0,0,0] vs 4-px GT


def test_counts_are_order_and_batch_independent_and_valid_masks_padding():
  rng = np.random.default_rng(1)
  yy, xx = np.mgrid[0:20, 0:24]
  maps = np.stack([np.exp(-((yy - rng.uniform(0, 20)) ** 2 + (xx - rng.uniform(0, 24)) ** 2)
                          / rng.uniform(4, 60)) for _ in range(10)])
  maps = (maps - maps.min((1, 2), keepdims=True)) / np.ptp(maps, (1, 2), keepdims=True)
  x0, y0 = rng.integers(0, 12, (2, 10))
  gt = np.stack([x0, y0, x0 + rng.integers(0, 11, 10), y0 + rng.integers(0, 8, 10)], 1)[:, None]
  full = box_accuracy.BoxAccuracy(delta=0.05, num_threads=1)
  full.update(maps, gt)
  perm = rng.permutation(10)
  split = box_accuracy.BoxAccuracy(delta=0.05, num_threads=2)
  padded_maps = np.concatenate([maps[perm], np.full((2, 20, 24), np.nan)])
  padded_gt = np.concatenate([gt[perm], -np.ones((2, 1, 4), int)])
  valid = np.arange(12) < 10
  split.update(padded_maps[:7], padded_gt[:7], valid[:7])
  best = split.update(padded_maps[7:], padded_gt[7:], valid[7:])
  assert np.isnan(best[-2:]).all()
  a, b = full.compute(), split.compute()
  assert a.count == b.count == 10
  np.testing.assert_array_equal(a.num_correct, b.num_correct)
  np.testing.assert_allclose(a.mean_best_iou, b.mean_best_iou, rtol=1e-12)


def test_matches_reference_evaluator_on_random_maps():
  rng = np.random.default_rng(2)
  maps = rng.random((6, 16, 16)) ** 4
  maps[:, 4:10, 3:12] += 1
  maps /= maps.max((1, 2), keepdims=True)
  gt = np.array([[[3, 4, 11, 9], [0, 0, 2, 2]]] * 6)
  thresholds = boxes.cam_thresholds(0.02)
  for multi_contour in (False, True):
    ref = reference.ReferenceBoxEvaluator(thresholds, (30, 50, 70), multi_contour)
    ref_best = [ref.accumulate(m, g) for m, g in zip(maps, gt)]
    acc = box_accuracy.BoxAccuracy(thresholds, multi_contour=multi_contour)
    np.testing.assert_array_equal(acc.update(maps, gt), ref_best)
    np.testing.assert_array_equal(acc.compute().max_box_acc, ref.compute())


def test_rfga_iou_list_and_miou():
  acc = box_accuracy.BoxAccuracy(np.arange(0, 1, 0.25), iou_thresholds=(50, 60, 70, 80, 90),
                                 multi_contour=False)
  acc.update(_toy_a_b()[:1], np.array([[[2, 2, 5, 5]]]))
  result = acc.compute()
  np.testing.assert_array_equal(result.max_box_acc, [100, 100, 0, 0, 0])
  np.testing.assert_array_equal(result.miou, [0.64, 0.64, 0.64, 0.64, 0.64])


def test_errors():
  acc = box_accuracy.BoxAccuracy()
  with pytest.raises(ValueError, match="before any update"):
    acc.compute()
  with pytest.raises(ValueError, match="nans"):
    acc.update(np.full((1, 4, 4), np.nan), np.array([[[0, 0, 1, 1]]]))
  with pytest.raises(ValueError, match="range"):
    acc.update(np.full((1, 4, 4), 1.5), np.array([[[0, 0, 1, 1]]]))
  with pytest.raises(ValueError, match="no ground-truth"):
    acc.update(np.zeros((1, 4, 4)), -np.ones((1, 2, 4), int))
  with pytest.raises(RuntimeError):
    acc.update(np.zeros((1, 4, 4)), np.array([[[2, 0, 1, 1]]]))
