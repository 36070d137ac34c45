"""SAT's network (Wu et al., ICCV'23; wpy1999/SAT ``Model/SAT.py``): a DeiT with a spatial token.

Tokens are ``[cls, patches (row-major), loc]``; the spatial (``loc``) token has its own
learned embedding ``loc_embed`` added like the position embedding. Every block is the
timm block on N + 2 tokens, except the last ``sat_layers`` (official: blocks 9–11 of 12),
whose attention is *spatial-aware*::

    S = q·kᵀ·d^-½                          (B, H, N+2, N+2) scaled scores
    m = sigmoid(mean_h S[:, :, loc, :])     (B, N+2)  the loc token's query row, per key
    A = softmax(S) ⊙ m                      every query's weight on key j scaled by m_j
                                            (not renormalised)

The localization map is the mean of those blocks' m over the patch keys, (B, h, w) in
(0, 1); the logits are the spatial mean of a 3×3 conv semantic head on the patch tokens
(TS-CAM's head). The map is class-agnostic.

``model.apply(variables, images, train=..., capture=(...))`` returns ``(logits, aux)`` with
``aux['sat_map']`` (B, h, w) always and, on request, ``'sat_masks'`` (sat_layers, B, h·w),
``'semantic'`` (B, h, w, C) and ``'tokens'`` (B, N+2, D). The blocks without the mask run
through ``vit.Block`` (so an injected ``attention_fn`` or ``fused_attn`` serves them); the
spatial-aware blocks need the scores and run with XLA ops (plus the injected ``dot_general``).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsol_jax.models import heads, layers, vit

SAT_CAPTURES = ("sat_masks", "semantic", "tokens")


class SpatialAwareAttention(nn.Module):
  """timm attention whose probabilities are scaled per key by the loc token's sigmoid
  query row (``masked``); returns ``(output, m (B, N))``."""
  num_heads: int
  qkv_bias: bool = True
  attn_drop: float = 0.0
  proj_drop: float = 0.0
  dtype: Any = jnp.float32
  dot_general: vit.DotGeneral | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    b, n, dim = x.shape
    h = self.num_heads
    d = dim // h
    qkv = vit._dense(3 * dim, "qkv", self.dtype, self.dot_general, use_bias=self.qkv_bias)(x)
    qkv = qkv.reshape(b, n, 3, h, d).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, d)
    # (q·kᵀ)·scale in the official order: the mask reads these scores directly.
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) * np.float32(d ** -0.5).astype(q.dtype)
    scores = scores.astype(jnp.float32)
    mask = jax.nn.sigmoid(jnp.mean(scores[:, :, -1, :], axis=1))  # (B, N)
    attn = jax.nn.softmax(scores, axis=-1) * mask[:, None, None, :]
    attn = nn.Dropout(self.attn_drop, deterministic=not train)(attn.astype(q.dtype))
    out = jnp.einsum("bhqk,bhkd->bhqd", attn, v).transpose(0, 2, 1, 3).reshape(b, n, dim)
    out = vit._dense(dim, "proj", self.dtype, self.dot_general)(out)
    return nn.Dropout(self.proj_drop, deterministic=not train)(out), mask


class SpatialAwareBlock(nn.Module):
  """Pre-norm block with ``SpatialAwareAttention`` (parameter names of ``vit.Block``)."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop: float = 0.0
  attn_drop: float = 0.0
  drop_path: float = 0.0
  norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  dot_general: vit.DotGeneral | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    dim = x.shape[-1]
    y, mask = SpatialAwareAttention(self.num_heads, self.qkv_bias, self.attn_drop, self.drop,
                                    self.dtype, self.dot_general, name="attn")(
                                        vit._layer_norm(self.norm_eps, "norm1", self.dtype)(x),
                                        train=train)
    x = x + vit.DropPath(self.drop_path)(y, train)
    y = vit.Mlp(int(dim * self.mlp_ratio), self.drop, self.dtype, self.dot_general, name="mlp")(
        vit._layer_norm(self.norm_eps, "norm2", self.dtype)(x), train)
    return x + vit.DropPath(self.drop_path)(y, train), mask


def gaussian_kernel(size: int = 3, nsig: float = 6.0) -> np.ndarray:
  """Official ``get_kernel``: √(outer(k, k)) normalised to sum 1, k = the N(0,1) mass of
  ``size`` equal intervals over [−nsig − δ/2, nsig + δ/2], δ = (2·nsig + 1)/size (float32)."""
  from math import erf, sqrt
  interval = (2 * nsig + 1.0) / size
  edges = np.linspace(-nsig - interval / 2.0, nsig + interval / 2.0, size + 1)
  cdf = np.array([0.5 * (1.0 + erf(e / sqrt(2.0))) for e in edges])
  k1 = np.diff(cdf)
  kernel = np.sqrt(np.outer(k1, k1))
  return (kernel / kernel.sum()).astype(np.float32)


