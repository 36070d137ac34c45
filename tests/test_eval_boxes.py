"""Box mining with OpenCV contour semantics: spec §1.3-1.4/§1.7/§6 cases, goldens, parity."""
import numpy as np
import pytest

from wsol_jax.eval import boxes
import reference_boxes as reference

UNIMODAL = np.array([[0, 0, 0, 0, 0], [0, .4, .4, .4, .6], [0, .4, 1, .8, .6],
                     [0, .4, .4, .4, .6]])
MULTIMODAL = np.array([[.4, 0, .2, .2, .2], [.4, .4, 0, .4, 0], [0, 0, 0, .4, 0],
                       [1, .6, .8, .2, .2]])
THR_02 = np.arange(0, 1, 0.2)


def v1(scoremap, thresholds):
  tb = boxes.threshold_boxes(scoremap, thresholds, multi_contour=False)
  per = tb.per_threshold()
  assert all(len(b) == 1 for b in per)
  return np.stack([b[0] for b in per]).tolist()


def v2(scoremap, thresholds):
  return [b.tolist() for b in
          boxes.threshold_boxes(scoremap, thresholds, multi_contour=True).per_threshold()]


def test_thresholds_and_quantisation():
  t = boxes.cam_thresholds(0.01)
  assert len(t) == 100 and t[0] == 0 and t[-1] == 0.99
  assert t[57] == 0.5700000000000001  # one of the 10 ulp-high values
  np.testing.assert_array_equal(boxes.integer_thresholds(255, t), (255 * np.arange(100)) // 100)
  assert boxes.quantize(np.array([[1 / 255, 0.999999, 1.0]])).tolist() == [[1, 254, 255]]
  nan_map = np.array([np.nan, 0.5], np.float32)
  assert boxes.quantize(nan_map, nan_to_zero=True).tolist() == [0, 127]


def test_evaluation_test_goldens():
  assert v1(np.zeros((3, 3)), THR_02) == [[0, 0, 0, 0]] * 5
  assert v1(UNIMODAL, THR_02) == [[1, 1, 4, 3], [1, 1, 4, 3], [2, 1, 4, 3], [2, 2, 4, 3],
                                  [2, 2, 3, 3]]
  assert v1(MULTIMODAL, THR_02) == [[0, 0, 4, 3], [0, 0, 2, 2], [0, 3, 3, 3], [2, 3, 3, 3],
                                    [0, 3, 1, 3]]
  assert v2(MULTIMODAL, THR_02) == [[[0, 0, 4, 3]], [[0, 1, 4, 3], [0, 0, 2, 2]],
                                    [[0, 3, 3, 3]], [[2, 3, 3, 3], [0, 3, 1, 3]],
                                    [[0, 3, 1, 3]]]


def test_toy_goldens_a_and_b():
  a = np.zeros((8, 8))
  a[2:6, 2:6] = 0.5
  a[3:5, 3:5] = 1.0
  assert v1(a, np.arange(0, 1, 0.25)) == [[2, 2, 6, 6]] * 2 + [[3, 3, 5, 5]] * 2
  b = np.full((8, 8), 0.2)
  b[5:7, 1:3] = 1.0
  assert v1(b, np.arange(0, 1, 0.25)) == [[0, 0, 7, 7]] + [[1, 5, 3, 7]] * 3


def test_ring_with_hole_v2_adds_the_hole_contour():
  m = np.zeros((12, 12))
  m[2:10, 2:10] = 1
  m[4:8, 4:8] = 0
  m[5:7, 5:7] = 1
  got = v2(m, [0.5])[0]
  assert sorted(got) == [[2, 2, 10, 10], [3, 3, 9, 9], [5, 5, 7, 7]]
  assert got == reference.compute_bboxes_from_scoremaps(m, [0.5], True)[0][0].tolist()
  assert v1(m, [0.5]) == [[2, 2, 10, 10]]


def test_all_zero_constant_and_unnormalised_maps():
  assert v2(np.zeros((5, 6)), [0.0, 0.5]) == [[[0, 0, 0, 0]]] * 2
  # Constant 0.6: U = 153 everywhere, T < 153 at every τ < 1, so the whole (clipped) map.
  assert v1(np.full((5, 6), 0.6), [0.0, 0.99]) == [[0, 0, 5, 4]] * 2
  # Unnormalised map (max < 1): thresholds are relative to its own uint8 max (here 100).
  m = np.zeros((6, 6))
  m[1:3, 1:3] = 100 / 255
  m[4, 4] = 60 / 255
  assert v1(m, [0.5, 0.59, 0.6]) == [[1, 1, 3, 3]] * 3
  assert v2(m, [0.5, 0.59, 0.6]) == [[[4, 4, 5, 5], [1, 1, 3, 3]], [[4, 4, 5, 5], [1, 1, 3, 3]],
                                     [[1, 1, 3, 3]]]
  # Values below 1/255 quantise to 0 and are never foreground.
  assert v2(np.full((4, 4), 0.003), [0.0]) == [[[0, 0, 0, 0]]]


def test_border_clipping_and_full_foreground():
  m = np.zeros((8, 8))
  m[:, 5:8] = 1
  assert v1(m, [0.5]) == [[5, 0, 7, 7]]  # right/bottom clipped from 8 to 7, no inflation
  m = np.zeros((8, 8))
  m[0:2, 0:2] = 1
  assert v1(m, [0.5]) == [[0, 0, 2, 2]]  # top/left border: no clipping, inflated by one
  assert v1(np.ones((4, 7)), [0.0, 0.5]) == [[0, 0, 6, 3]] * 2


def test_v1_ties_keep_the_first_contour_in_opencv_order():
  m = np.zeros((10, 10))
  m[1, 1] = m[5, 1] = m[8, 1] = 1  # three zero-area blobs: OpenCV lists row 8 first
  assert v1(m, [0.5]) == [[1, 8, 2, 9]]
  m = np.zeros((9, 9))
  m[1, 1] = m[2, 2] = 1  # diagonal neighbours are one 8-connected component
  assert v2(m, [0.5]) == [[[1, 1, 3, 3]]]


def test_tscam_boxes_are_unclipped_with_01_01_fallback():
  m = np.zeros((8, 8), np.float32)
  m[:, 5:8] = 1
  np.testing.assert_array_equal(boxes.tscam_boxes(m, 0.1), [5, 0, 8, 8])
  np.testing.assert_array_equal(boxes.tscam_boxes(np.zeros((8, 8), np.float32), 0.1),
                                [0, 0, 1, 1])
  np.testing.assert_array_equal(boxes.tscam_boxes(m, [0.1, 1.0]), [[5, 0, 8, 8], [0, 0, 1, 1]])


def test_tscam_golden(golden_dir):
  g = np.load(golden_dir / "tscam.npz")
  maps = g["map224"]  # float32, as TS-CAM quantises it
  for name, thr in (("box_thr010", 0.1), ("box_thr012", 0.12)):
    np.testing.assert_array_equal(np.stack([boxes.tscam_boxes(m, thr) for m in maps]), g[name])
  np.testing.assert_array_equal(
      np.stack([boxes.tscam_boxes(m, g["box_sweep_thr"]) for m in maps]), g["box_sweep"])


def test_agcam_boxes_strict_float_threshold_external_only():
  m = np.zeros((12, 12))
  m[2:10, 2:10] = 0.9
  m[4:8, 4:8] = 0.5  # exactly 0.5 is background (strict >): a ring
  m[5:7, 5:7] = 1.0  # island inside the hole: nested, so not an external contour
  m[11, 0] = 0.51  # a separate blob: a second external contour
  got = boxes.agcam_boxes(m)
  assert sorted(got.tolist()) == [[0, 11, 1, 12], [2, 2, 10, 10]]
  assert boxes.agcam_boxes(np.zeros((4, 4))).shape == (0, 4)


def test_agcam_boxes_golden(golden_dir):
  g = np.load(golden_dir / "metrics.npz")
  maps = g["scoremaps_q1024"].astype(np.float64) / 1024
  got = [boxes.agcam_boxes(m) for m in maps]
  np.testing.assert_array_equal([len(b) for b in got], g["agcam_num_pred_boxes"])
  np.testing.assert_array_equal(np.concatenate(got), g["agcam_pred_boxes_flat"])


def test_flat_and_per_threshold_agree():
  tb = boxes.threshold_boxes(MULTIMODAL, np.arange(0, 1, 0.1), multi_contour=True)
  flat, counts = tb.flat()
  per = tb.per_threshold()
  np.testing.assert_array_equal(counts, [len(b) for b in per])
  np.testing.assert_array_equal(flat, np.concatenate(per))


def _random_maps(rng, n, h, w):
  """Smooth, noisy, blocky (plateaus: many V1 ties) and sparse-dot maps."""
  yy, xx = np.mgrid[0:h, 0:w]
  out = []
  for i in range(n):
    kind = i % 4
    if kind == 0:
      m = np.zeros((h, w))
      for _ in range(rng.integers(1, 4)):
        cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.5, 8)
        m += rng.uniform(.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    elif kind == 1:
      m = rng.random((h, w)) ** 3
    elif kind == 2:
      m = np.kron(rng.integers(0, 4, (h // 4 + 1, w // 4 + 1)), np.ones((4, 4)))[:h, :w]
      m = m * (rng.random((h, w)) < 0.8)
    else:
      m = (rng.random((h, w)) < 0.08) * rng.integers(1, 3, (h, w))
    m = m.astype(np.float64)
    out.append(m / m.max() if m.max() > 0 else m)
  return out


@pytest.mark.parametrize("multi_contour", [False, True])
def test_random_maps_match_the_official_loop_box_for_box(multi_contour):
  rng = np.random.default_rng(0)
  thresholds = np.arange(0, 1, 0.02)
  for m in _random_maps(rng, 48, 23, 31):
    ref, counts = reference.compute_bboxes_from_scoremaps(m, thresholds, multi_contour)
    got = boxes.threshold_boxes(m, thresholds, multi_contour=multi_contour).per_threshold()
    assert [len(b) for b in got] == counts
    for g, r in zip(got, ref):
      np.testing.assert_array_equal(g, r)


def test_fine_delta_dedupes_masks_and_chunked_canvas(monkeypatch):
  rng = np.random.default_rng(3)
  m = rng.random((12, 15)) ** 2
  m /= m.max()
  thresholds = boxes.cam_thresholds(0.001)  # 1000 thresholds, at most 256 distinct masks
  tb = boxes.threshold_boxes(m, thresholds, multi_contour=True)
  assert len(tb.counts) <= 256 and len(tb.mask_index) == 1000
  monkeypatch.setattr(boxes, "_MAX_CANVAS_PIXELS", 200)  # forces many findContours chunks
  for multi_contour in (False, True):
    ref, _ = reference.compute_bboxes_from_scoremaps(m, thresholds, multi_contour)
    got = boxes.threshold_boxes(m, thresholds, multi_contour=multi_contour).per_threshold()
    for g, r in zip(got, ref):
      np.testing.assert_array_equal(g, r)
