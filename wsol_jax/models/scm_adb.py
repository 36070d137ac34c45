"""SCM's Activation Diffusion Blocks (Bai et al., ECCV'22; hbai98/SCM ``graphFusion.py``).

Training graph of the network (official ``SCM.forward`` in train mode)::

    F⁰ = minmax(Σ_l mean_h A_l[cls, patches])   (B, N)      not detached
    S⁰ = conv-head semantic maps                 (B, h, w, C)
    (Sⁱ, Fⁱ) = ADB_i(Sⁱ⁻¹, Fⁱ⁻¹), i = 1..4;  logits = GAP(S⁴)

One ADB (``Encoder`` + ``Fuse``), with Λ = D − A the graph Laplacian of the h×w
4-neighbour patch grid::

    E = cos-sim of the C-channel tokens of S        (no eps)
    M = Λ ⊙ (λE − 1)
    X₀ = α·Mᵀ (no gradient);  X_{k+1} = X_k (2I − M X_k), k < K;  P = X_Kᵀ
    F̃ = P F;  τ = β·max F;  F̂ = minmax(tanhshrink(F̃/τ))   (no eps)
    S' = S + S ⊙ F̂;  F' = F + F̂

The Newton–Schulz recurrence is replicated literally (it is far from M⁻¹ with
α = 0.002 and K = 16/4). Min/max reductions route their gradient to a single
index like ``torch.min/max(dim)``. Inference drops the ADBs: maps are F⁰ ⊙ S⁰.

Two implementations of the block give the same numbers up to float32 summation
order: ``'dense'`` is the official computation with dense N×N matrices (the
reference); ``'stencil'`` (default, fast) evaluates the same recurrence but

* uses that M is zero outside Λ's 5-point stencil (M·X costs O(N²), only the
  stencil entries of E are computed, X₀ = α·M is a stencil, so X₁ needs no matmul),
* never forms X_K: F̃ = X_Kᵀ F = Y_{K−1}ᵀ (X_{K−1}ᵀ F) is two matrix–vector products,
* differentiates the recurrence with a low-rank-aware VJP: ∂L/∂X_K = F ḡᵀ has rank 1
  and the rank at most doubles per step, so the last steps' backward is
  matrix–vector work (dense steps only once the rank exceeds N/2).

The stencil block's dense steps (forward iterates and VJP) can be injected
(``DenseSteps``, through the run's ``wsol_jax.runtime.Runtime``); by default they are XLA ops.
``tanhshrink`` is evaluated accurately (series for small arguments, where the
official ``z − tanh z`` loses most of its float32 digits).

Modules: ``ActivationDiffusion`` (the blocks and their λ, β parameters) and
``ScmVisionTransformer`` (the TS-CAM ViT that runs them in its training graph).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsol_jax.models.vit import VisionTransformer, attention_sum

IMPLS = ("stencil", "dense")
TIES = ("first", "split")
PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "high": jax.lax.Precision.HIGH,
              "default": jax.lax.Precision.DEFAULT}


class DenseSteps(Protocol):
  """An implementation of the stencil block's dense Newton–Schulz steps.

  M and X₀ are passed as their five coefficient planes per image, (B, 5, N) (centre,
  right, left, down, up; zero outside the grid).
  """

  def forward(self, coef_m: jax.Array, coef_x0: jax.Array, h: int, w: int, iterations: int
              ) -> Sequence[jax.Array]:
    """The dense iterates X_1..X_{K−1}, each (B, N, N)."""

  def backward(self, coef_m: jax.Array, coef_x0: jax.Array, xs: Sequence[jax.Array],
               g: jax.Array, h: int, w: int) -> jax.Array:
    """From ∂L/∂X_{last+1} = g over X_last..X_1 (``xs``) and X₀: −Σ_k Ȳ_k ⊙ X_k per plane (B, 5, N)."""


# ---- graph constants ------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def grid_adjacency(h: int, w: int) -> np.ndarray:
  """4-neighbour adjacency of the h×w patch grid, (N, N) float32, N = h·w row-major."""
  idx = np.arange(h * w).reshape(h, w)
  adj = np.zeros((h * w, h * w), np.float32)
  for a, b in ((idx[:, :-1], idx[:, 1:]), (idx[:-1], idx[1:])):
    adj[a.ravel(), b.ravel()] = 1.0
    adj[b.ravel(), a.ravel()] = 1.0
  adj.setflags(write=False)
  return adj


@functools.lru_cache(maxsize=16)
def grid_laplacian(h: int, w: int) -> np.ndarray:
  """Λ = D − A of the h×w grid (D = in-degree = column sums), (N, N) float32."""
  adj = grid_adjacency(h, w)
  lap = np.diag(adj.sum(axis=0)) - adj
  lap.setflags(write=False)
  return lap


@functools.lru_cache(maxsize=16)
def grid_degree(h: int, w: int) -> np.ndarray:
  """Neighbour count of every grid cell, (h, w) float32 (2 corners, 3 edges, 4 inside)."""
  return grid_adjacency(h, w).sum(axis=0).reshape(h, w)


# ---- reductions with torch's gradient routing ------------------------------------------------

def _check_ties(ties: str) -> None:
  if ties not in TIES:
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}")


def row_max(x: jax.Array, ties: str = "first") -> jax.Array:
  """max over the last axis, keepdims. ``'first'``: the gradient goes to the first maximal
  index (``torch.max(dim)``); ``'split'``: shared by ties (``jnp.max``)."""
  _check_ties(ties)
  if ties == "split":
    return jnp.max(x, axis=-1, keepdims=True)
  return jnp.take_along_axis(x, jnp.argmax(x, axis=-1, keepdims=True), axis=-1)


def row_min(x: jax.Array, ties: str = "first") -> jax.Array:
  """min over the last axis, keepdims (see ``row_max`` for ``ties``)."""
  _check_ties(ties)
  if ties == "split":
    return jnp.min(x, axis=-1, keepdims=True)
  return jnp.take_along_axis(x, jnp.argmin(x, axis=-1, keepdims=True), axis=-1)


def norm_cam(x: jax.Array, ties: str = "first") -> jax.Array:
  """Official ``norm_cam`` of (B, N) rows: x − min, then divided by its max (no eps)."""
  x = x - row_min(x, ties)
  return x / row_max(x, ties)


# ---- filter and update ----------------------------------------------------------------------

_TANHSHRINK_SERIES = (1 / 3, -2 / 15, 17 / 315, -62 / 2835, 1382 / 155925, -21844 / 6081075,
                      929569 / 638512875, -6404582 / 10854718875, 443861162 / 1856156927625)
_SERIES_LIMIT = 0.5


@jax.custom_jvp
def tanhshrink(z: jax.Array) -> jax.Array:
  """z − tanh(z), accurate in float32 (Taylor series for |z| < 0.5, where the direct
  difference cancels catastrophically); derivative tanh(z)²."""
  small = jnp.abs(z) < _SERIES_LIMIT
  zs = jnp.where(small, z, 0)
  u = zs * zs
  acc = jnp.asarray(_TANHSHRINK_SERIES[-1], z.dtype)
  for c in reversed(_TANHSHRINK_SERIES[:-1]):
    acc = acc * u + jnp.asarray(c, z.dtype)
  return jnp.where(small, zs * u * acc, z - jnp.tanh(z))


@tanhshrink.defjvp
def _tanhshrink_jvp(primals, tangents):
  (z,), (dz,) = primals, tangents
  return tanhshrink(z), jnp.square(jnp.tanh(z)) * dz


def dynamic_filter(f_tilde: jax.Array, f: jax.Array, beta: jax.Array, ties: str = "first"
                   ) -> jax.Array:
  """F̂ = norm_cam(tanhshrink(F̃ / (β · max F))): (B, N), (B, N), (1,) -> (B, N)."""
  tau = beta * row_max(f, ties)
  return norm_cam(tanhshrink(f_tilde / tau), ties)


def residual_update(s: jax.Array, f: jax.Array, f_hat: jax.Array) -> tuple[jax.Array, jax.Array]:
  """S' = S + S ⊙ F̂, F' = F + F̂: (B, h, w, C), (B, N), (B, N) -> same shapes."""
  b, h, w, _ = s.shape
  return s + s * f_hat.reshape(b, h, w, 1), f + f_hat


# ---- dense (literal) block --------------------------------------------------------------------

def cosine_similarity(tokens: jax.Array, precision: Any = None) -> jax.Array:
  """E_pq = ⟨t_p, t_q⟩ / (‖t_p‖ ‖t_q‖) (no eps): (B, N, C) -> (B, N, N)."""
  dot = jnp.einsum("bic,bjc->bij", tokens, tokens, precision=precision)
  norm = jnp.sqrt(jnp.sum(tokens * tokens, axis=-1))
  return dot / (norm[:, :, None] * norm[:, None, :])


def laplacian_weights(lap: jax.Array, sim: jax.Array, lam: jax.Array) -> jax.Array:
  """M = Λ ⊙ (λE − 1): (N, N), (B, N, N), (1,) -> (B, N, N)."""
  return lap * (lam * sim - 1)


def newton_schulz(m: jax.Array, iterations: int, alpha: float, precision: Any = None) -> jax.Array:
  """Official ``inverse_schulz``: X₀ = α·Mᵀ (no gradient), X_{k+1} = X_k (2I − M X_k).

  Args:
    m: (..., N, N) matrices.
  Returns:
    X_K, (..., N, N) (NOT M⁻¹ for the official α and K).
  """
  eye = jnp.eye(m.shape[-1], dtype=m.dtype)
  x = jax.lax.stop_gradient(alpha * jnp.swapaxes(m, -1, -2))
  for _ in range(iterations):
    x = jnp.matmul(x, 2 * eye - jnp.matmul(m, x, precision=precision), precision=precision)
  return x


def dense_propagation(s: jax.Array, lam: jax.Array, iterations: int, alpha: float,
                      precision: Any = None) -> jax.Array:
  """``Fuse.forward``: P = X_Kᵀ from the semantic maps, (B, h, w, C) -> (B, N, N)."""
  b, h, w, c = s.shape
  lap = jnp.asarray(grid_laplacian(h, w), s.dtype)
  m = laplacian_weights(lap, cosine_similarity(s.reshape(b, h * w, c), precision), lam)
  return jnp.swapaxes(newton_schulz(m, iterations, alpha, precision), -1, -2)


# ---- stencil (fast) block ---------------------------------------------------------------------

class Stencil(NamedTuple):
  """A symmetric matrix supported on the grid's 5-point stencil.

  ``center`` (B, h, w) is the diagonal; ``right`` (B, h, w−1) couples cell (i, j) with
  (i, j+1) and ``down`` (B, h−1, w) couples (i, j) with (i+1, j), both ways.
  """
  center: jax.Array
  right: jax.Array
  down: jax.Array


def stencil_similarity(s: jax.Array) -> Stencil:
  """The stencil entries of the cosine similarity E, (B, h, w, C) -> Stencil."""
  sq = jnp.sum(s * s, axis=-1)
  norm = jnp.sqrt(sq)

  def cos(a, b, na, nb):
    return jnp.sum(a * b, axis=-1) / (na * nb)
  return Stencil(sq / (norm * norm),
                 cos(s[:, :, :-1], s[:, :, 1:], norm[:, :, :-1], norm[:, :, 1:]),
                 cos(s[:, :-1], s[:, 1:], norm[:, :-1], norm[:, 1:]))


def stencil_weights(sim: Stencil, lam: jax.Array) -> Stencil:
  """M = Λ ⊙ (λE − 1) on the stencil (Λ: degree on the diagonal, −1 off it)."""
  h, w = sim.center.shape[-2:]
  deg = jnp.asarray(grid_degree(h, w), sim.center.dtype)
  return Stencil(deg * (lam * sim.center - 1), -(lam * sim.right - 1), -(lam * sim.down - 1))


def stencil_scale(m: Stencil, factor: float) -> Stencil:
  return Stencil(*(factor * a for a in m))


def _neighbours(g: jax.Array) -> tuple[jax.Array, ...]:
  """(B, h, w, K) -> the values at each cell, its right, left, lower and upper neighbour
  (zeros outside the grid)."""
  e = jnp.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return g, e[:, 1:-1, 2:], e[:, 1:-1, :-2], e[:, 2:, 1:-1], e[:, :-2, 1:-1]


def _coefficients(m: Stencil) -> tuple[jax.Array, ...]:
  """The five (B, h, w) coefficient planes matching ``_neighbours``."""
  pad = functools.partial(jnp.pad, mode="constant")
  return (m.center, pad(m.right, ((0, 0), (0, 0), (0, 1))), pad(m.right, ((0, 0), (0, 0), (1, 0))),
          pad(m.down, ((0, 0), (0, 1), (0, 0))), pad(m.down, ((0, 0), (1, 0), (0, 0))))


def _planes(m: Stencil) -> jax.Array:
  """The five coefficient planes of ``_coefficients`` as (B, 5, N) (the kernel's layout)."""
  return jnp.stack(_coefficients(m), axis=1).reshape(m.center.shape[0], 5, -1)


def _stencil_of_planes(planes: jax.Array, like: Stencil) -> Stencil:
  """Coefficient cotangents (B, 5, N) per plane -> the Stencil's (both ends of each edge)."""
  h, w = like.center.shape[-2:]
  c, right, left, down, up = (planes[:, i].reshape(-1, h, w) for i in range(5))
  return Stencil(c, right[:, :, :-1] + left[:, :, 1:], down[:, :-1] + up[:, 1:])


def stencil_apply(m: Stencil, x: jax.Array) -> jax.Array:
  """M @ x for a stencil matrix: (B, N, K) -> (B, N, K) in O(N·K)."""
  b, n, k = x.shape
  h, w = m.center.shape[-2:]
  terms = zip(_coefficients(m), _neighbours(x.reshape(b, h, w, k)))
  return sum(c[..., None] * v for c, v in terms).reshape(b, n, k)


def stencil_dense(m: Stencil) -> jax.Array:
  """The (B, N, N) matrix of a stencil."""
  b = m.center.shape[0]
  n = m.center.shape[-1] * m.center.shape[-2]
  return stencil_apply(m, jnp.broadcast_to(jnp.eye(n, dtype=m.center.dtype), (b, n, n)))


def _coeff_grad(x: jax.Array, ct: jax.Array, like: Stencil) -> Stencil:
  """Cotangent of the coefficients of ``stencil_apply(m, x)`` for the output cotangent ``ct``.

  (B, N, K) each -> Stencil: Σ_k ct[p,k]·x[q,k] summed over both (p, q) of every edge.
  """
  b, _, k = x.shape
  h, w = like.center.shape[-2:]
  ct = ct.reshape(b, h, w, k)
  c, right, left, down, up = (jnp.sum(ct * v, axis=-1) for v in _neighbours(x.reshape(b, h, w, k)))
  return Stencil(c, right[:, :, :-1] + left[:, :, 1:], down[:, :-1] + up[:, 1:])


def _stencil_add(a: Stencil, b: Stencil, sign: float = 1.0) -> Stencil:
  return Stencil(*(u + sign * v for u, v in zip(a, b)))


def _ns_stencil_forward(m: Stencil, iterations: int, alpha: float, precision: Any,
                        steps: DenseSteps | None = None) -> tuple[Stencil, tuple[jax.Array, ...]]:
  """X₀ = α·Mᵀ (a constant stencil; Mᵀ = M) and the dense iterates X_1..X_{K−1}, each (B, N, N).

  X_K itself is never needed as a matrix: X_Kᵀ v = Y_{K−1}ᵀ X_{K−1}ᵀ v is two products
  with vectors (``_apply_last``). The iterations are unrolled (K is static and small): a
  ``lax.scan`` would zero-fill and copy a stacked (K−1, B, N, N) buffer every step.
  ``steps``: the iterates come from ``steps.forward`` (not differentiable itself; used
  inside ``stencil_diffuse``'s custom VJP).
  """
  x0 = jax.tree_util.tree_map(jax.lax.stop_gradient, stencil_scale(m, alpha))
  if iterations == 1:
    return x0, ()
  if steps is not None:
    h, w = m.center.shape[-2:]
    return x0, tuple(steps.forward(_planes(m), _planes(x0), h, w, iterations))
  n = m.center.shape[-1] * m.center.shape[-2]
  eye = jnp.eye(n, dtype=m.center.dtype)
  xs = [stencil_apply(x0, 2 * eye - stencil_apply(m, stencil_dense(x0)))]  # X₀ (2I − M X₀)
  for _ in range(iterations - 2):
    xs.append(jnp.matmul(xs[-1], 2 * eye - stencil_apply(m, xs[-1]), precision=precision))
  return x0, tuple(xs)


def _apply_x(x0: Stencil, xs: tuple[jax.Array, ...], k: int, v: jax.Array, transpose: bool,
             precision: Any) -> jax.Array:
  """X_k v or X_kᵀ v for v (B, N, r) (X₀ is the symmetric stencil α·M)."""
  if k == 0:
    return stencil_apply(x0, v)
  x = jnp.swapaxes(xs[k - 1], -1, -2) if transpose else xs[k - 1]
  return jnp.matmul(x, v, precision=precision)


def _apply_last(m: Stencil, x0: Stencil, xs: tuple[jax.Array, ...], v: jax.Array, transpose: bool,
                precision: Any) -> jax.Array:
  """X_K v or X_Kᵀ v with X_K = X_{K−1} Y_{K−1}, Y_{K−1} = 2I − M X_{K−1} (Mᵀ = M)."""
  k = len(xs)
  if transpose:  # Y_{K−1}ᵀ (X_{K−1}ᵀ v) = 2a − X_{K−1}ᵀ M a
    a = _apply_x(x0, xs, k, v, True, precision)
    return 2 * a - _apply_x(x0, xs, k, stencil_apply(m, a), True, precision)
  a = _apply_x(x0, xs, k, v, False, precision)  # X_{K−1} (2v − M X_{K−1} v)
  return _apply_x(x0, xs, k, 2 * v - stencil_apply(m, a), False, precision)


def stencil_newton_schulz(m: Stencil, iterations: int, alpha: float, precision: Any = None
                          ) -> jax.Array:
  """``newton_schulz`` of a stencil matrix: X_K, (B, N, N)."""
  x0, xs = _ns_stencil_forward(m, iterations, alpha, precision)
  n = m.center.shape[-1] * m.center.shape[-2]
  eye = jnp.broadcast_to(jnp.eye(n, dtype=m.center.dtype), (m.center.shape[0], n, n))
  return _apply_last(m, x0, xs, eye, False, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def stencil_diffuse(m: Stencil, f: jax.Array, iterations: int, alpha: float, precision: Any = None,
                    steps: DenseSteps | None = None) -> jax.Array:
  """F̃ = X_Kᵀ F with X_K the Newton–Schulz iterate of M: Stencil, (B, N) -> (B, N).

  ``steps``: an injected implementation of the dense steps (forward and VJP); None = XLA ops.
  """
  return _diffuse_fwd(m, f, iterations, alpha, precision, steps)[0]


def _diffuse_fwd(m, f, iterations, alpha, precision, steps):
  x0, xs = _ns_stencil_forward(m, iterations, alpha, precision, steps)
  f_tilde = _apply_last(m, x0, xs, f[..., None], True, precision)[..., 0]
  return f_tilde, (m, f, x0, xs)


def _low_rank_steps(m: Stencil, x0: Stencil, xs: tuple[jax.Array, ...], u: jax.Array, v: jax.Array,
                    precision: Any) -> tuple[int, jax.Array, jax.Array, Stencil]:
  """Backward steps K−1, K−2, ... while ∂L/∂X_{k+1} = U Vᵀ has rank r ≤ N/2.

  Returns (k, U, V, M̄): k is the first step not yet done (−1 when all are done).
  """
  n = u.shape[-2]
  grad_m = jax.tree_util.tree_map(jnp.zeros_like, m)
  k = len(xs)
  while k >= 0 and 2 * u.shape[-1] <= n:
    a = _apply_x(x0, xs, k, u, True, precision)                # Xᵀ U
    wv = _apply_x(x0, xs, k, v, False, precision)              # X V
    grad_m = _stencil_add(grad_m, _coeff_grad(wv, a, m), -1.0)  # M̄ −= (Xᵀ U)(X V)ᵀ
    if k > 0:  # X₀ is constant: step 0 only feeds M̄
      u = jnp.concatenate([u, -stencil_apply(m, a)], axis=-1)
      v = jnp.concatenate([2 * v - stencil_apply(m, wv), v], axis=-1)
    k -= 1
  return k, u, v, grad_m


def _dense_steps(m: Stencil, xs: tuple[jax.Array, ...], g: jax.Array, grad_m: Stencil, last: int,
                 precision: Any) -> tuple[jax.Array, Stencil]:
  """Backward steps ``last``, ..., 1 with a dense ∂L/∂X_{k+1} (unrolled over X_last..X_1)."""
  eye = jnp.eye(g.shape[-1], dtype=g.dtype)
  mm = functools.partial(jnp.matmul, precision=precision)
  for x in reversed(xs[:last]):
    y_bar = mm(jnp.swapaxes(x, -1, -2), g)                   # Ȳ = Xᵀ Ḡ
    y = 2 * eye - stencil_apply(m, x)
    grad_m = _stencil_add(grad_m, _coeff_grad(x, y_bar, m), -1.0)  # M̄ −= Ȳ Xᵀ
    g = mm(g, jnp.swapaxes(y, -1, -2)) - stencil_apply(m, y_bar)
  return g, grad_m


def _diffuse_bwd(iterations, alpha, precision, steps, res, g):
  """VJP of X_{k+1} = X_k Y_k, Y_k = 2I − M X_k, from the rank-1 cotangent ∂L/∂X_K = F gᵀ.

  With Ḡ = ∂L/∂X_{k+1}: Ȳ = X_kᵀ Ḡ, ∂L/∂X_k = Ḡ Y_kᵀ − Mᵀ Ȳ, M̄ −= Ȳ X_kᵀ (stencil entries).
  While Ḡ = U Vᵀ has rank r ≤ N/2 it stays factored, ∂L/∂X_k = [U, −M Xᵀ U][Y_k V, V]ᵀ,
  so the last steps cost O(N² r) instead of O(N³) (M, X_k, Y_k are symmetric).
  """
  del iterations, alpha
  m, f, x0, xs = res
  grad_f = _apply_last(m, x0, xs, g[..., None], False, precision)[..., 0]  # X_K g
  k, u, v, grad_m = _low_rank_steps(m, x0, xs, f[..., None], g[..., None], precision)
  if k < 0:
    return grad_m, grad_f
  dense = jnp.matmul(u, jnp.swapaxes(v, -1, -2), precision=precision)
  if steps is not None:  # steps k..1 and step 0 in one call, which returns −Σ Ȳ ⊙ X per plane
    h, w = m.center.shape[-2:]
    planes = steps.backward(_planes(m), _planes(x0), xs[:k], dense, h, w)
    return _stencil_add(grad_m, _stencil_of_planes(planes, m)), grad_f
  dense, grad_m = _dense_steps(m, xs, dense, grad_m, k, precision)
  y_bar = stencil_apply(x0, dense)                            # step 0: X₀ᵀ Ḡ
  return _stencil_add(grad_m, _coeff_grad(stencil_dense(x0), y_bar, m), -1.0), grad_f


stencil_diffuse.defvjp(_diffuse_fwd, _diffuse_bwd)


# ---- blocks --------------------------------------------------------------------------------

def adb(s: jax.Array, f: jax.Array, lam: jax.Array, beta: jax.Array, iterations: int,
        alpha: float, *, impl: str = "stencil", precision: Any = None, ties: str = "first",
        return_propagation: bool = False, steps: DenseSteps | None = None
        ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """One Activation Diffusion Block.

  Args:
    s: semantic maps S, (B, h, w, C).
    f: activation F, (B, N) with N = h·w row-major.
    lam, beta: the block's λ and β, (1,).
    return_propagation: also return P = X_Kᵀ (B, N, N) in the aux dict (``'P'``).
    steps: injected dense Newton–Schulz steps of the stencil block (None: XLA ops).
  Returns:
    (S', F', aux) with aux ``{'F_hat': (B, N)}`` (+ ``'P'``).
  """
  aux = {}
  if impl == "dense":
    p = dense_propagation(s, lam, iterations, alpha, precision)
    f_tilde = jnp.einsum("bpq,bq->bp", p, f, precision=precision)
    if return_propagation:
      aux["P"] = p
  elif impl == "stencil":
    m = stencil_weights(stencil_similarity(s), lam)
    f_tilde = stencil_diffuse(m, f, iterations, alpha, precision, steps)
    if return_propagation:
      aux["P"] = jnp.swapaxes(stencil_newton_schulz(m, iterations, alpha, precision), -1, -2)
  else:
    raise ValueError(f"unknown ADB impl {impl!r}; valid: {IMPLS}")
  f_hat = dynamic_filter(f_tilde, f, beta, ties)
  s, f = residual_update(s, f, f_hat)
  aux["F_hat"] = f_hat
  return s, f, aux


def run_adbs(s: jax.Array, f: jax.Array, params: dict[str, Any], iterations: Sequence[int],
             alpha: float = 0.002, *, impl: str = "stencil", precision: str = "highest",
             steps: DenseSteps | None = None, ties: str = "first", trace: bool = False
             ) -> tuple[jax.Array, jax.Array, dict[str, list[jax.Array]]]:
  """All ADBs: (S⁰ (B,h,w,C), F⁰ (B,N)) -> (S^K, F^K, trace).

  ``params``: ``{'adb_i': {'lambda': (1,), 'beta': (1,)}}``. ``trace`` (static) collects
  every block's S, F, F̂ and P in lists (tests/inspection).
  """
  if impl not in IMPLS:
    raise ValueError(f"scm.impl must be one of {IMPLS}, got {impl!r}")
  if precision not in PRECISIONS:
    raise ValueError(f"scm.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
  out = {"S": [], "F": [], "F_hat": [], "P": []}
  for i, k in enumerate(iterations):
    block = params[f"adb_{i}"]
    s, f, aux = adb(s, f, block["lambda"], block["beta"], int(k), alpha, impl=impl,
                    precision=PRECISIONS[precision], ties=ties, return_propagation=trace,
                    steps=steps if impl == "stencil" else None)
    if trace:
      out["S"].append(s)
      out["F"].append(f)
      out["F_hat"].append(aux["F_hat"])
      out["P"].append(aux["P"])
  return s, f, out


def attention_activation(attn_cls: jax.Array, ties: str = "first") -> jax.Array:
  """F⁰ = norm_cam(Σ_l mean_h A_l[cls, patches]): (L, B, H, N+1) -> (B, N)."""
  return norm_cam(attention_sum(attn_cls), ties)


# ---- modules ------------------------------------------------------------------------------

class AdbParameters(nn.Module):
  """One block's λ (``fuse._loss_rate``) and β (``thred``), each (1,)."""
  lambda_init: float = 1.0
  beta_init: float = 0.5

  @nn.compact
  def __call__(self) -> dict[str, jax.Array]:
    return {"lambda": self.param("lambda", nn.initializers.constant(self.lambda_init), (1,),
                                 jnp.float32),
            "beta": self.param("beta", nn.initializers.constant(self.beta_init), (1,), jnp.float32)}


class ActivationDiffusion(nn.Module):
  """The ADB stack: (S⁰, F⁰) -> (S^K, F^K, trace); parameters ``adb_i/{lambda,beta}``.

  Attributes:
    iterations: Newton–Schulz iterations per block (official 16, 4, 4, 4).
    alpha, lambda_init, beta_init, impl, precision: see ``methods.scm.ScmConfig``.
    steps: injected dense Newton–Schulz steps (``DenseSteps``; None = XLA ops).
  """
  iterations: Sequence[int] = (16, 4, 4, 4)
  alpha: float = 0.002
  lambda_init: float = 1.0
  beta_init: float = 0.5
  impl: str = "stencil"
  precision: str = "highest"
  steps: Any = None

  @nn.compact
  def __call__(self, s: jax.Array, f: jax.Array, ties: str = "first", trace: bool = False
               ) -> tuple[jax.Array, jax.Array, dict[str, list[jax.Array]]]:
    params = {f"adb_{i}": AdbParameters(self.lambda_init, self.beta_init, name=f"adb_{i}")()
              for i in range(len(self.iterations))}
    return run_adbs(s, f, params, self.iterations, self.alpha, impl=self.impl,
                    precision=self.precision, steps=self.steps, ties=ties, trace=trace)


class ScmVisionTransformer(VisionTransformer):
  """TS-CAM's ViT (``head='conv3x3'``) with SCM's ADBs (parameters under ``scm``).

  ``model.apply(variables, images, ...)`` is the ViT's forward (inference drops the
  ADBs). ``diffuse=True`` runs the training graph instead: logits = GAP(S^K) and
  ``aux['adb'] = {'S0', 'F0'}`` (+ every block's ``S``, ``F``, ``F_hat``, ``P`` with
  ``trace``). The ADBs run in (at least) float32.

  Attributes (besides the ViT's): ``adb_iterations``, ``adb_alpha``, ``adb_lambda_init``,
  ``adb_beta_init``, ``adb_impl``, ``adb_precision`` (``ActivationDiffusion``), and the
  injected ``newton_schulz_steps`` (``DenseSteps``; None = XLA ops).
  """
  head: str = "conv3x3"
  adb_iterations: Sequence[int] = (16, 4, 4, 4)
  adb_alpha: float = 0.002
  adb_lambda_init: float = 1.0
  adb_beta_init: float = 0.5
  adb_impl: str = "stencil"
  adb_precision: str = "highest"
  newton_schulz_steps: Any = None

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False, capture: Sequence[str] = (),
               attn_delta: jax.Array | None = None, stop_grad_attn_input: bool = False,
               diffuse: bool = False, ties: str = "first", trace: bool = False
               ) -> tuple[jax.Array, dict[str, Any]]:
    # The ADBs also run at init, so that their parameters exist.
    diffuse = diffuse or self.is_initializing()
    wanted = tuple(capture) + (("attn_cls", "semantic") if diffuse else ())
    logits, aux = super().__call__(images, train=train, capture=tuple(dict.fromkeys(wanted)),
                                   attn_delta=attn_delta,
                                   stop_grad_attn_input=stop_grad_attn_input)
    if not diffuse:
      return logits, aux
    dtype = jnp.promote_types(aux["semantic"].dtype, jnp.float32)
    semantic, attn_cls = aux["semantic"].astype(dtype), aux["attn_cls"].astype(dtype)
    f0 = attention_activation(attn_cls, ties)
    s, _, out = ActivationDiffusion(
        tuple(self.adb_iterations), self.adb_alpha, self.adb_lambda_init, self.adb_beta_init,
        self.adb_impl, self.adb_precision, self.newton_schulz_steps, name="scm")(
            semantic, f0, ties, trace)
    out.update(S0=semantic, F0=f0)
    aux = {k: v for k, v in aux.items() if k in capture}
    aux["adb"] = out
    return jnp.mean(s, axis=(1, 2)), aux
