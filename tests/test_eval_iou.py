"""IoU with the inclusive (+1) convention: spec §1.5 goldens, validity errors, GT padding."""
import numpy as np
import pytest

from wsol_jax.eval import iou
import reference_boxes as reference


def test_golden_vectors_from_evaluation_test():
  assert iou.pairwise_iou([[1, 2, 5, 6]], [[3, 1, 4, 5]])[0, 0] == pytest.approx(8 / 27, abs=0)
  assert iou.pairwise_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 1.0
  boxes = np.array([[1, 1, 3, 3], [4, 4, 5, 5]])
  np.testing.assert_array_equal(iou.pairwise_iou(boxes, boxes), np.eye(2))


@pytest.mark.parametrize("bad", [[[1, 1, 0, 0]], [[0, 3, 2, 1]], [[-1, 0, 2, 2]], [[0, 0, 2]]])
def test_invalid_boxes_raise_runtime_error(bad):
  with pytest.raises(RuntimeError):
    iou.pairwise_iou(bad, [[0, 0, 1, 1]])
  with pytest.raises(RuntimeError):
    iou.pairwise_iou([[0, 0, 1, 1]], bad)


def test_matches_reference_arithmetic_bit_for_bit():
  rng = np.random.default_rng(0)
  x0, y0 = rng.integers(0, 50, (2, 40))
  a = np.stack([x0, y0, x0 + rng.integers(0, 30, 40), y0 + rng.integers(0, 30, 40)], 1)
  x0, y0 = rng.integers(0, 50, (2, 7))
  b = np.stack([x0, y0, x0 + rng.integers(0, 30, 7), y0 + rng.integers(0, 30, 7)], 1)
  np.testing.assert_array_equal(iou.pairwise_iou(a, b), reference.calculate_multiple_iou(a, b))


def test_exact_half_and_degenerate_gt():
  # A 1x2 box inside a 1x4 GT box: IoU exactly 0.5 (the >= / > boundary).
  assert iou.pairwise_iou([[2, 3, 3, 3]], [[2, 3, 5, 3]])[0, 0] == 0.5
  # Degenerate (zero-extent) GT boxes are valid one-pixel-wide boxes, e.g. (3, 1, 14, 1).
  assert iou.pairwise_iou([[3, 1, 14, 1]], [[3, 1, 14, 1]])[0, 0] == 1.0
  assert iou.pairwise_iou([[3, 0, 14, 1]], [[3, 1, 14, 1]])[0, 0] == 0.5


def test_valid_gt_drops_padding_and_max_iou_takes_the_best_gt():
  gt = np.array([[0, 0, 3, 3], [-1, -1, -1, -1], [10, 10, 13, 13]])
  kept = iou.valid_gt(gt)
  np.testing.assert_array_equal(kept, gt[[0, 2]])
  np.testing.assert_array_equal(iou.max_iou([[10, 10, 13, 13], [0, 0, 1, 1]], kept),
                                [1.0, 0.25])
  with pytest.raises(ValueError, match="no ground-truth box"):
    iou.max_iou([[0, 0, 1, 1]], iou.valid_gt(-np.ones((2, 4), int)))
  with pytest.raises(RuntimeError):
    iou.valid_gt([[5, 0, 4, 2]])  # x1 < x0 on a non-padding row
