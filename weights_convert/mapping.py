"""The name/transpose table from PyTorch (timm) state-dict keys to wsol_jax variables.

Each rule maps a fully matched regex over the source key to a target path
``collection/a/b/c`` (groups fill ``{1}``, ``{2}``, …) and a layout transform:

============ ==========================================================
``none``     copy as is
``linear``   Linear (out, in) -> Dense kernel (in, out): ``W.T``
``conv2d``   Conv2d OIHW -> Flax HWIO: ``W.transpose(2, 3, 1, 0)``
``conv1d``   Conv1d (out, in, k) -> Flax (k, in, out): ``W.transpose(2, 1, 0)``
``auto``     ``linear`` for 2-D, ``conv2d`` for 4-D (a head that is Linear or 3×3 conv)
``skip``     known key with no wsol_jax counterpart (``num_batches_tracked``)
============ ==========================================================
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str
  target: str
  transform: str = "none"


VIT_RULES: tuple[Rule, ...] = (
    Rule(r"cls_token", "params/cls_token"),
    Rule(r"pos_embed", "params/pos_embed"),
    Rule(r"patch_embed\.proj\.weight", "params/patch_embed/proj/kernel", "conv2d"),
    Rule(r"patch_embed\.proj\.bias", "params/patch_embed/proj/bias"),
    Rule(r"blocks\.(\d+)\.(norm[12])\.weight", "params/blocks_{1}/{2}/scale"),
    Rule(r"blocks\.(\d+)\.(norm[12])\.bias", "params/blocks_{1}/{2}/bias"),
    Rule(r"blocks\.(\d+)\.attn\.(qkv|proj)\.weight", "params/blocks_{1}/attn/{2}/kernel", "linear"),
    Rule(r"blocks\.(\d+)\.attn\.(qkv|proj)\.bias", "params/blocks_{1}/attn/{2}/bias"),
    Rule(r"blocks\.(\d+)\.mlp\.(fc[12])\.weight", "params/blocks_{1}/mlp/{2}/kernel", "linear"),
    Rule(r"blocks\.(\d+)\.mlp\.(fc[12])\.bias", "params/blocks_{1}/mlp/{2}/bias"),
    Rule(r"norm\.weight", "params/norm/scale"),
    Rule(r"norm\.bias", "params/norm/bias"),
    Rule(r"head\.weight", "params/head/kernel", "auto"),
    Rule(r"head\.bias", "params/head/bias"),
)

# SCM's Activation Diffusion Blocks: lambda (fuse._loss_rate) and beta (thred), shape [1].
SCM_RULES: tuple[Rule, ...] = (
    Rule(r"layers\.(\d+)\.fuse\._loss_rate", "params/scm/adb_{1}/lambda"),
    Rule(r"layers\.(\d+)\.thred", "params/scm/adb_{1}/beta"),
)

# SAT's spatial token and its embedding; ``weight`` is the fixed Gaussian kernel of the
# normalization loss (``requires_grad=False``, rebuilt from ``sat.kernel_*``).
SAT_RULES: tuple[Rule, ...] = (
    Rule(r"loc_token", "params/loc_token"),
    Rule(r"loc_embed", "params/loc_embed"),
    Rule(r"weight", "", "skip"),
)

_BN = (("weight", "params", "scale"), ("bias", "params", "bias"),
       ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var"))


def _bn_rules(src: str, dst: str) -> tuple[Rule, ...]:
  rules = tuple(Rule(rf"{src}\.{s}", f"{col}/{dst}/{d}") for s, col, d in _BN)
  return rules + (Rule(rf"{src}\.num_batches_tracked", "", "skip"),)


RESNET_RULES: tuple[Rule, ...] = (
    Rule(r"conv1\.weight", "params/conv1/kernel", "conv2d"),
    *_bn_rules(r"bn1", "bn1"),
    Rule(r"layer(\d)\.(\d+)\.(conv[123])\.weight", "params/layer{1}_{2}/{3}/kernel", "conv2d"),
    *_bn_rules(r"layer(\d)\.(\d+)\.(bn[123])", "layer{1}_{2}/{3}"),
    Rule(r"layer(\d)\.(\d+)\.downsample\.0\.weight", "params/layer{1}_{2}/downsample_conv/kernel",
         "conv2d"),
    *_bn_rules(r"layer(\d)\.(\d+)\.downsample\.1", "layer{1}_{2}/downsample_bn"),
    Rule(r"fc\.weight", "params/fc/kernel", "linear"),
    Rule(r"fc\.bias", "params/fc/bias"),
)


def transform(array: np.ndarray, kind: str, key: str) -> np.ndarray:
  """Applies a layout transform; raises naming ``key`` when the rank does not fit."""
  need = {"linear": 2, "conv2d": 4, "conv1d": 3}
  if kind == "auto":
    kind = {2: "linear", 4: "conv2d"}.get(array.ndim, "bad")
    if kind == "bad":
      raise ValueError(f"{key}: expected a 2-D Linear or 4-D conv weight, got shape {array.shape}")
  if kind in need and array.ndim != need[kind]:
    raise ValueError(f"{key}: a {kind} weight must be {need[kind]}-D, got shape {array.shape}")
  if kind == "linear":
    return np.ascontiguousarray(array.T)
  if kind == "conv2d":
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  if kind == "conv1d":
    return np.ascontiguousarray(array.transpose(2, 1, 0))
  return np.asarray(array)


def apply_rules(state: Mapping[str, np.ndarray], rules: Iterable[Rule]
                ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Maps source keys to target paths. Returns ``(targets, unmatched_source_keys)``."""
  compiled = [(re.compile(r.pattern), r) for r in rules]
  out: dict[str, np.ndarray] = {}
  unmatched: list[str] = []
  for key, value in state.items():
    for regex, rule in compiled:
      m = regex.fullmatch(key)
      if m is None:
        continue
      if rule.transform != "skip":
        path = rule.target.format(None, *m.groups())
        out[path] = transform(np.asarray(value), rule.transform, key)
      break
    else:
      unmatched.append(key)
  return out, unmatched


