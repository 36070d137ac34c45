"""PxAP goldens (spec §2): perfect/constant maps, the 83.333 toy, ignore label, bin edges."""
import numpy as np
import pytest

from wsol_jax.eval import pxap


def _accumulate(maps, masks, **kw):
  metric = pxap.PxAP(**kw)
  metric.update(np.asarray(maps, np.float64), np.asarray(masks, np.uint8))
  return metric


def test_perfect_map_is_100_whatever_the_ignore_pixels_score():
  mask = np.zeros((1, 6, 6), np.uint8)
  mask[0, 1:4, 1:4] = 1
  mask[0, 5, :] = 255
  score = (mask == 1).astype(np.float64)
  score[0, 5, :] = np.linspace(0, 1, 6)
  assert _accumulate(score, mask).compute() == pytest.approx(100, abs=1e-12)


@pytest.mark.parametrize("c", [0.0, 0.3, 0.57, 1.0])
@pytest.mark.parametrize("pos,neg", [(43031, 7145), (833, 49342), (347, 13909)])
def test_constant_map_gives_the_positive_ratio(c, pos, neg):
  masks = np.zeros(pos + neg + 17, np.uint8)
  masks[:pos] = 1
  masks[pos + neg:] = 255
  masks = masks.reshape(1, 1, -1)
  got = _accumulate(np.full(masks.shape, c), masks).compute()
  assert got == pytest.approx(100 * pos / (pos + neg), rel=1e-12)
  if (pos, neg) == (43031, 7145):
    assert round(got, 2) == 85.76


@pytest.mark.parametrize("shift", [0.0, 0.005])
def test_toy_83_333(shift):
  maps = np.array([[[0.9, 0.4, 0.6, 0.1]]]) + shift
  masks = np.array([[[1, 1, 0, 0]]])
  assert _accumulate(maps, masks).compute() == pytest.approx(250 / 3, rel=1e-12)


def test_pooled_over_batches_not_a_mean_of_per_image_aps():
  m1, k1 = np.array([[[0.9, 0.1]]]), np.array([[[1, 0]]])
  m2, k2 = np.array([[[0.2, 0.8]]]), np.array([[[1, 0]]])
  metric = pxap.PxAP()
  metric.update(m1, k1)
  metric.update(m2, k2)
  pooled = _accumulate(np.concatenate([m1, m2]), np.concatenate([k1, k2])).compute()
  assert metric.compute() == pooled
  # scores 0.9+, 0.8-, 0.2+, 0.1-: AP = 1·0.5 + 2/3·0.5
  assert pooled == pytest.approx(250 / 3, rel=1e-12)


def test_bin_edges_float64_and_score_one():
  edges = pxap.pxap_bin_edges(np.arange(0, 1, 0.01))
  assert len(edges) == 103 and edges[57] == 0.5700000000000001 and edges[-3:].tolist() == [1, 2, 3]
  metric = _accumulate([[[0.57, 1.0]]], [[[1, 1]]])
  assert metric.pos_hist[56] == 1  # 0.57 falls below the ulp-high edge 0.5700000000000001
  assert metric.pos_hist[100] == 1  # 1.0 lands in [1, 2)


def test_valid_mask_and_errors():
  metric = pxap.PxAP(delta=0.1)
  metric.update(np.array([[[0.2, 0.9]], [[np.nan, np.nan]]]), np.array([[[0, 1]], [[1, 1]]]),
                valid=np.array([True, False]))
  assert metric.compute() == pytest.approx(100)
  with pytest.raises(RuntimeError, match="No positive ground truth"):
    _accumulate([[[0.5, 0.5]]], [[[0, 255]]]).compute()
  with pytest.raises(ValueError, match="range"):
    _accumulate([[[1.5]]], [[[1]]])
