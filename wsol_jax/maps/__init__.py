"""Localization maps: pure, batched, jit-compilable functions.

``tscam_maps``/``scm_maps`` take the class-token attention rows (L, B, H, N) and the
conv head's semantic maps (B, h, w, C) and return (B, C, h, w) maps for every class.
"""
from wsol_jax.maps.postprocess import minmax, normalize_images, resize, resize_and_normalize
from wsol_jax.maps.semantic import attention_sum, scm_maps, tscam_maps

__all__ = ["attention_sum", "minmax", "normalize_images", "resize", "resize_and_normalize",
           "scm_maps", "tscam_maps"]
