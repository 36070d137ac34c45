"""Localization maps: pure, batched, jit-compilable functions.

High level (model, variables, NHWC normalised images (B, H, W, 3)) -> ``(maps, logits)``:

* ``rollout(model, variables, images)``: attention rollout, (B, h, w).
* ``gar(model, variables, images, targets=None)``: ViTOL's gradient attention rollout.
* ``agcam(model, variables, images, targets=None, stop_gradient=True)``: AG-CAM.
* ``cam(model, variables, images, targets=None)``: wsolevaluation CAM of a ResNet.
* ``compute(model, variables, images, kinds, targets=None)``: several kinds from shared
  passes -> ({kind: (B, h, w)}, logits); ``jitted(model, kinds, memory_mb=0)`` compiles it
  within a per-device memory budget (``budget.Budgeted``: chunks of the batch where needed).

Raw maps live on the feature grid (h, w); ``to_image_size(raw, (H, W), kind)`` applies the
official resize + min-max (``resize_and_normalize_host``: one map at any size, with OpenCV on
the host). ``targets=None`` explains the argmax class; gradient maps take every image's
gradient from ONE backward pass over the batch.

Note: the package attributes ``rollout``, ``agcam``, ``cam`` and ``compute`` are the
functions; import other names from the submodules (``from wsol_jax.maps.rollout import
rollout_class_row``).

Array level: ``tscam_maps``/``scm_maps`` take the class-token attention rows (L, B, H, N)
and the conv head's semantic maps (B, h, w, C) and return (B, C, h, w) maps for every
class; ``attention_rollout``, ``gradient_rollout``, ``agcam_from_rows``,
``cam_from_features`` and ``class_maps`` work on captured arrays.
"""
from wsol_jax.maps.agcam import agcam, agcam_from_rows
from wsol_jax.maps.attention import AttentionPass, attention_pass
from wsol_jax.maps.cam import cam, cam_from_features, class_maps
from wsol_jax.maps.compute import KINDS, compute, jitted, to_image_size, upsample_method
from wsol_jax.maps.postprocess import (minmax, normalize_images, resize, resize_and_normalize,
                                      resize_and_normalize_host)
from wsol_jax.maps.rollout import attention_rollout, gar, gradient_rollout, rollout
from wsol_jax.maps.semantic import attention_sum, scm_maps, select_class, tscam_maps
from wsol_jax.maps.targets import resolve_targets

__all__ = [
    "KINDS", "AttentionPass", "agcam", "agcam_from_rows", "attention_pass", "attention_rollout",
    "attention_sum", "cam", "cam_from_features", "class_maps", "compute", "gar", "gradient_rollout",
    "jitted", "minmax", "normalize_images", "resize", "resize_and_normalize",
    "resize_and_normalize_host", "resolve_targets",
    "rollout", "scm_maps", "select_class", "to_image_size", "tscam_maps", "upsample_method",
]
