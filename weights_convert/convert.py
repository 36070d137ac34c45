"""Conversion of a PyTorch/big_vision state dict into wsol_jax variables, with full checking."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

import wsol_jax
from wsol_jax.models import pretrained, registry
from weights_convert import mapping

# What each released-method layout adds to / changes in the backbone: (family, kwargs).
METHODS: dict[str | None, tuple[str | None, dict[str, Any]]] = {
    None: (None, {}),
    "tscam": ("vit", {"head": "conv3x3"}),
    "scm": ("scm", {"head": "conv3x3"}),  # + the ADBs' lambda/beta (params/scm/adb_i)
    "sat": ("sat", {"head": "conv3x3"}),  # + the spatial token (params/loc_token, loc_embed)
    # ViTOL's model is hila-chefer's ViT_LRP: final LayerNorm with PyTorch's default eps.
    "vitol": ("vit", {"head": "linear", "final_norm_eps": 1e-5}),
}
HEAD_PATHS = ("params/head/kernel", "params/head/bias", "params/fc/kernel", "params/fc/bias")


class ConversionError(pretrained.WeightsMismatch):
  """The checkpoint does not fit the model; the message lists every offending key."""

  def __init__(self, missing, unexpected, mismatched, hint: str = ""):
    super().__init__(missing, unexpected, mismatched, what="checkpoint does not fit the model",
                     hint=hint)


@dataclasses.dataclass
class Converted:
  variables: dict[str, Any]
  meta: dict[str, Any]


def _rules(family: str, method: str | None) -> tuple[mapping.Rule, ...]:
  if family == "resnet":
    return mapping.RESNET_RULES
  extra = {"scm": mapping.SCM_RULES, "sat": mapping.SAT_RULES}.get(method, ())
  return mapping.VIT_RULES + extra


def _jsonable(value: Any) -> Any:
  if isinstance(value, tuple):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  return value


def convert_state_dict(state: Mapping[str, np.ndarray], model_name: str, *,
                       fmt: str = "torch", method: str | None = None,
                       num_classes: int | None = None, drop_head: bool = False,
                       overrides: Mapping[str, Any] | None = None, seed: int = 0,
                       source: Mapping[str, Any] | None = None) -> Converted:
  """Maps ``state`` onto the variables of ``model_name`` and checks every key and shape.

  Args:
    state: source tensors by timm name (or big_vision names when ``fmt == 'npz'``).
    method: ``None`` (plain backbone), ``'tscam'``, ``'scm'``, ``'sat'`` or ``'vitol'``.
    num_classes: classes of the model; default: those of the checkpoint's head.
    drop_head: re-initialise a head whose shape does not fit instead of failing.
    overrides: extra model constructor arguments (e.g. ``{'depth': 4}``).
  Raises:
    ConversionError: missing, unexpected or mis-shaped keys (all listed).
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; valid: {[m for m in METHODS if m]}")
  spec = registry.get_spec(model_name)
  if method and spec.family != "vit":
    raise ValueError(f"--method {method} needs a ViT/DeiT model, not {model_name}")
  if fmt == "npz":
    if "embedding/kernel" not in state:
      raise ValueError("the .npz is not a big_vision/AugReg ViT checkpoint (no 'embedding/kernel')")
    state = mapping.big_vision_to_timm(state)
  targets, unmatched = mapping.apply_rules(state, _rules(spec.family, method))
  targets = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in targets.items()}

  family, kwargs = METHODS[method][0] or spec.family, dict(METHODS[method][1])
  kwargs.update(overrides or {})
  head_key = "params/fc/kernel" if spec.family == "resnet" else "params/head/kernel"
  if num_classes is None and head_key in targets:
    num_classes = int(targets[head_key].shape[-1])
  if num_classes is not None:
    kwargs["num_classes"] = num_classes
  kwargs = registry.model_kwargs(model_name, family, **kwargs)
  model = registry.build_from_kwargs(family, kwargs)
  image_size = int(kwargs.get("img_size", 224))
  expected = pretrained.shapes(pretrained.abstract_variables(model, image_size))
  missing, unexpected, mismatched = pretrained.compare(
      {k: tuple(v.shape) for k, v in targets.items()}, expected)
  unexpected = [(k, tuple(np.shape(state[k]))) for k in unmatched] + unexpected

  reinitialized: list[str] = []
  head_problems = {k for k, *_ in missing + mismatched if k in HEAD_PATHS}
  if drop_head and head_problems:
    fresh = traverse_util.flatten_dict(
        model.init(jax.random.key(seed), np.zeros((1, image_size, image_size, 3), np.float32)))
    for key in sorted(head_problems):
      targets[key] = np.asarray(fresh[tuple(key.split("/"))])
      reinitialized.append(key)
    missing = [m for m in missing if m[0] not in head_problems]
    mismatched = [m for m in mismatched if m[0] not in head_problems]
  if missing or unexpected or mismatched:
    hint = ""
    if head_problems and not drop_head:
      hint = (f"the classification head does not fit ({sorted(head_problems)}); "
              "pass --drop-head to re-initialise it, e.g. for a new dataset's classes")
    raise ConversionError(missing, unexpected, mismatched, hint)

  variables = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in targets.items()})
  meta = {
      "model": model_name,
      "family": family,
      "kwargs": _jsonable(kwargs),
      "num_classes": int(kwargs["num_classes"]),
      "image_size": image_size,
      "mean": list(spec.mean),
      "std": list(spec.std),
      "method": method,
      "reinitialized": reinitialized,
      "source": dict(source or {}),
      "wsol_jax_version": wsol_jax.__version__,
  }
  return Converted(variables, meta)


def sha256(path: os.PathLike | str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def convert_file(checkpoint: os.PathLike | str, model_name: str, out_dir: os.PathLike | str, *,
                 overwrite: bool = False, hf_repo: str | None = None, **kwargs: Any) -> pathlib.Path:
  """Reads ``checkpoint``, converts it and writes a wsol_jax model directory atomically."""
  from weights_convert import readers
  state, fmt = readers.read_checkpoint(checkpoint)
  source = {"file": str(pathlib.Path(checkpoint).name), "format": fmt,
            "sha256": sha256(checkpoint)}
  if hf_repo:
    source["hf_repo"] = hf_repo
  converted = convert_state_dict(state, model_name, fmt=fmt, source=source, **kwargs)
  return pretrained.save_pretrained(out_dir, converted.variables, converted.meta, overwrite=overwrite)
