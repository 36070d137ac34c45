"""MoRF / LeRF / ABPC (spec §5.1) on a tiny linear "model", against a numpy port of ABPC.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsol_jax.eval import perturbation

B, H, W, C = 3, 6, 5, 4


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(H * W * 3, C)).astype(np.float32)
  images = rng.normal(size=(B, H, W, 3)).astype(np.float32)
  heat = rng.permutation(B * H * W).reshape(B, H, W).astype(np.float32) / (B * H * W)  # no ties
  labels = np.array([0, 2, 3])
  predict = jax.jit(lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(weights))
  return weights, images, heat, labels, predict


def _abpc_reference(weights, images, heat, labels, fractions=perturbation.AGCAM_FRACTIONS):
  """ABPC.py with torch.topk replaced by a (tie-free) descending argsort."""
  morf, lerf = np.zeros((len(fractions), B)), np.zeros((len(fractions), B))
  for b in range(B):
    v = heat[b].reshape(-1)
    for i, f in enumerate(fractions):
      k = int(H * W * f)
      for out, order in ((morf, np.argsort(-v)), (lerf, np.argsort(v))):
        mask = np.ones(H * W)
        mask[order[:k]] = 0
        x = images[b] * mask.reshape(H, W, 1)
        logits = x.reshape(-1).astype(np.float64) @ weights
        p = np.exp(logits - logits.max())
        out[i, b] = (p / p.sum())[labels[b]]
  return morf, lerf


def test_matches_numpy_port_of_agcam(setup):
  weights, images, heat, labels, predict = setup
  test = perturbation.PerturbationTest(predict)
  morf, lerf = test.update(images, heat, labels)
  ref_morf, ref_lerf = _abpc_reference(weights, images, heat, labels)
  np.testing.assert_allclose(morf, ref_morf.T, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(lerf, ref_lerf.T, rtol=2e-5, atol=1e-6)
  r = test.compute()
  auc_lerf = np.sum(ref_lerf.mean(1)) / 11
  auc_morf = np.sum(ref_morf.mean(1)) / 11
  assert r.auc_lerf == pytest.approx(auc_lerf, rel=1e-5)
  assert r.auc_morf == pytest.approx(auc_morf, rel=1e-5)
  assert r.abpc == pytest.approx(np.sum(np.mean(ref_lerf - ref_morf, axis=1)) / 11, abs=1e-6)
  # f = 0: unperturbed for both orders; f = 1: the all-fill image for both orders.
  np.testing.assert_allclose(morf[:, 0], lerf[:, 0], rtol=1e-6)
  np.testing.assert_allclose(morf[:, -1], lerf[:, -1], rtol=1e-6)
  np.testing.assert_allclose(morf[:, -1], 1 / C, rtol=1e-6)  # zero input -> uniform softmax


def test_counts_and_ranks():
  counts = perturbation.removal_counts(224 * 224, perturbation.AGCAM_FRACTIONS)
  np.testing.assert_array_equal(counts, [0, 5017, 10035, 15052, 20070, 25088, 30105, 35123,
                                         40140, 45158, 50176])
  ranks = perturbation.pixel_ranks(jnp.array([[[0.3, 0.1], [0.2, 0.9]]]))
  np.testing.assert_array_equal(ranks, [[2, 0, 1, 3]])


def test_batches_accumulate_and_options(setup):
  weights, images, heat, labels, predict = setup
  whole = perturbation.PerturbationTest(predict)
  whole.update(images, heat, labels)
  parts = perturbation.PerturbationTest(predict)
  parts.update(images[:2], heat[:2], labels[:2])
  parts.update(np.concatenate([images[2:], images[:1]]), np.concatenate([heat[2:], heat[:1]]),
               np.concatenate([labels[2:], labels[:1]]), valid=np.array([True, False]))
  a, b = whole.compute(), parts.compute()
  assert a.count == b.count == 3
  np.testing.assert_allclose(a.morf, b.morf, rtol=1e-6)
  logit = perturbation.PerturbationTest(predict, fractions=(0.0, 0.5), fill_value=1.0,
                                        score="logit")
  morf, _ = logit.update(images, heat, labels)
  expected = np.einsum("bp,pc->bc", images.reshape(B, -1), weights)[np.arange(B), labels]
  np.testing.assert_allclose(morf[:, 0], expected, rtol=1e-5)
  with pytest.raises(ValueError, match="score"):
    perturbation.make_curve_fn(predict, np.array([0]), score="softmax")