def big_vision_to_timm(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames a big_vision / AugReg ViT ``.npz`` to timm keys (q, k, v fused into qkv).

  Arrays in big_vision are already in Flax layout, so the result is put back in
  PyTorch layout and goes through the same table as every other checkpoint.
  Keys it does not know are returned unchanged (and then reported as unexpected).
  """
  src = dict(arrays)
  out: dict[str, np.ndarray] = {}

  def take(key: str) -> np.ndarray:
    return np.asarray(src.pop(key))

  def linear(prefix: str, dst: str) -> None:
    out[f"{dst}.weight"] = take(f"{prefix}/kernel").T
    out[f"{dst}.bias"] = take(f"{prefix}/bias")

  def norm(prefix: str, dst: str) -> None:
    out[f"{dst}.weight"] = take(f"{prefix}/scale")
    out[f"{dst}.bias"] = take(f"{prefix}/bias")

  out["patch_embed.proj.weight"] = take("embedding/kernel").transpose(3, 2, 0, 1)
  out["patch_embed.proj.bias"] = take("embedding/bias")
  out["cls_token"] = take("cls")
  out["pos_embed"] = take("Transformer/posembed_input/pos_embedding")
  i = 0
  while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in src:
    p, b = f"Transformer/encoderblock_{i}", f"blocks.{i}"
    norm(f"{p}/LayerNorm_0", f"{b}.norm1")
    norm(f"{p}/LayerNorm_2", f"{b}.norm2")
    att = f"{p}/MultiHeadDotProductAttention_1"
    dim = src[f"{att}/query/kernel"].shape[0]
    out[f"{b}.attn.qkv.weight"] = np.concatenate(
        [take(f"{att}/{n}/kernel").reshape(dim, dim).T for n in ("query", "key", "value")])
    out[f"{b}.attn.qkv.bias"] = np.concatenate(
        [take(f"{att}/{n}/bias").reshape(dim) for n in ("query", "key", "value")])
    out[f"{b}.attn.proj.weight"] = take(f"{att}/out/kernel").reshape(dim, dim).T
    out[f"{b}.attn.proj.bias"] = take(f"{att}/out/bias")
    linear(f"{p}/MlpBlock_3/Dense_0", f"{b}.mlp.fc1")
    linear(f"{p}/MlpBlock_3/Dense_1", f"{b}.mlp.fc2")
    i += 1
  norm("Transformer/encoder_norm", "norm")
  if "head/kernel" in src:
    linear("head", "head")
  out.update(src)
  return out
