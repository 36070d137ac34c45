"""Center-Gaussian baseline map."""
import numpy as np
import pytest

from wsol_jax.eval import baselines, box_accuracy


def test_center_gaussian_shape_range_symmetry():
  g = baselines.center_gaussian(224, 224)
  assert g.shape == (224, 224) and g.min() == 0 and g.max() == pytest.approx(1)
  np.testing.assert_allclose(g, g[::-1], atol=1e-15)
  np.testing.assert_allclose(g, g.T, atol=1e-15)
  r = baselines.center_gaussian(30, 50, sigma_fraction=0.1)
  assert r.shape == (30, 50) and np.unravel_index(r.argmax(), r.shape) in [(14, 24), (15, 25),
                                                                          (14, 25), (15, 24)]
  assert baselines.center_gaussian_batch(3, 8, 8).shape == (3, 8, 8)
  assert not baselines.center_gaussian(1, 1).any()
  with pytest.raises(ValueError):
    baselines.center_gaussian(8, 8, sigma_fraction=0)


def test_center_gaussian_through_the_box_metrics():
  maps = baselines.center_gaussian_batch(2, 32, 32)
  gt = np.array([[[8, 8, 23, 23]], [[0, 0, 5, 5]]])  # a centred and a corner object
  acc = box_accuracy.BoxAccuracy(delta=0.01)
  best = acc.update(maps, gt)
  assert best[0].max() > 0.85 and best[1].max() < 0.1
  np.testing.assert_array_equal(acc.compute().max_box_acc, [50, 50, 50])
