"""Several kinds of maps from the same forward/backward passes: ``compute``.

Passes over the batch (each at most one forward + one backward):

* plain autograd (``gar``, ``lrp``'s gradients, ``agcam_nostopgrad``): full (N, N)
  attention gradients when GAR or LRP is asked for, else class rows only; with LRP its
  forward also records the layer inputs/outputs the relevance propagation reads;
* stop-gradient (``agcam``): the official AG-CAM backward, class rows only;
* forward-only kinds (``rollout``, ``rollout_half``, ``tscam``, ``scm``) ride on the
  first pass (the forward values do not depend on the stop-gradient); alone they
  cost one forward. ``sat`` (SAT models only, which have no other kind) is one forward.

The targets (None: argmax) are fixed by the first pass and reused by the others.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Names are imported from the submodules: the package re-binds ``rollout``, ``agcam`` and
# ``cam`` to the functions of the same name.
from wsol_jax.maps import attention, budget, lrp, postprocess, semantic
from wsol_jax.maps.agcam import agcam_from_rows
from wsol_jax.maps.cam import cam
from wsol_jax.maps.rollout import attention_rollout, gradient_rollout
from wsol_jax.models.resnet import ResNet
from wsol_jax.models.rfga import RfgaResNet
from wsol_jax.models.sat import SatVisionTransformer
from wsol_jax.models.vit import VisionTransformer


@dataclasses.dataclass(frozen=True)
class Kind:
  """How a kind of map is computed and post-processed.

  Attributes:
    family: ``'vit'`` or ``'resnet'``.
    upsample: the official interpolation to the image size (``'bilinear'``/``'bicubic'``).
    backward: None, ``'plain'`` or ``'stop_gradient'``.
    grad_rows: gradient rows needed (``'all'`` or ``'cls'``) when ``backward`` is set.
    capture: model captures the kind reads.
  """
  family: str
  upsample: str
  backward: str | None = None
  grad_rows: str | None = None
  capture: tuple[str, ...] = ()


KINDS: dict[str, Kind] = {
    # ViTOL (inference.py: cv2 INTER_CUBIC) — rollout, GAR and LRP share its protocol.
    "rollout": Kind("vit", "bicubic", capture=("attn",)),
    "gar": Kind("vit", "bicubic", "plain", "all", ("attn",)),
    "lrp": Kind("vit", "bicubic", "plain", "all"),
    # AG-CAM (localization.py: bilinear, align_corners=False), its rollout baseline too.
    "agcam": Kind("vit", "bilinear", "stop_gradient", "cls", ("scores_cls",)),
    "agcam_nostopgrad": Kind("vit", "bilinear", "plain", "cls", ("scores_cls",)),
    "rollout_half": Kind("vit", "bilinear", capture=("attn",)),
    # TS-CAM / SCM (cv2 INTER_LINEAR); conv3x3-head models only.
    "tscam": Kind("vit", "bilinear", capture=("attn_cls", "semantic")),
    "scm": Kind("vit", "bilinear", capture=("attn_cls", "semantic")),
    # wsolevaluation CAM (inference.py: cv2 INTER_CUBIC).
    "cam": Kind("resnet", "bicubic"),
    # SAT (evaluator.py normalize_map: cv2.resize default INTER_LINEAR); SAT models only.
    "sat": Kind("vit", "bilinear"),
}


# The kind a model explains by default when no method says otherwise (explain CLI).
DEFAULT_KINDS = {"vit": "gar", "resnet": "cam"}


def _family(model: nn.Module) -> str | None:
  if isinstance(model, (ResNet, RfgaResNet)):
    return "resnet"
  return "vit" if isinstance(model, VisionTransformer) else None


def default_kind(model: nn.Module) -> str:
  """The default map kind of a model (``DEFAULT_KINDS`` by family)."""
  family = _family(model)
  if family is None:
    raise ValueError(f"no map kind for a {type(model).__name__}")
  return DEFAULT_KINDS[family]


def upsample_method(kind: str) -> str:
  """The official interpolation of a kind's maps: ``'bilinear'`` or ``'bicubic'``."""
  return _kind(kind).upsample


