"""ViTOL's patch-based Attention Dropout Layer (p-ADL; Saurav-31/ViTOL ``wsol_model/pADL.py``).

Applied to the output X (B, N, D) of every transformer block (after the MLP
residual), on all N tokens including the class token; the identity in eval mode::

    a    = mean_d X                                   (B, N, 1)
    I    = sigmoid(a)                                 importance map
    M    = 1[a < γ · max_n a]                         drop mask (strict <, max over all tokens)
    z    = floor(u + drop_rate),  u ~ U[0, 1)         z = 1 with probability drop_rate
    out  = X ⊙ ((1 − z)·I + z·M)

The official layer draws ONE u per forward call of a layer, shared by the batch
(``torch.rand([])``); ``per_example=True`` draws one per image instead. The drop mask
has no gradient; the importance map does (through the sigmoid), as in the official code.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

BRANCHES = ("random", "importance", "drop")


def mean_embedding(x: jax.Array) -> jax.Array:
  """a = mean over the embedding dimension: (B, N, D) -> (B, N, 1)."""
  return jnp.mean(x, axis=-1, keepdims=True)


def importance_map(a: jax.Array) -> jax.Array:
  """I = sigmoid(a): (B, N, 1) -> (B, N, 1)."""
  return jax.nn.sigmoid(a)


def drop_mask(a: jax.Array, gamma: float) -> jax.Array:
  """M = 1[a < γ · max_n a] (max over all tokens of an image, strict <): (B, N, 1) -> (B, N, 1)."""
  threshold = jnp.max(a, axis=(1, 2), keepdims=True) * jnp.asarray(gamma, a.dtype)
  return (a < threshold).astype(a.dtype)


def branch_indicator(u: jax.Array, drop_rate: float) -> jax.Array:
  """z = floor(u + drop_rate) in float32, as ``_select_map`` (1 = drop mask, 0 = importance)."""
  return jnp.floor(u.astype(jnp.float32) + jnp.float32(drop_rate))


def padl(x: jax.Array, u: jax.Array, drop_rate: float = 0.75, gamma: float = 0.9) -> jax.Array:
  """Training-mode p-ADL for given uniform draws.

  Args:
    x: tokens (B, N, D) including the class token.
    u: U[0, 1) draw(s): a scalar (one per batch, official) or (B,) (one per image).
    drop_rate: probability of the drop-mask branch.
    gamma: drop threshold ratio.
  Returns:
    X ⊙ ((1 − z)·I + z·M), (B, N, D).
  """
  return apply_branch(x, branch_indicator(jnp.asarray(u), drop_rate), gamma)


def apply_branch(x: jax.Array, z: jax.Array, gamma: float = 0.9) -> jax.Array:
  """X ⊙ ((1 − z)·I + z·M) for branch indicator(s) z: () or (B,) in {0, 1}."""
  a = mean_embedding(x)
  z = jnp.asarray(z, a.dtype)
  if z.ndim == 1:
    z = z[:, None, None]
  selected = (1.0 - z) * importance_map(a) + z * drop_mask(a, gamma)
  return x * selected


class PAdl(nn.Module):
  """p-ADL as a ``VisionTransformer.post_block``: ``PAdl(...)(x, train=...)``.

  Attributes:
    drop_rate: probability of the drop-mask branch (``adl_drop_rate``).
    gamma: drop threshold ratio to the maximum (``adl_threshold``).
    per_example: one Bernoulli draw per image instead of one per batch (not official).
    branch: ``'random'`` (training behaviour), or force ``'importance'``/``'drop'``
      (tests and ablations; no random draw).
  """
  drop_rate: float = 0.75
  gamma: float = 0.9
  per_example: bool = False
  branch: str = "random"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if not train:
      return x
    if self.branch == "random":
      shape = (x.shape[0],) if self.per_example else ()
      u = jax.random.uniform(self.make_rng("dropout"), shape, jnp.float32)
      return padl(x, u, self.drop_rate, self.gamma)
    if self.branch not in BRANCHES:
      raise ValueError(f"PAdl.branch must be one of {BRANCHES}, got {self.branch!r}")
    return apply_branch(x, jnp.float32(self.branch == "drop"), self.gamma)


def post_block_factory(**kwargs: Any) -> Any:
  """A ``VisionTransformer.post_block`` factory: ``factory(name='post') -> PAdl(**kwargs)``."""
  return _Factory(kwargs)


@dataclasses.dataclass(frozen=True)
class _Factory:
  """``factory(name='post') -> PAdl(**kwargs, name='post')`` (hashable, comparable)."""
  kwargs_items: tuple[tuple[str, Any], ...]

  def __init__(self, kwargs: dict[str, Any]):
    object.__setattr__(self, "kwargs_items", tuple(sorted(kwargs.items())))

  def __call__(self, name: str | None = None) -> PAdl:
    return PAdl(**dict(self.kwargs_items), name=name)


__all__ = ["BRANCHES", "PAdl", "apply_branch", "branch_indicator", "drop_mask", "importance_map",
           "mean_embedding", "padl", "post_block_factory"]
