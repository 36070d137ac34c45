"""Vision Transformer / DeiT with the math of timm's ``VisionTransformer``.

The forward is a pure function of (params, images, flags, rng)::

    logits, aux = model.apply({'params': params}, images, train=False,
                              capture=('attn', 'tokens'))

* ``images``: NHWC float32, already normalised with the model's mean/std.
* ``capture`` (static) chooses what ``aux`` holds:

  ============== ========================= ==========================================
  name           shape                     meaning
  ============== ========================= ==========================================
  ``attn``       (L, B, H, N, N)           post-softmax attention probabilities
  ``attn_cls``   (L, B, H, N)              their class-token query row ``attn[..., 0, :]``
                                           (evaluated on its own: equal up to rounding)
  ``scores``     (L, B, H, N, N)           scaled pre-softmax scores ``q·kᵀ/√d``
  ``scores_cls`` (L, B, H, N)              their class-token row
  ``tokens``     (B, N, D)                 final tokens after the last LayerNorm
  ``pre_logits`` (B, D)                    class token after the last LayerNorm
  ``semantic``   (B, h, w, C)              conv-head maps (``head='conv3x3'`` only)
  ============== ========================= ==========================================

  Token 0 is the class token; patch p = w·row + col (row-major), as in timm.

* ``attn_delta`` (optional, (L, B, H, Nq, N) with Nq = N or 1) is added to the
  attention probabilities right after the softmax (Nq = 1: to the class row only).
  Passing zeros leaves the forward unchanged, and ``jax.grad`` with respect to it
  is ∂(scalar)/∂A for every layer in one backward pass — no hooks.
* ``stop_grad_attn_input=True`` stops the gradient at each attention's input
  (the normed block input fed to qkv), as the official AG-CAM model does.
* ``fused_attn`` (timm's attribute name): where no attention probability is read (no
  ``attn``/``scores`` capture, no ``attn_delta``, no attention dropout while training), the
  attention core is ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU, XLA
  elsewhere), so training and prediction steps never materialise the (B, H, N, N) matrix.
  The class-token row (``attn_cls``, SCM/TS-CAM maps) is computed on its own either way.
  False: the explicit softmax path everywhere (the reference; equal up to float32 rounding).
* ``dtype``: the compute dtype (e.g. bfloat16); softmax, LayerNorm statistics and the
  logits stay float32. Parameters keep the dtype they are given (``Method.init`` casts to
  ``config.model.param_dtype``).
* Backend-neutral: plain XLA ops unless another implementation is injected, in the
  Flax idiom, through three fields (all ``None`` by default, set by the run's
  ``wsol_jax.runtime.Runtime``):

  ``attention_fn(qkv, num_heads) -> (out (B, N, C), probs (B, H, N, N))``: the attention
  core from the qkv projection (B, N, 3C), heads merged. Takes precedence over
  ``fused_attn``; used only where its two outputs suffice (no ``attn_delta``, no
  ``scores`` capture, no attention dropout while training); ``attention_core`` is the
  XLA default and the reference.
  ``dot_general``: the products of every ``Dense`` layer, the patch embedding and the
  heads (``lax.dot_general``'s signature, as ``nn.Dense(dot_general=...)``).
  ``block_boundary(x) -> x``: an identity applied to the residual stream before every
  block and before the final norm (a place for, e.g., a gradient barrier).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsol_jax.models import heads, layers

CAPTURE_NAMES = ("attn", "attn_cls", "scores", "scores_cls", "tokens", "pre_logits", "semantic")
DotGeneral = Callable[..., jax.Array]
AttentionFn = Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]


def attention_sum(attn_cls: jax.Array) -> jax.Array:
  """Σ_l mean_h A_l[cls, patches]: (L, B, H, N) -> (B, N − 1) (TS-CAM sums the layers)."""
  return jnp.sum(jnp.mean(attn_cls[..., 1:], axis=2), axis=0)


def _dense(features: int, name: str, dtype: Any, dot_general: DotGeneral | None,
           use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name, dot_general=dot_general,
                  kernel_init=layers.trunc_normal_init(0.02), bias_init=nn.initializers.zeros)


def _layer_norm(eps: float, name: str, dtype: Any) -> nn.LayerNorm:
  # use_fast_variance=False: E[(x-mean)^2] like PyTorch, not E[x^2]-mean^2.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


class DropPath(nn.Module):
  """Stochastic depth per sample (timm ``DropPath``); identity when not training."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class PatchEmbed(nn.Module):
  """Non-overlapping p×p patches -> (B, h·w, D) tokens, row-major (timm ``PatchEmbed``)."""
  embed_dim: int
  patch_size: int
  dtype: Any = jnp.float32
  dot_general: DotGeneral | None = None

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = layers.PatchConv(self.embed_dim, self.patch_size, self.dtype, self.dot_general,
                         name="proj")(images)
    return x.reshape(x.shape[0], -1, self.embed_dim)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU in PyTorch's form ``x·(1 + erf(x/√2))/2`` (cheaper on CPU than jax's erfc form)."""
  return x * (0.5 * (1.0 + jax.lax.erf(x * np.float32(1 / np.sqrt(2)).astype(x.dtype))))


class Mlp(nn.Module):
  """fc1 -> exact (erf) GELU -> dropout -> fc2 -> dropout."""
  hidden_dim: int
  drop: float = 0.0
  dtype: Any = jnp.float32
  dot_general: DotGeneral | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out_dim = x.shape[-1]
    x = _dense(self.hidden_dim, "fc1", self.dtype, self.dot_general)(x)
    x = gelu(x)
    x = nn.Dropout(self.drop, deterministic=not train)(x)
    x = _dense(out_dim, "fc2", self.dtype, self.dot_general)(x)
    return nn.Dropout(self.drop, deterministic=not train)(x)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection, returning its internals."""
  num_heads: int
  qkv_bias: bool = True
  attn_drop: float = 0.0
  proj_drop: float = 0.0
  dtype: Any = jnp.float32
  dot_general: DotGeneral | None = None
  attention_fn: AttentionFn | None = None
  fused_attn: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, delta: jax.Array | None,
               stop_grad_input: bool, cls_row: bool = False, need_scores: bool = False,
               need_probs: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(output, internals ``{'attn'}`` (B, H, N, N) (absent on the fused path), +
    ``'scores'`` (B, H, N, N) on the explicit path, + ``'attn_cls'`` (B, H, N) if
    ``cls_row``). ``attention_fn`` runs the core unless ``delta``, ``need_scores`` or
    attention dropout while training need the explicit path; else ``fused_attn`` does
    unless ``need_probs``."""
    b, n, dim = x.shape
    h = self.num_heads
    d = dim // h
    if stop_grad_input:
      x = jax.lax.stop_gradient(x)
    qkv = _dense(3 * dim, "qkv", self.dtype, self.dot_general, use_bias=self.qkv_bias)(x)
    # Created in both paths (unused by an injected core), so the proj dropout's name and RNG
    # stream do not depend on the path.
    attn_dropout = nn.Dropout(self.attn_drop, deterministic=not train)
    explicit = delta is not None or need_scores or (train and self.attn_drop > 0)
    if not explicit and (self.attention_fn is not None or (self.fused_attn and not need_probs)):
      if self.attention_fn is not None:
        out, attn = self.attention_fn(qkv, h)
        internals = {"attn": attn}
      else:
        out, internals = fused_attention_core(qkv, h), {}
      if cls_row:
        q_cls = qkv[:, :1, :dim].reshape(b, 1, h, d).transpose(0, 2, 1, 3)
        k = qkv[:, :, dim:2 * dim].reshape(b, n, h, d).transpose(0, 2, 1, 3)
        internals["attn_cls"] = _class_row(q_cls, k, None)
    else:
      out, internals = _xla_attention(qkv, h, delta, cls_row, attn_dropout)
    out = _dense(dim, "proj", self.dtype, self.dot_general)(out)
    return nn.Dropout(self.proj_drop, deterministic=not train)(out), internals


def attention_core(qkv: jax.Array, num_heads: int) -> tuple[jax.Array, jax.Array]:
  """The attention core with XLA ops: (softmax(q·kᵀ/√d)·v with heads merged (B, N, C),
  probabilities (B, H, N, N)) of the fused projection ``qkv`` (B, N, 3C) in timm's layout.
  The reference for an injected ``attention_fn``."""
  out, internals = _xla_attention(qkv, num_heads, None, False, lambda a: a)
  return out, internals["attn"]


def fused_attention_core(qkv: jax.Array, num_heads: int) -> jax.Array:
  """``softmax(q·kᵀ/√d)·v`` with heads merged (B, N, C) through
  ``jax.nn.dot_product_attention`` (cuDNN's fused kernel on GPU where it applies, XLA
  elsewhere); no probabilities are returned, so none need to be kept."""
  b, n, c3 = qkv.shape
  dim = c3 // 3
  qkv = qkv.reshape(b, n, 3, num_heads, dim // num_heads)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, H, d)
  return jax.nn.dot_product_attention(q, k, v).reshape(b, n, dim)


def _xla_attention(qkv: jax.Array, h: int, delta: jax.Array | None, cls_row: bool,
                   dropout: Callable[[jax.Array], jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """XLA's attention core: heads-merged output (B, N, C) and internals from qkv (B, N, 3C)."""
  b, n, c3 = qkv.shape
  d, dim = c3 // 3 // h, c3 // 3
  # Heads-major (3, B, H, N, d) once: the batched attention dots then need no layout
  # changes of their own, which XLA:CPU otherwise places on the slow backward dots.
  # A split (not indexing) so that the backward concatenates dq, dk, dv instead of
  # zero-padding each to the full size and adding the three.
  qkv = qkv.reshape(b, n, 3, h, d).transpose(2, 0, 3, 1, 4)
  q, k, v = (t[0] for t in jax.lax.split(qkv, (1, 1, 1), axis=0))  # (B, H, N, d)
  scores = jnp.einsum("bhqd,bhkd->bhqk", q * (d ** -0.5), k)
  # The probabilities stay float32 (what maps read); the product with v runs in q's dtype.
  probs = _add_delta(jax.nn.softmax(scores.astype(jnp.float32), axis=-1), delta)
  internals = {"attn": probs, "scores": scores}
  if cls_row:
    # The class-token row once more on its own (B·H·N·d work): a gradient into it (SCM's
    # F⁰) then reaches q_cls and K directly, instead of as a (B, H, N, N) cotangent that
    # is zero outside row 0 and passes through the whole softmax backward of every layer.
    internals["attn_cls"] = _class_row(q[:, :, :1], k, delta)
  attn = dropout(probs.astype(q.dtype))
  out = jnp.einsum("bhqk,bhkd->bhqd", attn, v).transpose(0, 2, 1, 3).reshape(b, n, dim)
  return out, internals