def to_image_size(raw: jax.Array, size: Sequence[int], kind: str) -> jax.Array:
  """Official post-processing of raw (..., h, w) maps: resize to ``size`` (H, W), then min-max."""
  return postprocess.resize_and_normalize(raw, size, upsample_method(kind))


def _kind(name: str) -> Kind:
  if name not in KINDS:
    raise ValueError(f"unknown map kind {name!r}; valid: {sorted(KINDS)}")
  return KINDS[name]


def _check_kinds(model: nn.Module, kinds: Sequence[str]) -> tuple[str, ...]:
  kinds = tuple(kinds)
  if not kinds:
    raise ValueError("kinds is empty")
  family = _family(model)
  for name in kinds:
    want = _kind(name).family
    if want != family:
      raise ValueError(f"map kind {name!r} needs a {want} model, got {type(model).__name__}")
    if (name == "sat") != isinstance(model, SatVisionTransformer):
      raise ValueError(f"map kind {name!r} " + ("needs a SAT model" if name == "sat" else
                                                "does not apply to a SAT model (its kind: 'sat')"))
    if name in ("tscam", "scm") and model.head != "conv3x3":
      raise ValueError(f"map kind {name!r} needs the conv3x3 (TS-CAM/SCM) head, got head={model.head!r}")
  return kinds


# Kinds computed in float32 whatever the model's compute dtype: LRP's ε-rules divide by
# sums of small relevances, and in bfloat16 its maps lose their ranking (Spearman ρ ≈ 0.1
# against float32 on a tiny DeiT), while the other kinds keep ρ ≥ 0.95
# (tests/test_accelerator_path.py).
FLOAT32_KINDS = ("lrp",)


def _vit_maps(model: nn.Module, variables: Any, images: jax.Array, kinds: tuple[str, ...],
              targets: jax.Array | None, start_layer: int, lrp_start_layer: int
              ) -> tuple[dict[str, jax.Array], jax.Array]:
  specs = {k: KINDS[k] for k in kinds}
  plain_rows = None
  if any(s.backward == "plain" and s.grad_rows == "all" for s in specs.values()):
    plain_rows = "all"
  elif any(s.backward == "plain" for s in specs.values()):
    plain_rows = "cls"
  stopped = any(s.backward == "stop_gradient" for s in specs.values())
  forward_capture = tuple(sorted({c for s in specs.values() if s.backward != "stop_gradient"
                                  for c in s.capture}))
  stopped_capture = tuple(sorted({c for s in specs.values() if s.backward == "stop_gradient"
                                  for c in s.capture}))

  plain = stop = record = None
  if "lrp" in specs:  # the plain pass's forward also records the layers LRP propagates through
    plain, record = lrp.recorded_pass(model, variables, images, targets, forward_capture)
    targets = plain.targets
  elif plain_rows is not None or not stopped:
    plain = attention.attention_pass(model, variables, images, targets, capture=forward_capture,
                                     grad_rows=plain_rows)
    targets = plain.targets
  if stopped:
    capture = stopped_capture if plain is not None else tuple(sorted(set(stopped_capture + forward_capture)))
    stop = attention.attention_pass(model, variables, images, targets, capture=capture,
                                    grad_rows="cls", stop_gradient=True)
  first = plain if plain is not None else stop
  aux = dict(first.aux)
  if stop is not None:
    aux = {**stop.aux, **aux}
  targets, logits = first.targets, first.logits

  h, w, _ = attention.num_tokens(model, images)
  out: dict[str, jax.Array] = {}
  for name in kinds:
    if name == "rollout":
      row = attention_rollout(aux["attn"], start_layer, "rows")
    elif name == "rollout_half":
      row = attention_rollout(aux["attn"], start_layer, "half")
    elif name == "gar":
      row = gradient_rollout(aux["attn"], plain.grads, start_layer)
    elif name == "agcam":
      row = agcam_from_rows(aux["scores_cls"], stop.grads[:, :, :, 0])
    elif name == "agcam_nostopgrad":
      row = agcam_from_rows(aux["scores_cls"], plain.grads[:, :, :, 0])
    elif name in ("tscam", "scm"):
      fn = semantic.tscam_maps if name == "tscam" else semantic.scm_maps
      out[name] = semantic.select_class(fn(aux["attn_cls"], aux["semantic"]), targets)
      continue
    elif name == "lrp":
      relevance = lrp.relevance_from_record(model, variables, record, targets, logits.shape[-1],
                                            lrp_start_layer)
      out[name] = lrp.attribution_from_relevance(plain.grads, relevance, (h, w), lrp_start_layer)
      continue
    else:  # pragma: no cover - KINDS and this dispatch are kept in sync
      raise AssertionError(name)
    out[name] = attention.to_grid(row, h, w)
  return out, logits


