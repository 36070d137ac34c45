"""Model names -> constructors and pretrained metadata (normalisation, classes, hub repo)."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import flax.linen as nn

from wsol_jax.models.resnet import ResNet
from wsol_jax.models.rfga import RfgaResNet
from wsol_jax.models.sat import SatVisionTransformer
from wsol_jax.models.scm_adb import ScmVisionTransformer
from wsol_jax.models.vit import VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

# A family is a module class; a named model (``MODELS``) is a family with its usual kwargs.
# "rfga", "scm" and "sat" are their backbones plus a method's modules (same backbone names).
FAMILIES: dict[str, type[nn.Module]] = {"vit": VisionTransformer, "resnet": ResNet,
                                        "rfga": RfgaResNet, "scm": ScmVisionTransformer,
                                        "sat": SatVisionTransformer}
# Model fields that say how to run a model, not what it is: injected by ``runtime.Runtime``,
# never written to a model directory's metadata.
# The compute dtype and fused attention come from the run's config the same way.
INJECTED = ("attention_fn", "dot_general", "block_boundary", "newton_schulz_steps", "dtype",
            "fused_attn")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A named architecture with the metadata of its usual pretrained weights."""
  family: str
  kwargs: dict[str, Any]
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD
  hf_repo: str | None = None


def _vit(dim: int, heads: int, **kw) -> dict[str, Any]:
  return dict(embed_dim=dim, depth=12, num_heads=heads, patch_size=16, img_size=224,
              num_classes=1000, **kw)


MODELS: dict[str, ModelSpec] = {
    "deit_tiny_patch16_224": ModelSpec("vit", _vit(192, 3), hf_repo="timm/deit_tiny_patch16_224.fb_in1k"),
    "deit_small_patch16_224": ModelSpec("vit", _vit(384, 6), hf_repo="timm/deit_small_patch16_224.fb_in1k"),
    "deit_base_patch16_224": ModelSpec("vit", _vit(768, 12), hf_repo="timm/deit_base_patch16_224.fb_in1k"),
    # Original ViT-B/16 (jx weights, used by AG-CAM) and timm's AugReg weights both use 0.5/0.5.
    "vit_base_patch16_224": ModelSpec("vit", _vit(768, 12), HALF, HALF,
                                      hf_repo="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    "resnet50": ModelSpec("resnet", dict(layers=(3, 4, 6, 3), num_classes=1000),
                          hf_repo="timm/resnet50.tv_in1k"),
}


def get_spec(name: str) -> ModelSpec:
  """Returns the spec of a registered model, or raises with the closest valid names."""
  if name not in MODELS:
    close = difflib.get_close_matches(name, MODELS, n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise ValueError(f"unknown model {name!r}{hint} (known: {sorted(MODELS)})")
  return MODELS[name]


def family_class(family: str) -> type[nn.Module]:
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; valid: {sorted(FAMILIES)}")
  return FAMILIES[family]


def model_kwargs(name: str, family: str | None = None, **overrides: Any) -> dict[str, Any]:
  """Constructor arguments of ``name`` built as ``family`` (default: its own) with
  ``overrides`` applied (validated against the family's fields)."""
  spec = get_spec(name)
  family = family or spec.family
  valid = {f.name for f in dataclasses.fields(family_class(family))} - {"parent", "name"}
  unknown = sorted(set(overrides) - valid)
  if unknown:
    raise ValueError(f"unknown {family} model options {unknown}; valid: {sorted(valid)}")
  kwargs = dict(spec.kwargs)
  kwargs.update(overrides)
  return kwargs


def create_model(name: str, **overrides: Any) -> nn.Module:
  """Builds the Flax module for a registered name, e.g. ``create_model('deit_small_patch16_224', num_classes=200, head='conv3x3')``."""
  return family_class(get_spec(name).family)(**model_kwargs(name, **overrides))


def build_from_kwargs(family: str, kwargs: dict[str, Any]) -> nn.Module:
  """Rebuilds a module from a family name and constructor arguments (e.g. JSON metadata,
  whose lists become tuples)."""
  kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return family_class(family)(**kw)


def architecture(model: nn.Module) -> dict[str, Any]:
  """The JSON-serialisable constructor arguments of ``model``: what it is, not how this
  machine runs it (no ``INJECTED`` field, no callable, no dtype)."""
  out = {}
  for f in dataclasses.fields(model):
    value = getattr(model, f.name)
    if f.name in ("parent", "name", *INJECTED) or callable(value):
      continue
    out[f.name] = list(value) if isinstance(value, tuple) else value
  return out
