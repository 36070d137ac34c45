"""Which class a class-specific map explains: given targets or the argmax prediction."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def resolve_targets(logits: jax.Array, targets: jax.Array | None) -> jax.Array:
  """``targets`` as int32 (B,), or the argmax class of ``logits`` (B, C) when None."""
  if targets is None:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  targets = jnp.asarray(targets)
  if targets.shape != logits.shape[:1]:
    raise ValueError(f"targets must have shape (B,) = ({logits.shape[0]},), got {targets.shape}")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
  return targets.astype(jnp.int32)
