"""AG-CAM pixel metrics (spec §4): golden parity and hand-built masks."""
import numpy as np
import pytest

from wsol_jax.eval import pixel_metrics


def test_golden_per_image_and_mean(golden_dir):
  g = np.load(golden_dir / "metrics.npz")
  maps = g["scoremaps_q1024"].astype(np.float64) / 1024
  metric = pixel_metrics.AgCamPixelMetrics()
  per = np.concatenate([metric.update(maps[i:i + 20], g["gt_boxes"][i:i + 20])
                        for i in range(0, 64, 20)])
  np.testing.assert_array_equal(per, g["agcam_pixel_metrics"])  # float32, bit-exact
  r = metric.compute()
  assert r.count == 64
  mean = np.array([r.pixel_acc, r.iou, r.dice, r.precision, r.recall], np.float32)
  np.testing.assert_array_equal(mean, g["agcam_pixel_metrics_mean"])


def test_boxes_to_mask_inclusive_union_and_truncation():
  mask = pixel_metrics.boxes_to_mask(np.array([[1, 1, 2, 2], [2, 2, 5, 3], [-1, -1, -1, -1],
                                               [5, 4, 9, 9]]), (6, 6))
  expected = np.zeros((6, 6), bool)
  expected[1:3, 1:3] = True
  expected[2:4, 2:6] = True
  expected[4:6, 5:6] = True
  np.testing.assert_array_equal(mask, expected)
  assert not pixel_metrics.boxes_to_mask(np.zeros((0, 4), int), (3, 3)).any()


def test_hand_built_metrics_and_eps():
  gt = np.zeros((10, 10), bool)
  gt[0:5, 0:4] = True  # 20 px
  pred = np.zeros((10, 10), bool)
  pred[0:5, 2:6] = True  # 20 px, 10 overlap
  got = pixel_metrics.mask_metrics(pred, gt)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, [80 / 100, 10 / 30, 20 / 40, 10 / 20, 10 / 20], rtol=1e-6)
  # No prediction, no GT: eps makes every ratio 1.
  np.testing.assert_array_equal(pixel_metrics.mask_metrics(~gt & False, gt & False), [1] * 5)


def test_strict_half_threshold_and_unclipped_boxes():
  m = np.zeros((8, 8))
  m[2:4, 5:8] = 1.0
  m[6, 0] = 0.5  # exactly 0.5: background
  # Box [5, 2, 8, 4] (x+w, y+h), filled inclusively and truncated at the edge: rows 2..4.
  got = pixel_metrics.agcam_image_metrics(m, np.array([[5, 2, 7, 4]]))
  np.testing.assert_array_equal(got, [1, 1, 1, 1, 1])


def test_only_correctly_classified_images_are_averaged():
  maps = np.zeros((3, 8, 8))
  maps[:, 2:4, 2:4] = 1
  gt = np.array([[[2, 2, 4, 4]], [[5, 5, 7, 7]], [[2, 2, 4, 4]]])
  metric = pixel_metrics.AgCamPixelMetrics()
  per = metric.update(maps, gt, correct=np.array([True, False, True]))
  assert np.isnan(per[1]).all()
  r = metric.compute()
  assert r.count == 2 and r.iou == pytest.approx(1.0)
  with pytest.raises(ValueError):
    pixel_metrics.AgCamPixelMetrics().compute()
