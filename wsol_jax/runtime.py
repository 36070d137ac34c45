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
    "dtype": "float32",          # compute dtype of the models
    "param_dtype": "float32",    # parameters (and the optimizer state that follows them)
    "attention": "xla",          # ViT attention core
    "newton_schulz": "xla",      # SCM's dense Newton–Schulz steps
    "dots": "xla",               # which runtime XLA gives the train step's dots
    "weight_gradients": "autodiff",  # VJP of the ViT's matmuls
    "block_boundary": "identity",    # ViT residual stream between blocks
    "host_malloc": "default",
}


DTYPES = ("float32", "bfloat16")


def check_dtype(value: Any, key: str) -> str:
  """``value`` if it names a supported dtype, else a ``ConfigError`` naming ``key``."""
  if str(value) not in DTYPES:
    from wsol_jax.config_lib import ConfigError
    raise ConfigError(f"{key}={value!r}: must be one of {DTYPES}")
  return str(value)


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

  def for_model(self, model_config: Any) -> "Runtime":
    """This runtime with a config's numerics (``config.model``: ``dtype``, ``param_dtype``,
    ``fused_attn``): the compute dtype and fused attention go to the models like the
    injected implementations; an injected ``attention_fn`` (the CPU wing's kernel) keeps
    precedence over fused attention."""
    import jax.numpy as jnp
    dtype = check_dtype(model_config.dtype, "model.dtype")
    param_dtype = check_dtype(model_config.param_dtype, "model.param_dtype")
    fused = bool(model_config.fused_attn)
    choices = dict(self.choices, dtype=dtype, param_dtype=param_dtype)
    if fused and "attention_fn" not in self.model_impls:
      choices["attention"] = "fused (jax.nn.dot_product_attention) where no probability is read"
    impls = dict(self.model_impls, dtype=jnp.dtype(dtype), fused_attn=fused)
    return dataclasses.replace(self, model_impls=impls, choices=choices)

  @property
  def param_dtype(self) -> str:
    return self.choices.get("param_dtype", "float32")

  def describe(self) -> dict[str, Any]:
    """What ran, for the log, ``config.json`` and ``results.json``: backend, device and
    process count, and the choices (dtypes included)."""
    import jax
    return {"backend": jax.default_backend(), "device_count": jax.device_count(),
            "process_count": jax.process_count(), **dict(self.choices)}

  def summary(self) -> str:
    """``describe`` as one line for the console."""
    return "runtime: " + ", ".join(f"{k}={v}" for k, v in self.describe().items())
