"""How a run executes its models: implementations injected into them, compiler options, and
a record of what ran.

``Runtime()`` is plain XLA on every backend (the default of every method and CLI). The
entry points (train, evaluate, explain, launch) get theirs from ``wsol_jax.cpu.install``,
which fills it in on XLA:CPU; nothing else in the package knows about the CPU wing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

PLAIN_CHOICES = {
    "cpu_tuning": "off",
    "attention": "xla",          # ViT attention core
    "newton_schulz": "xla",      # SCM's dense Newton–Schulz steps
    "dots": "xla",               # which runtime XLA gives the train step's dots
    "weight_gradients": "autodiff",  # VJP of the ViT's matmuls
    "block_boundary": "identity",    # ViT residual stream between blocks
    "host_malloc": "default",
}


COMPILATION_CACHE_ENV = "WSOL_JAX_COMPILATION_CACHE"


def enable_compilation_cache(path: str = "") -> str:
  """Points JAX's persistent compilation cache at ``path`` (or ``$WSOL_JAX_COMPILATION_CACHE``);
  returns the directory used ('' = off). Every compiled program that took more than a second
  is kept, so a re-run, a resume or another process of a pod loads it instead of compiling."""
  import os

  import jax
  path = path or os.environ.get(COMPILATION_CACHE_ENV, "")
  if path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return path


@dataclasses.dataclass(frozen=True)
class Runtime:
  """Attributes:
    model_impls: model field name (``models.registry.INJECTED``) -> implementation, passed
      to every model class that has that field.
    compiler_options: ``jax.jit(..., compiler_options=...)`` of the train step.
    choices: what runs, by part (``PLAIN_CHOICES``' keys), for the run's records.
  """
  model_impls: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  compiler_options: Mapping[str, str] = dataclasses.field(default_factory=dict)
  choices: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(PLAIN_CHOICES))

  def model_overrides(self, model_cls: type) -> dict[str, Any]:
    """The injected implementations that ``model_cls`` (a Flax module class) accepts."""
    names = {f.name for f in dataclasses.fields(model_cls)}
    return {k: v for k, v in self.model_impls.items() if k in names}

  def describe(self, dtype: Any = "float32") -> dict[str, Any]:
    """What ran, for the log, ``config.json`` and ``results.json``: backend, device count,
    compute dtype and the choices."""
    import jax
    import numpy as np
    return {"backend": jax.default_backend(), "device_count": jax.device_count(),
            "process_count": jax.process_count(), "dtype": str(np.dtype(dtype)),
            **dict(self.choices)}

  def summary(self, dtype: Any = "float32") -> str:
    """``describe`` as one line for the console."""
    return "runtime: " + ", ".join(f"{k}={v}" for k, v in self.describe(dtype).items())