def smooth(maps: jax.Array, kernel: np.ndarray) -> jax.Array:
  """(B, h, w) maps convolved with a (k, k) kernel, zero padding k // 2 (``F.conv2d``)."""
  size = kernel.shape[0]
  pad = size // 2
  h, w = maps.shape[-2:]
  padded = jnp.pad(maps, ((0, 0), (pad, pad), (pad, pad)))
  out = jnp.zeros_like(maps)
  for i in range(size):
    for j in range(size):
      out = out + np.float32(kernel[i, j]) * padded[:, i:i + h, j:j + w]
  return out


class SatVisionTransformer(vit.VisionTransformer):
  """SAT's DeiT: ``VisionTransformer`` fields plus ``sat_layers`` (the number of final
  spatial-aware blocks; official 3). New parameters: ``loc_token``, ``loc_embed``
  (1, 1, D), trunc-normal(0.02) like ``cls_token`` in the official model."""
  head: str = "conv3x3"
  sat_layers: int = 3

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False, capture: Sequence[str] = ()
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    capture = tuple(capture)
    unknown = sorted(set(capture) - set(SAT_CAPTURES))
    if unknown:
      raise ValueError(f"SAT model: unknown capture names {unknown}; valid: {list(SAT_CAPTURES)}")
    if self.head != "conv3x3":
      raise ValueError(f"SAT model needs head='conv3x3' (official), got {self.head!r}")
    if not 1 <= self.sat_layers <= self.depth:
      raise ValueError(f"sat_layers must be in [1, depth={self.depth}], got {self.sat_layers}")
    gh, gw = self._check_inputs(images, (), None)
    b, dim = images.shape[0], self.embed_dim
    x = vit.PatchEmbed(dim, self.patch_size, self.dtype, self.dot_general,
                       name="patch_embed")(images)
    init = layers.trunc_normal_init(0.02)
    cls = self.param("cls_token", init, (1, 1, dim), jnp.float32)
    loc = self.param("loc_token", init, (1, 1, dim), jnp.float32)
    loc_embed = self.param("loc_embed", init, (1, 1, dim), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, dim)).astype(x.dtype), x,
                         jnp.broadcast_to(loc, (b, 1, dim)).astype(x.dtype)], axis=1)
    x = x + jnp.concatenate([self._pos_embed(gh, gw), loc_embed], axis=1).astype(x.dtype)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)

    boundary = self.block_boundary or (lambda t: t)
    rates = np.linspace(0.0, self.drop_path_rate, self.depth) if self.depth > 1 else [0.0]
    first_sat = self.depth - self.sat_layers
    common = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                  drop=self.drop_rate, attn_drop=self.attn_drop_rate, norm_eps=self.norm_eps,
                  dtype=self.dtype, dot_general=self.dot_general)
    masks = []
    for i in range(self.depth):
      x = boundary(x)
      if i < first_sat:
        x, _ = vit.Block(**common, drop_path=float(rates[i]), attention_fn=self.attention_fn,
                         fused_attn=self.fused_attn, name=f"blocks_{i}")(
                             x, train=train, delta=None, stop_grad_input=False, need_probs=False)
      else:
        x, mask = SpatialAwareBlock(**common, drop_path=float(rates[i]), name=f"blocks_{i}")(
            x, train=train)
        masks.append(mask[:, 1:-1])
    x = boundary(x)
    final_eps = self.norm_eps if self.final_norm_eps is None else self.final_norm_eps
    x = vit._layer_norm(final_eps, "norm", self.dtype)(x)

    grid = x[:, 1:-1].reshape(b, gh, gw, dim)
    semantic = heads.conv3x3_semantic_head(grid, self.num_classes, self.dtype,
                                           dot_general=self.dot_general)
    masks = jnp.stack(masks)  # (sat_layers, B, h·w), float32
    aux = {"sat_map": jnp.mean(masks, axis=0).reshape(b, gh, gw)}
    if "sat_masks" in capture:
      aux["sat_masks"] = masks
    if "semantic" in capture:
      aux["semantic"] = semantic
    if "tokens" in capture:
      aux["tokens"] = x
    return heads.spatial_mean(semantic), aux
