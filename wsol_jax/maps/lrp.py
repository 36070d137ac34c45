"""Transformer-Explainability LRP ("transformer_attribution", Chefer et al. CVPR'21), batched.

The official ``LRP.generate_LRP(x, index, method='transformer_attribution')``
(hila-chefer/Transformer-Explainability, used as is by ViTOL and AG-CAM) with the
rules of :mod:`wsol_jax.maps.lrp_rules` (spec methods.md §4):

1. one forward of the model itself (its own ``apply``), recording the inputs and
   outputs of every layer with a Flax method interceptor — no weight copy, no
   second model;
2. ``∂y_target/∂A_l`` for every block from the same forward, by ``jax.vjp`` with
   respect to the model's ``attn_delta`` and a one-hot cotangent (one backward for
   the whole batch; ``recorded_pass``, which ``maps.compute`` also uses for GAR);
3. relevance propagation from the one-hot of the target (α = 1): head Linear →
   cls select → final LayerNorm (identity) → blocks L..1, each
   add₂ → fc2 → GELU → fc1 → norm2 → clone₂ → add₁ → proj → A·V (/2) → softmax →
   Q·Kᵀ (/2) → qkv → norm1 → clone₁. ``R^A_l`` is the halved relevance of the
   attention probabilities;
4. rollout ``∏_l (mean_h relu(∂y/∂A_l ⊙ R^A_l) + I)`` WITHOUT row normalisation,
   map = row 0 (class token), patch columns.

Unlike the official code (batch size 1, issue #22) every image of a batch is
independent: the residual-add rescaling sums per image.

The model must be a :class:`~wsol_jax.models.vit.VisionTransformer` with the
linear head. The official LRP model has a final LayerNorm eps of 1e-5
(``model_from_meta(meta, final_norm_eps=1e-5)``); with the timm eps the maps
differ at rounding level only. A ``post_block`` (ViTOL's p-ADL) is the identity in
eval mode and is treated as such.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsol_jax.maps import lrp_rules as rules
from wsol_jax.maps.attention import AttentionPass
from wsol_jax.maps.targets import resolve_targets
from wsol_jax.models.vit import VisionTransformer


class LRPRelevance(NamedTuple):
  """Outputs of :func:`attention_relevance`.

  Attributes:
    logits: (B, C) model logits.
    targets: (B,) int32 explained classes.
    attn_relevance: (L, B, H, N, N) ``R^A_l`` (already halved); layers below
      ``start_layer`` are zeros.
    attn_grads: (L, B, H, N, N) ``∂y_target/∂A_l`` (plain autograd).
  """
  logits: jax.Array
  targets: jax.Array
  attn_relevance: jax.Array
  attn_grads: jax.Array


# Modules whose call (input, output) the LRP needs, by path relative to a block.
_BLOCK_PARTS = {(): "block", ("attn",): "attn", ("attn", "qkv"): "qkv", ("attn", "proj"): "proj",
                ("norm2",): "norm2", ("mlp", "fc1"): "fc1", ("mlp", "fc2"): "fc2", ("mlp",): "mlp"}


def _check_model(model: nn.Module) -> None:
  if not isinstance(model, VisionTransformer):
    raise TypeError(f"LRP needs a wsol_jax VisionTransformer, got {type(model).__name__}")
  if model.head != "linear":
    raise ValueError(f"LRP needs the linear class-token head, the model has head={model.head!r}")


def _recorded_forward(model: nn.Module, variables: Any, images: jax.Array,
                      attn_delta: jax.Array | None, capture: Sequence[str] = ()
                      ) -> tuple[jax.Array, tuple[dict[str, Any], dict[str, jax.Array]]]:
  """Eval-mode ``model.apply`` that also returns every layer input/output the LRP needs.

  Returns:
    logits (B, C) and (record, the model's captures ``aux``); the record is
    ``{'blocks': [dict per block], 'norm': (x, y), 'head': (x, y)}`` with each block dict
    mapping part name -> (first positional input, output).
  """
  blocks: list[dict[str, Any]] = [{} for _ in range(model.depth)]
  record: dict[str, Any] = {"blocks": blocks}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or not args:
      return out
    path = tuple(context.module.path)
    if path in (("norm",), ("head",)):
      record[path[0]] = (args[0], out)
    elif path and path[0].startswith("blocks_"):
      part = _BLOCK_PARTS.get(path[1:])
      if part is not None:
        blocks[int(path[0].removeprefix("blocks_"))][part] = (args[0], out)
    return out

  with nn.intercept_methods(interceptor):
    # 'attn' makes the blocks keep their probabilities (the rules read them); it leaves aux
    # unless the caller asked for it.
    logits, aux = model.apply(variables, images, train=False, attn_delta=attn_delta,
                              capture=tuple(dict.fromkeys(("attn", *capture))))
    aux = {k: v for k, v in aux.items() if k in capture}
  missing = [f"blocks_{i}/{part}" for i, blk in enumerate(blocks) for part in _BLOCK_PARTS.values()
             if part not in blk] + [k for k in ("norm", "head") if k not in record]
  if missing:
    raise ValueError(f"the model's forward did not call these layers LRP needs: {missing}")
  # Relevance is propagated in float32 at least (the 1e-9 stabiliser is meaningless in bf16).
  record = jax.tree.map(lambda a: a.astype(jnp.promote_types(a.dtype, jnp.float32)), record)
  return logits, (record, aux)


def recorded_pass(model: nn.Module, variables: Any, images: jax.Array,
                  targets: jax.Array | None = None, capture: Sequence[str] = ()
                  ) -> tuple[AttentionPass, dict[str, Any]]:
  """The plain attention pass (all gradient rows) of ``attention.attention_pass`` whose
  forward also records what the relevance propagation reads: one forward and one backward
  serve both the gradient maps and LRP.

  Returns:
    (AttentionPass(logits, targets, aux, grads (L, B, H, N, N)), record).
  """
  _check_model(model)
  gh, gw = model.grid_shape(images.shape[1], images.shape[2])
  n = gh * gw + 1
  delta = jnp.zeros((model.depth, images.shape[0], model.num_heads, n, n), jnp.float32)
  logits, vjp, (record, aux) = jax.vjp(
      lambda dl: _recorded_forward(model, variables, images, dl, capture), delta, has_aux=True)
  targets = resolve_targets(logits, targets)
  (grads,) = vjp(jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype))
  return AttentionPass(logits, targets, aux, grads), record


def _block_relprop(params: dict[str, Any], rec: dict[str, Any], r: jax.Array,
                   num_heads: int) -> tuple[jax.Array, jax.Array]:
  """Relevance through one block (official ``Block.relprop``).

  Args:
    params: the block's params (``params['blocks_i']``).
    rec: the block's recorded (input, output) pairs.
    r: (B, N, D) relevance at the block output.

  Returns:
    relevance at the block input (B, N, D) and ``R^A`` (B, H, N, N).
  """
  x, _ = rec["block"]                       # block input
  n1, (attn_out, internals) = rec["attn"]   # norm1(x), attention branch output
  x1, n2 = rec["norm2"]                     # x + attn branch, norm2(x1)
  _, m = rec["mlp"]                         # MLP branch output
  h, _ = rec["fc2"]                         # GELU(fc1(n2))
  ctx, _ = rec["proj"]                      # A·V, heads merged (B, N, D)
  _, qkv = rec["qkv"]
  attn = internals["attn"]                  # (B, H, N, N) post-softmax
  b, n, dim = x.shape
  d = dim // num_heads

  # add₂ -> MLP (fc2, GELU = identity, fc1) -> norm2 (identity) -> clone₂.
  r_res, r_mlp = rules.add_rule(x1, m, r)
  r_mlp = rules.linear_rule(h, params["mlp"]["fc2"]["kernel"], r_mlp)
  r_mlp = rules.linear_rule(n2, params["mlp"]["fc1"]["kernel"], r_mlp)
  r = rules.clone_rule(x1, (r_res, r_mlp))

  # add₁ -> attention -> norm1 (identity) -> clone₁.
  r_res, r_att = rules.add_rule(x, attn_out, r)
  r_ctx = rules.linear_rule(ctx, params["attn"]["proj"]["kernel"], r_att)
  qkv = qkv.reshape(b, n, 3, num_heads, d)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, H, d)
  r_attn, r_v = rules.bilinear_rule("bhqk,bkhd->bqhd", attn, v,
                                    r_ctx.reshape(b, n, num_heads, d))
  r_attn, r_v = r_attn / 2, r_v / 2
  # softmax / attn-dropout: identity; Q·Kᵀ before the scale (the scale is not a relprop module).
  r_q, r_k = rules.bilinear_rule("bqhd,bkhd->bhqk", q, k, r_attn)
  r_q, r_k = r_q / 2, r_k / 2
  r_qkv = jnp.stack([r_q, r_k, r_v], axis=2).reshape(b, n, 3 * dim)
  r_att = rules.linear_rule(n1, params["attn"]["qkv"]["kernel"], r_qkv)
  return rules.clone_rule(x, (r_res, r_att)), r_attn


def _one_hot(targets: jax.Array, num_classes: int, dtype: Any) -> jax.Array:
  return jax.nn.one_hot(targets, num_classes, dtype=dtype)


def attention_relevance(model: nn.Module, variables: Any, images: jax.Array,
                        targets: jax.Array | None = None, attn_grads: jax.Array | None = None,
                        start_layer: int = 0) -> LRPRelevance:
  """Per-layer attention relevance ``R^A_l`` and attention gradients, batched.

  Args:
    model: wsol_jax ``VisionTransformer`` (linear head).
    variables: its variables (``{'params': ...}``).
    images: (B, H, W, 3) NHWC, normalised as the model expects.
    targets: (B,) classes to explain; None = the argmax of the logits.
    attn_grads: (L, B, H, N, N) precomputed ``∂y_target/∂A_l``; None = computed
      here (one backward through ``attn_delta``).
    start_layer: blocks below it are not propagated (their ``R^A`` stays 0).

  Returns:
    :class:`LRPRelevance`.
  """
  _check_model(model)
  _check_start_layer(model, start_layer)
  if attn_grads is None:
    p, record = recorded_pass(model, variables, images, targets)
    logits, targets, attn_grads = p.logits, p.targets, p.grads
  else:
    logits, (record, _) = _recorded_forward(model, variables, images, None)
    targets = resolve_targets(logits, targets)
  relevance = relevance_from_record(model, variables, record, targets, logits.shape[-1], start_layer)
  return LRPRelevance(logits, targets, relevance, attn_grads)


def _check_start_layer(model: nn.Module, start_layer: int) -> None:
  if not 0 <= start_layer < model.depth:
    raise ValueError(f"start_layer must be in [0, {model.depth}), got {start_layer}")


def relevance_from_record(model: nn.Module, variables: Any, record: dict[str, Any],
                          targets: jax.Array, num_classes: int, start_layer: int = 0) -> jax.Array:
  """``R^A_l`` (L, B, H, N, N) from a recorded forward (``recorded_pass``); zeros below
  ``start_layer``."""
  _check_start_layer(model, start_layer)
  pooled, _ = record["head"]
  one_hot = _one_hot(targets, num_classes, pooled.dtype)
  params = variables["params"]
  xn, _ = record["norm"]
  r = rules.linear_rule(pooled, params["head"]["kernel"], one_hot)
  r = rules.select_rule(xn, r)          # final LayerNorm: identity
  relevances = []
  for i in reversed(range(start_layer, model.depth)):
    r, r_attn = _block_relprop(params[f"blocks_{i}"], record["blocks"][i], r, model.num_heads)
    relevances.append(r_attn)
  relevances = relevances[::-1]
  if start_layer:
    relevances = [jnp.zeros_like(relevances[0])] * start_layer + relevances
  return jnp.stack(relevances)


def rollout_without_normalization(cams: jax.Array, start_layer: int = 0) -> jax.Array:
  """Row 0 of ``(cams_{L−1} + I) ⋯ (cams_start + I)`` (official ``compute_rollout_attention``).

  Only row 0 is needed, so it is computed as a vector–matrix chain (mathematically
  the same product).

  Args:
    cams: (L, B, N, N) per-layer matrices.
    start_layer: first layer of the product.

  Returns:
    (B, N) row 0 of the product.
  """
  _, b, n, _ = cams.shape
  row = jnp.zeros((b, n), cams.dtype).at[:, 0].set(1)
  for i in reversed(range(start_layer, cams.shape[0])):
    row = row + jnp.einsum("bi,bij->bj", row, cams[i])
  return row


def attribution_from_relevance(attn_grads: jax.Array, attn_relevance: jax.Array,
                               grid_shape: tuple[int, int], start_layer: int = 0) -> jax.Array:
  """Rollout of ``mean_h relu(∂y/∂A_l ⊙ R^A_l) + I`` (no row normalisation) -> maps.

  Args:
    attn_grads: (L, B, H, N, N) ``∂y_target/∂A_l``.
    attn_relevance: (L, B, H, N, N) ``R^A_l``.
    grid_shape: patch grid (h, w) with h·w = N − 1.
    start_layer: first layer of the product.

  Returns:
    (B, h, w) raw maps ``R[0, 1:]``.
  """
  cams = jnp.mean(jax.nn.relu(attn_grads * attn_relevance), axis=2)  # (L, B, N, N)
  row = rollout_without_normalization(cams, start_layer)
  return row[:, 1:].reshape(row.shape[0], *grid_shape)


def transformer_attribution(model: nn.Module, variables: Any, images: jax.Array,
                            targets: jax.Array | None = None, attn_grads: jax.Array | None = None,
                            start_layer: int = 0) -> jax.Array:
  """hila-chefer "transformer_attribution" maps, raw (not normalised), batched.

  ``R = ∏_{l ≥ start_layer} (mean_h relu(∂y/∂A_l ⊙ R^A_l) + I)``, map = ``R[0, 1:]``.

  Args:
    model: wsol_jax ``VisionTransformer`` (linear head; the official model has
      ``final_norm_eps=1e-5``).
    variables: its variables.
    images: (B, H, W, 3) NHWC normalised images.
    targets: (B,) classes; None = argmax.
    attn_grads: optional (L, B, H, N, N) ``∂y_target/∂A_l`` (computed if None).
    start_layer: first block of the rollout (0 in the notebook/ViTOL/AG-CAM,
      1 in hila's perturbation and segmentation scripts).

  Returns:
    (B, h, w) raw maps on the patch grid (row-major patches).
  """
  out = attention_relevance(model, variables, images, targets, attn_grads, start_layer)
  grid = model.grid_shape(images.shape[1], images.shape[2])
  return attribution_from_relevance(out.attn_grads, out.attn_relevance, grid, start_layer)
