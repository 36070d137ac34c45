"""WSOL methods as plug-ins (see ``wsol_jax.methods.base``): ``get_method(config)``."""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any

import ml_collections

from wsol_jax.methods.base import Method
from wsol_jax.runtime import Runtime

# name -> "module:Class" (imported lazily so a method's extra code loads only when used).
METHODS = {
    "tscam": "wsol_jax.methods.tscam:TsCam",
    "scm": "wsol_jax.methods.scm:Scm",
    "vitol": "wsol_jax.methods.vitol:Vitol",
    "agcam": "wsol_jax.methods.agcam:AgCam",
    "rfga": "wsol_jax.methods.rfga:Rfga",
    "cam": "wsol_jax.methods.cam:Cam",
    "sat": "wsol_jax.methods.sat:Sat",
}


def method_class(name: str) -> type[Method]:
  if name not in METHODS:
    close = difflib.get_close_matches(name, METHODS, n=3)
    raise ValueError(f"unknown method {name!r}" + (f"; did you mean {close}?" if close else "")
                     + f" (known: {sorted(METHODS)})")
  module, cls = METHODS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def get_method(config: ml_collections.ConfigDict, runtime: Runtime | None = None) -> Method:
  """Builds the method named ``config.method`` for this config (``runtime``: the run's
  injected implementations; default plain XLA)."""
  return method_class(config.method)(config, runtime)


def config_sections() -> dict[str, dict[str, Any]]:
  """Every method's own config section with its defaults (the schema's method sections)."""
  out = {}
  for name in METHODS:
    section = method_class(name).config_section
    if section is not None:
      out[section[0]] = dataclasses.asdict(section[1]())
  return out


__all__ = ["METHODS", "Method", "config_sections", "get_method", "method_class"]
