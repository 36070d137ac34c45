"""MoRF / LeRF pixel-perturbation curves and ABPC (AG-CAM ``ABPC.py``), batched on device.

For every fraction f (AG-CAM: 0.0, 0.1, …, 1.0) the ``k = int(H·W·f)`` pixels with the
highest (MoRF) or lowest (LeRF) heat are removed: the NORMALISED input is set to ``fill_value``
(0 = mid-grey for mean = std = 0.5) in all channels, and the score is the softmax probability
of the GT class. ``AUC = mean over steps of the image-mean score`` (plain mean, f = 0 and f = 1
included) and ``ABPC = AUC_LeRF − AUC_MoRF``. Pixels are ranked with a stable argsort per
image; the reference uses ``torch.topk``, whose order on ties is unspecified, so compare on
tie-free heatmaps.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wsol_jax import sharding

AGCAM_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SCORES = ("prob", "logit")


def removal_counts(num_pixels: int, fractions: Sequence[float]) -> np.ndarray:
  """``int(num_pixels·f)`` for every fraction (Python float arithmetic, as AG-CAM) -> (F,)."""
  return np.array([int(num_pixels * f) for f in fractions], dtype=np.int32)


def pixel_ranks(heatmaps: jax.Array) -> jax.Array:
  """(B, H, W) heat -> (B, H·W) int32 rank of every pixel in ascending heat order."""
  flat = heatmaps.reshape(heatmaps.shape[0], -1)
  order = jnp.argsort(flat, axis=1, stable=True)
  rows = jnp.arange(flat.shape[0])[:, None]
  return jnp.zeros(flat.shape, jnp.int32).at[rows, order].set(
      jnp.arange(flat.shape[1], dtype=jnp.int32)[None])


def make_curve_fn(predict_fn: Callable[[jax.Array], jax.Array], counts: np.ndarray,
                  fill_value: float = 0.0, score: str = "prob"
                  ) -> Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """Builds the jitted ``(images, heatmaps, labels) -> (morf (B, F), lerf (B, F))`` function.

  Args:
    predict_fn: ``images_normalised (B, H, W, 3) float32 -> logits (B, C)``.
    counts: (F,) number of removed pixels per step.
    fill_value: value written into removed pixels, in normalised input space.
    score: "prob" (softmax probability of the label, AG-CAM) or "logit".
  """
  if score not in SCORES:
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")
  counts = jnp.asarray(counts, jnp.int32)

  def curves(images, heatmaps, labels):
    b, h, w = heatmaps.shape
    ranks = pixel_ranks(heatmaps).reshape(b, h, w)

    def scores(removed):
      x = jnp.where(removed[..., None], jnp.asarray(fill_value, images.dtype), images)
      logits = predict_fn(x).astype(jnp.float32)
      if score == "prob":
        logits = jax.nn.softmax(logits, axis=-1)
      return jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]

    def step(k):
      return scores(ranks >= h * w - k), scores(ranks < k)

    morf, lerf = jax.lax.map(step, counts)  # (F, B) each
    return morf.T, lerf.T

  return jax.jit(curves)


def _placed_like(images: jax.Array, rows: Any, dtype: Any = None) -> jax.Array:
  """Host rows (every row of the batch) placed on the devices like ``images``: split over
  the batch axis of the images' mesh when they span several processes, else a local array."""
  if images.is_fully_addressable:
    return jnp.asarray(rows, dtype)
  if not isinstance(images.sharding, jax.sharding.NamedSharding):
    raise ValueError("multi-process perturbation test: the images need a NamedSharding, "
                     f"got {images.sharding}")
  rows = np.asarray(rows, dtype)
  placed = sharding.batch_sharding(images.sharding.mesh)
  return jax.make_array_from_callback(rows.shape, placed, lambda index: rows[index])