def compute(model: nn.Module, variables: Any, images: jax.Array, kinds: Sequence[str],
            targets: jax.Array | None = None, *, start_layer: int = 0, lrp_start_layer: int = 0
            ) -> tuple[dict[str, jax.Array], jax.Array]:
  """Raw maps of several kinds from shared passes over one batch (jit-compatible).

  Args:
    model: a ``VisionTransformer`` (kinds ``rollout``, ``rollout_half``, ``gar``,
      ``lrp``, ``agcam``, ``agcam_nostopgrad``, and ``tscam``/``scm`` with the conv3x3
      head), a ``SatVisionTransformer`` (kind ``sat``, class-agnostic) or a ``ResNet``
      with an ``fc`` head or an ``RfgaResNet`` (kind ``cam``).
    variables: the model's variables.
    images: (B, H, W, 3) normalised NHWC images.
    kinds: map kinds to return (see ``KINDS``).
    targets: (B,) int classes for the class-specific kinds; None = argmax.
    start_layer: first rolled-out layer of ``rollout``/``rollout_half``/``gar``.
    lrp_start_layer: LRP's ``start_layer``.

  Returns:
    ({kind: (B, h, w) raw maps on the feature grid}, logits (B, C)).
  """
  kinds = _check_kinds(model, kinds)
  if set(kinds) & set(FLOAT32_KINDS) and getattr(model, "dtype", jnp.float32) != jnp.float32:
    model = model.clone(dtype=jnp.float32)
    variables = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, variables)
  if kinds == ("cam",):
    maps, logits = cam(model, variables, images, targets)
    return {"cam": maps}, logits
  if "cam" in kinds:
    raise ValueError("kind 'cam' cannot be combined with other kinds")
  if kinds == ("sat",):  # class-agnostic: the spatial token's map, whatever the targets
    logits, aux = model.apply(variables, images)
    return {"sat": aux["sat_map"]}, logits
  return _vit_maps(model, variables, images, kinds, targets, start_layer, lrp_start_layer)


def jitted(model: nn.Module, kinds: Sequence[str], *, memory_mb: float = 0, **options: Any
           ) -> Callable[..., tuple[dict[str, jax.Array], jax.Array]]:
  """``compute`` for a fixed model and kinds, jit-compiled: ``fn(variables, images, targets=None)``.

  ``memory_mb``: the per-device memory budget (``budget.Budgeted``; 0 = automatic): a batch
  that does not fit is computed in chunks.
  """
  kinds = _check_kinds(model, kinds)

  def fn(variables: Any, images: jax.Array, targets: jax.Array | None = None):
    return compute(model, variables, images, kinds, targets, **options)

  return budget.Budgeted(fn, memory_mb)
