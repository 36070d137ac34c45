"""Layers whose exact PyTorch semantics the official code relies on.

* ``BatchNorm``: PyTorch's ``nn.BatchNorm{1,2}d`` — batch statistics with the
  biased variance for normalisation, the *unbiased* variance for the running
  estimate, momentum 0.1 (Flax's ``nn.BatchNorm`` uses the biased one).
* ``torch_uniform_init``: PyTorch's default ``Conv``/``Linear`` initialisation,
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias (kaiming-uniform, a=sqrt(5)).
* ``trunc_normal_init``: timm's ``trunc_normal_(std=.02)`` (truncated at ±2 absolute).

And two convolutions written as one matmul each (measured in ``benchmarks/README.md``), with
``nn.Conv``'s parameters (HWIO ``kernel``, ``bias``):

* ``PatchConv``: a p×p convolution with stride p (ViT patch embedding);
* ``Conv3x3``: a 3×3 convolution, stride 1, zero padding 1 (im2col).

Their product goes through an injectable ``dot_general`` (``lax.dot_general`` by
default), as ``nn.Dense``'s does.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def torch_uniform_init(fan_in: int):
  """PyTorch default init for conv/linear weights and biases: U(±1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def trunc_normal_init(std: float = 0.02):
  """timm ``trunc_normal_(std)``: N(0, std) truncated to [-2, 2] (absolute bounds)."""

  def init(key, shape, dtype=jnp.float32):
    lo, hi = -2.0 / std, 2.0 / std
    return std * jax.random.truncated_normal(key, lo, hi, shape, dtype)

  return init


def kaiming_normal_fan_out(key, shape, dtype=jnp.float32):
  """``nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu')`` for HWIO kernels."""
  receptive = math.prod(shape[:-2])
  fan_out = receptive * shape[-1]
  return jnp.sqrt(2.0 / fan_out) * jax.random.normal(key, shape, dtype)


class BatchNorm(nn.Module):
  """BatchNorm over the last (feature) axis with PyTorch's statistics.

  Attributes:
    momentum: PyTorch momentum (weight of the new batch statistics), 0.1 by default.
    epsilon: added to the variance, 1e-5 as in PyTorch.
    zero_init: initialise the scale to zero (timm's zero-init of the last BN in a block).
    reduce_axes: axes to reduce over; default: every axis except the last.

  Parameters are ``scale``/``bias``; running statistics live in the ``batch_stats``
  collection as ``mean``/``var`` (PyTorch ``running_mean``/``running_var``).
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  zero_init: bool = False
  reduce_axes: Sequence[int] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.zeros if self.zero_init else nn.initializers.ones,
                       (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    if train:
      axes = tuple(range(x.ndim - 1)) if self.reduce_axes is None else tuple(self.reduce_axes)
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axis=axes)
      var = jnp.mean(jnp.square(xf - mean), axis=axes)
      if not self.is_initializing():
        n = math.prod(x.shape[a] for a in axes)
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
        ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    inv = jax.lax.rsqrt(var + self.epsilon) * scale
    return ((x - mean.astype(x.dtype)) * inv.astype(x.dtype) + bias.astype(x.dtype)).astype(x.dtype)


def matmul(x: jax.Array, w: jax.Array, dot_general: Callable[..., jax.Array] | None = None
           ) -> jax.Array:
  """``x (..., K) @ w (K, M)`` through ``dot_general`` (default ``lax.dot_general``)."""
  dot = lax.dot_general if dot_general is None else dot_general
  return dot(x, w, (((x.ndim - 1,), (0,)), ((), ())))


class PatchConv(nn.Module):
  """(B, H, W, C) -> (B, H/p, W/p, features): p×p conv with stride p, as one matmul over patches."""
  features: int
  patch_size: int
  dtype: Any = jnp.float32
  dot_general: Callable[..., jax.Array] | None = None

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    p = self.patch_size
    b, hh, ww, c = images.shape
    fan_in = c * p * p
    kernel = self.param("kernel", torch_uniform_init(fan_in), (p, p, c, self.features), jnp.float32)
    bias = self.param("bias", torch_uniform_init(fan_in), (self.features,), jnp.float32)
    x = images.astype(self.dtype).reshape(b, hh // p, p, ww // p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hh // p, ww // p, p * p * c)
    w = kernel.reshape(p * p * c, self.features).astype(self.dtype)
    return matmul(x, w, self.dot_general) + bias.astype(self.dtype)


class Conv3x3(nn.Module):
  """(B, h, w, C) -> (B, h, w, features): 3×3 conv, stride 1, zero padding 1, via im2col."""
  features: int
  kernel_init: Callable[..., jax.Array]
  bias_init: Callable[..., jax.Array]
  dtype: Any = jnp.float32
  dot_general: Callable[..., jax.Array] | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    kernel = self.param("kernel", self.kernel_init, (3, 3, c, self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    x = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    # Column (i·3 + j)·C + c holds x[y + i - 1, x + j - 1, c]: the HWIO kernel's row order.
    cols = jnp.concatenate([x[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
    w = kernel.reshape(9 * c, self.features).astype(self.dtype)
    return matmul(cols, w, self.dot_general) + bias.astype(self.dtype)