@dataclasses.dataclass(frozen=True)
class PerturbationResult:
  """Mean perturbation curves over ``count`` images.

  Attributes:
    fractions: (F,) removed fractions.
    morf: (F,) mean score after removing the most relevant pixels.
    lerf: (F,) mean score after removing the least relevant pixels.
    abpc_curve: (F,) mean of ``lerf − morf`` per step.
    count: number of images.
  """

  fractions: tuple[float, ...]
  morf: np.ndarray
  lerf: np.ndarray
  abpc_curve: np.ndarray
  count: int

  @property
  def auc_morf(self) -> float:
    """Mean over steps of the MoRF curve (lower is better)."""
    return float(np.sum(self.morf) / len(self.fractions))

  @property
  def auc_lerf(self) -> float:
    """Mean over steps of the LeRF curve (higher is better)."""
    return float(np.sum(self.lerf) / len(self.fractions))

  @property
  def abpc(self) -> float:
    """Area between the LeRF and MoRF curves (higher is better)."""
    return float(np.sum(self.abpc_curve) / len(self.fractions))


class PerturbationTest:
  """Accumulates MoRF/LeRF curves over batches; defaults reproduce AG-CAM's ABPC test."""

  def __init__(self, predict_fn: Callable[[jax.Array], jax.Array], *,
               fractions: Sequence[float] = AGCAM_FRACTIONS, fill_value: float = 0.0,
               score: str = "prob"):
    """Creates the test.

    Args:
      predict_fn: jittable ``images_normalised (B, H, W, 3) float32 -> logits (B, C)``.
      fractions: removed fractions per step (AG-CAM: 11 steps 0.0 … 1.0).
      fill_value: replacement value in normalised input space (AG-CAM: 0).
      score: "prob" (AG-CAM) or "logit".
    """
    self.predict_fn = predict_fn
    self.fractions = tuple(float(f) for f in fractions)
    self.fill_value = float(fill_value)
    self.score = score
    self._fns: dict[int, Callable] = {}
    self.reset()

  def reset(self) -> None:
    """Clears the sums."""
    n = len(self.fractions)
    self._morf, self._lerf, self._diff = np.zeros(n), np.zeros(n), np.zeros(n)
    self._count = 0

  def _fn(self, num_pixels: int) -> Callable:
    if num_pixels not in self._fns:
      self._fns[num_pixels] = make_curve_fn(
          self.predict_fn, removal_counts(num_pixels, self.fractions), self.fill_value,
          self.score)
    return self._fns[num_pixels]

  def update(self, images: np.ndarray | jax.Array, heatmaps: np.ndarray | jax.Array,
             labels: np.ndarray | jax.Array, valid: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Adds a batch.

    Args:
      images: (B, H, W, 3) float32 NORMALISED model inputs; in a multi-process run a global
        array sharded on the batch axis (the evaluator's device batch).
      heatmaps: (B, H, W) heatmaps of the GT class (every image counts, no filtering); all
        B rows on every process.
      labels: (B,) int GT labels, all B rows on every process.
      valid: optional (B,) bool mask of real rows.

    Returns:
      Per-image curves ``(morf, lerf)``, each (B, F) float32.
    """
    images = jnp.asarray(images)
    b, h, w = np.shape(heatmaps)
    heatmaps = _placed_like(images, heatmaps)
    labels = _placed_like(images, labels, jnp.int32)
    morf, lerf = (sharding.to_host(c) for c in self._fn(h * w)(images, heatmaps, labels))
    keep = np.ones(b, bool) if valid is None else np.asarray(valid, dtype=bool)
    self._morf += morf[keep].astype(np.float64).sum(axis=0)
    self._lerf += lerf[keep].astype(np.float64).sum(axis=0)
    self._diff += (lerf[keep].astype(np.float64) - morf[keep]).sum(axis=0)
    self._count += int(keep.sum())
    return morf, lerf

  def compute(self) -> PerturbationResult:
    """Mean curves and the AUC / ABPC summaries."""
    if self._count == 0:
      raise ValueError("PerturbationTest.compute() called before any update()")
    return PerturbationResult(self.fractions, self._morf / self._count,
                              self._lerf / self._count, self._diff / self._count, self._count)
