"""WSOL methods as plug-ins (see ``wsol_jax.methods.base``): ``get_method(config)``."""
from __future__ import annotations

import difflib
import importlib

import ml_collections

from wsol_jax.methods.base import Method

# name -> "module:Class" (imported lazily so a method's extra code loads only when used).
METHODS = {
    "tscam": "wsol_jax.methods.tscam:TsCam",
    "scm": "wsol_jax.methods.scm:Scm",
    "vitol": "wsol_jax.methods.vitol:Vitol",
    "agcam": "wsol_jax.methods.agcam:AgCam",
    "rfga": "wsol_jax.methods.rfga:Rfga",
    "cam": "wsol_jax.methods.cam:Cam",
}


def method_class(name: str) -> type[Method]:
  if name not in METHODS:
    close = difflib.get_close_matches(name, METHODS, n=3)
    raise ValueError(f"unknown method {name!r}" + (f"; did you mean {close}?" if close else "")
                     + f" (known: {sorted(METHODS)})")
  module, cls = METHODS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def get_method(config: ml_collections.ConfigDict) -> Method:
  """Builds the method named ``config.method`` for this config."""
  return method_class(config.method)(config)


__all__ = ["METHODS", "Method", "get_method", "method_class"]