def _class_row(q_cls: jax.Array, k: jax.Array, delta: jax.Array | None) -> jax.Array:
  """Class-token attention row (B, H, N), float32, of q_cls (B, H, 1, d) and k (B, H, N, d),
  plus row 0 of ``delta`` if given."""
  row = jnp.einsum("bhqd,bhkd->bhqk", q_cls * (q_cls.shape[-1] ** -0.5), k)
  row = jax.nn.softmax(row.astype(jnp.float32), axis=-1)
  return _add_delta(row, None if delta is None else delta[:, :, :1])[:, :, 0]


def _add_delta(attn: jax.Array, delta: jax.Array | None) -> jax.Array:
  """attn (B, H, Nq, N) + delta (B, H, Nq or 1, N); a 1-row delta goes to row 0 only."""
  if delta is None:
    return attn
  if delta.shape[-2] == attn.shape[-2]:
    return attn + delta.astype(attn.dtype)
  return attn.at[:, :, :1, :].add(delta.astype(attn.dtype))


class Block(nn.Module):
  """Pre-norm transformer block; ``post_block`` (e.g. p-ADL) acts on its output."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop: float = 0.0
  attn_drop: float = 0.0
  drop_path: float = 0.0
  norm_eps: float = 1e-6
  post_block: Callable[..., nn.Module] | None = None
  dtype: Any = jnp.float32
  dot_general: DotGeneral | None = None
  attention_fn: AttentionFn | None = None
  fused_attn: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, delta: jax.Array | None,
               stop_grad_input: bool, cls_row: bool = False, need_scores: bool = False,
               need_probs: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    dim = x.shape[-1]
    y, internals = Attention(self.num_heads, self.qkv_bias, self.attn_drop, self.drop,
                             self.dtype, self.dot_general, self.attention_fn, self.fused_attn,
                             name="attn")(
                                 _layer_norm(self.norm_eps, "norm1", self.dtype)(x), train=train,
                                 delta=delta, stop_grad_input=stop_grad_input, cls_row=cls_row,
                                 need_scores=need_scores, need_probs=need_probs)
    x = x + DropPath(self.drop_path)(y, train)
    y = Mlp(int(dim * self.mlp_ratio), self.drop, self.dtype, self.dot_general, name="mlp")(
        _layer_norm(self.norm_eps, "norm2", self.dtype)(x), train)
    x = x + DropPath(self.drop_path)(y, train)
    if self.post_block is not None:
      x = self.post_block(name="post")(x, train=train)
    return x, internals


class VisionTransformer(nn.Module):
  """timm ``VisionTransformer`` (class token, learned position embedding, no distillation token).

  Attributes:
    head: ``'linear'`` (class token -> Dense), ``'conv3x3'`` (TS-CAM/SCM semantic
      head on the patch grid, logits = spatial mean) or ``'none'`` (logits =
      pre-logits features).
    norm_eps: LayerNorm epsilon of the blocks; ``final_norm_eps`` that of the last
      norm (None: same; the hila-chefer LRP / ViTOL model uses 1e-5).
    post_block: optional module factory applied to each block's output
      (``factory(name='post')(x, train=...)``), used by ViTOL's p-ADL.
    fused_attn: ``jax.nn.dot_product_attention`` where no probability is read (module
      docstring).
    attention_fn, dot_general, block_boundary: injected implementations (module
      docstring); None = XLA ops.
  """
  num_classes: int = 1000
  img_size: int = 224
  patch_size: int = 16
  in_chans: int = 3
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  head: str = "linear"
  norm_eps: float = 1e-6
  final_norm_eps: float | None = None
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  post_block: Callable[..., nn.Module] | None = None
  dtype: Any = jnp.float32
  fused_attn: bool = False
  attention_fn: AttentionFn | None = None
  dot_general: DotGeneral | None = None
  block_boundary: Callable[[jax.Array], jax.Array] | None = None

  def grid_shape(self, height: int, width: int) -> tuple[int, int]:
    """Patch grid (h, w) for an input of the given size."""
    return height // self.patch_size, width // self.patch_size

  def _check_inputs(self, images: jax.Array, capture: Sequence[str],
                    attn_delta: jax.Array | None) -> tuple[int, int]:
    if images.ndim != 4:
      raise ValueError(f"images must be NHWC with rank 4, got shape {tuple(images.shape)}")
    b, hh, ww, c = images.shape
    if c != self.in_chans:
      hint = " (they look NCHW; wsol_jax expects NHWC)" if images.shape[1] == self.in_chans else ""
      raise ValueError(f"images have {c} channels in the last axis, the model expects "
                       f"{self.in_chans}: shape {tuple(images.shape)}{hint}")
    p = self.patch_size
    if hh % p or ww % p or hh < p or ww < p:
      raise ValueError(f"image size {hh}x{ww} is not a positive multiple of the patch size {p}")
    unknown = sorted(set(capture) - set(CAPTURE_NAMES))
    if unknown:
      raise ValueError(f"unknown capture names {unknown}; valid: {list(CAPTURE_NAMES)}")
    if "semantic" in capture and self.head != "conv3x3":
      raise ValueError("capture 'semantic' needs head='conv3x3'")
    if self.head not in heads.HEAD_TYPES:
      raise ValueError(f"unknown head {self.head!r}; valid: {list(heads.HEAD_TYPES)}")
    gh, gw = self.grid_shape(hh, ww)
    n = gh * gw + 1
    if attn_delta is not None:
      want = (self.depth, b, self.num_heads)
      if (attn_delta.ndim != 5 or tuple(attn_delta.shape[:3]) != want
          or attn_delta.shape[3] not in (1, n) or attn_delta.shape[4] != n):
        raise ValueError(f"attn_delta must have shape (L, B, H, N or 1, N) = "
                         f"({want[0]}, {want[1]}, {want[2]}, {n} or 1, {n}), "
                         f"got {tuple(attn_delta.shape)}")
    return gh, gw

  def _pos_embed(self, gh: int, gw: int) -> jax.Array:
    base = self.img_size // self.patch_size
    pos = self.param("pos_embed", layers.trunc_normal_init(0.02),
                     (1, base * base + 1, self.embed_dim), jnp.float32)
    if (gh, gw) == (base, base):
      return pos
    # Another input size: resample the patch position grid (timm resample_abs_pos_embed).
    grid = pos[:, 1:].reshape(1, base, base, self.embed_dim)
    grid = jax.image.resize(grid, (1, gh, gw, self.embed_dim), method="cubic-pytorch", antialias=False)
    return jnp.concatenate([pos[:, :1], grid.reshape(1, gh * gw, self.embed_dim)], axis=1)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False, capture: Sequence[str] = (),
               attn_delta: jax.Array | None = None,
               stop_grad_attn_input: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    capture = tuple(capture)
    gh, gw = self._check_inputs(images, capture, attn_delta)
    b = images.shape[0]
    p = self.patch_size
    x = PatchEmbed(self.embed_dim, p, self.dtype, self.dot_general, name="patch_embed")(images)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.embed_dim), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.embed_dim)).astype(x.dtype), x], axis=1)
    x = x + self._pos_embed(gh, gw).astype(x.dtype)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)

    need_scores = bool({"scores", "scores_cls"} & set(capture))
    boundary = self.block_boundary or (lambda t: t)
    per_layer = {name: [] for name in ("attn", "attn_cls", "scores", "scores_cls") if name in capture}
    rates = np.linspace(0.0, self.drop_path_rate, self.depth) if self.depth > 1 else [0.0]
    for i in range(self.depth):
      x = boundary(x)
      x, internals = Block(self.num_heads, self.mlp_ratio, self.qkv_bias, self.drop_rate,
                           self.attn_drop_rate, float(rates[i]), self.norm_eps, self.post_block,
                           self.dtype, self.dot_general, self.attention_fn, self.fused_attn,
                           name=f"blocks_{i}")(
                               x, train=train,
                               delta=None if attn_delta is None else attn_delta[i],
                               stop_grad_input=stop_grad_attn_input,
                               cls_row="attn_cls" in capture, need_scores=need_scores,
                               need_probs="attn" in capture)
      for name in per_layer:
        if name in internals:
          per_layer[name].append(internals[name])
        else:  # scores_cls
          per_layer[name].append(internals[name.removesuffix("_cls")][:, :, 0, :])

    final_eps = self.norm_eps if self.final_norm_eps is None else self.final_norm_eps
    x = boundary(x)
    x = _layer_norm(final_eps, "norm", self.dtype)(x)
    aux: dict[str, jax.Array] = {name: jnp.stack(v) for name, v in per_layer.items()}
    if "tokens" in capture:
      aux["tokens"] = x
    if "pre_logits" in capture:
      aux["pre_logits"] = x[:, 0]

    if self.head == "linear":
      logits = heads.linear_head(x[:, 0], self.num_classes, self.dtype,
                                 dot_general=self.dot_general)
    elif self.head == "conv3x3":
      grid = x[:, 1:].reshape(b, gh, gw, self.embed_dim)
      semantic = heads.conv3x3_semantic_head(grid, self.num_classes, self.dtype,
                                             dot_general=self.dot_general)
      if "semantic" in capture:
        aux["semantic"] = semantic
      logits = heads.spatial_mean(semantic)
    else:
      logits = x[:, 0]
    return logits.astype(jnp.float32), aux
