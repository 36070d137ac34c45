"""The method plug-in interface: everything the trainer, evaluators and CLIs need from a method.

A method is built from a config (``ml_collections.ConfigDict``) and exposes pure
functions of the variables (the trainer jit-compiles them):

* ``init(rng) -> variables``: fresh variables, with pretrained backbone weights
  loaded from ``config.model.pretrained`` (a ``weights_convert`` directory) and
  the head replaced when it does not fit.
* ``loss(variables, batch, rng) -> (loss, aux)``: training-mode loss of a batch
  ``{'image': normalised NHWC float32, 'label': int32 (B,)}``; ``aux`` is
  ``{'metrics': {name: scalar}, 'model_state': {collection: tree}}`` (e.g. updated
  BatchNorm statistics).
* ``predict(variables, images) -> logits`` (eval mode).
* ``maps(variables, images, targets=None, kind=None) -> (maps, logits)``: raw
  localization maps (not resized): ``(B, C, h, w)`` for every class when
  ``maps_all_classes`` is true, else ``(B, h, w)`` for ``targets`` (None: argmax).
* ``param_labels(params)``: a label per parameter for the optimizer
  (``'decay'``/``'no_decay'``, methods may add e.g. ``'new_decay'`` for 10× lr layers).

Class attributes: ``map_kinds`` (first = default), ``upsample`` (the official
resize of this method's maps: ``'bilinear'`` or ``'bicubic'``), ``eval_protocols`` (the
papers' own evaluation protocols run at the final test / by the evaluate CLI),
``config_section`` (the method's own config section and the dataclass holding its
defaults: the schema's section is built from it), ``drop_path_rate`` (the method's
stochastic depth when ``config.model.drop_path_rate`` is None).

A method builds its model through ``build``, which passes the run's injected
implementations and the config's numerics (``wsol_jax.runtime.Runtime.for_model``: compute
dtype, fused attention; plain XLA and float32 by default) to the model class.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from wsol_jax.models import pretrained as pretrained_lib
from wsol_jax.models import registry
from wsol_jax.runtime import Runtime

Variables = dict[str, Any]

NO_DECAY_NAMES = ("pos_embed", "cls_token")
HEAD_NAMES = ("head", "fc", "classifier")


def timm_decay_labels(params: Any) -> Any:
  """timm's rule: no weight decay on 1-D parameters (biases, norms), position embedding and class token."""
  def label(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    return "no_decay" if np.ndim(leaf) <= 1 or name in NO_DECAY_NAMES else "decay"
  return jax.tree_util.tree_map_with_path(label, params)


def load_into(fresh: Variables, pretrained_dir: str, head_names: Sequence[str] = HEAD_NAMES
              ) -> tuple[Variables, list[str]]:
  """Copies pretrained weights into ``fresh`` variables of the same architecture.

  Every pretrained tensor must exist in ``fresh`` with the same shape, except the
  classification head, which keeps its fresh initialisation when its shape differs
  (a new dataset) or it is absent. Fresh parameters the checkpoint lacks are kept
  only if they are method-specific (a top-level subtree the backbone does not have,
  e.g. SCM's ``scm``) or the head. Returns ``(variables, reinitialised_paths)``.
  """
  loaded, _ = pretrained_lib.load_pretrained(pretrained_dir)
  got, want = pretrained_lib.shapes(loaded), pretrained_lib.shapes(fresh)
  missing, unexpected, mismatched = pretrained_lib.compare(got, want)
  roots = {k.split("/")[1] for k in got if k.count("/") >= 1}

  def head(key):
    return key.count("/") >= 1 and key.split("/")[1] in head_names
  kept = [k for k, *_ in mismatched if head(k)]
  kept += [k for k, _ in missing if head(k) or k.split("/")[1] not in roots]
  unexpected = [u for u in unexpected if not head(u[0])]  # e.g. a linear head for a conv head
  missing = [m for m in missing if m[0] not in kept]
  mismatched = [m for m in mismatched if m[0] not in kept]
  if missing or unexpected or mismatched:
    raise pretrained_lib.WeightsMismatch(missing, unexpected, mismatched,
                                         what=f"pretrained weights in {pretrained_dir} do not fit "
                                         "the model")
  flat = traverse_util.flatten_dict(fresh)
  for key, value in traverse_util.flatten_dict(loaded).items():
    if "/".join(key) in want and "/".join(key) not in kept:
      flat[key] = jnp.asarray(value, flat[key].dtype)
  return traverse_util.unflatten_dict(flat), sorted(kept)


def read_section(config: ml_collections.ConfigDict, name: str, cls: type) -> Any:
  """``cls(**config[name])`` (a method's config dataclass), naming unknown keys."""
  values = dict(config[name])
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"unknown {name} config keys {unknown}; valid: {sorted(fields)}")
  return cls(**values)


def new_layer_labels(params: Any, new_roots: Sequence[str]) -> Any:
  """'new_decay' under the top-level names ``new_roots``, else 'decay' (every parameter,
  biases and BN included, is decayed, as PyTorch ``SGD(weight_decay=...)`` in the CNN methods'
  official code)."""
  def label(path, _):
    root = str(getattr(path[0], "key", path[0]))
    return "new_decay" if root in new_roots else "decay"
  return jax.tree_util.tree_map_with_path(label, params)


def train_loss(model: nn.Module, variables: Variables, batch: dict[str, jax.Array]
               ) -> tuple[jax.Array, dict[str, Any]]:
  """Cross-entropy of a train-mode forward of a BatchNorm network; the updated statistics
  as model state."""
  (logits, _), updates = model.apply(variables, batch["image"], train=True,
                                     mutable=["batch_stats"])
  loss, metrics = cross_entropy(logits, batch["label"])
  return loss, {"metrics": metrics, "model_state": {"batch_stats": updates["batch_stats"]}}


class Method(abc.ABC):
  """Base class of the method plug-ins (see the module docstring)."""
  name: ClassVar[str]
  map_kinds: ClassVar[tuple[str, ...]]
  maps_all_classes: ClassVar[bool] = False
  upsample: ClassVar[str] = "bilinear"
  eval_protocols: ClassVar[tuple[str, ...]] = ()  # see wsol_jax.eval.protocols
  config_section: ClassVar[tuple[str, type] | None] = None  # (config key, defaults dataclass)
  drop_path_rate: ClassVar[float] = 0.0
  jit_init: ClassVar[bool] = False  # compile init (a ResNet's eager init is slow)

  def __init__(self, config: ml_collections.ConfigDict, runtime: Runtime | None = None):
    self.config = config
    self.runtime = (runtime if runtime is not None else Runtime()).for_model(config.model)
    self.section_config = (read_section(config, *self.config_section)
                           if self.config_section else None)
    self.model_name = config.model.name
    spec = registry.get_spec(self.model_name)
    self.mean = tuple(config.model.mean or spec.mean)
    self.std = tuple(config.model.std or spec.std)
    self.image_size = int(config.data.image_size)
    self.num_classes = int(config.model.num_classes)
    rate = config.model.drop_path_rate
    self.drop_path = float(self.drop_path_rate if rate is None else rate)
    self.model = self.build_model()

  @abc.abstractmethod
  def build_model(self) -> nn.Module:
    """The module for this method and config (through ``build``)."""

  def model_kwargs(self, family: str, **method_kwargs: Any) -> dict[str, Any]:
    """Constructor arguments of ``config.model.name`` as ``family``: the method's
    requirements, then ``config.model.kwargs`` overrides."""
    kwargs = dict(method_kwargs)
    kwargs["num_classes"] = self.num_classes
    kwargs.update(dict(self.config.model.kwargs))
    return registry.model_kwargs(self.model_name, family, **kwargs)

  def build(self, family: str, kwargs: dict[str, Any]) -> nn.Module:
    """The ``family`` module with ``kwargs`` and the run's injected implementations."""
    cls = registry.family_class(family)
    self.family = family  # exported with the model (``export_meta``)
    return registry.build_from_kwargs(family, {**kwargs, **self.runtime.model_overrides(cls)})

  @functools.cached_property
  def _compiled_init(self):
    return jax.jit(self._init)  # one compilation per method object

  def _init(self, rng: jax.Array) -> Variables:
    images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
    return dict(self.model.init(rng, images))

  def init_fresh(self, rng: jax.Array) -> Variables:
    """Variables of a fresh (randomly initialised) model, without pretrained weights; the
    parameters in ``config.model.param_dtype`` (statistics such as BatchNorm's stay float32)."""
    variables = dict(self._compiled_init(rng) if self.jit_init else self._init(rng))
    param_dtype = jnp.dtype(self.runtime.param_dtype)
    variables["params"] = jax.tree_util.tree_map(lambda p: p.astype(param_dtype),
                                                 variables["params"])
    return variables

  def init(self, rng: jax.Array) -> Variables:
    variables = self.init_fresh(rng)
    if self.config.model.pretrained:
      variables, _ = load_into(variables, self.config.model.pretrained)
    return variables

  def check_kind(self, kind: str | None) -> str:
    """``kind`` (None: the default) validated against ``map_kinds``."""
    kind = kind or self.map_kinds[0]
    if kind not in self.map_kinds:
      raise ValueError(f"{self.name}: unknown map kind {kind!r}; valid: {list(self.map_kinds)}")
    return kind

  @abc.abstractmethod
  def loss(self, variables: Variables, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, dict[str, Any]]:
    """Training-mode loss and ``{'metrics': ..., 'model_state': ...}``."""

  def predict(self, variables: Variables, images: jax.Array) -> jax.Array:
    return self.model.apply(variables, images)[0]

  @abc.abstractmethod
  def maps(self, variables: Variables, images: jax.Array, targets: jax.Array | None = None,
           kind: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Raw localization maps and logits."""

  def param_labels(self, params: Any) -> Any:
    return timm_decay_labels(params)

  def export_meta(self) -> dict[str, Any]:
    """Metadata of a trained model directory (``wsol_model.json``) for explain/evaluate:
    the architecture only (no injected implementation), so it runs on any backend."""
    return {"model": self.model_name, "family": self.family,
            "kwargs": registry.architecture(self.model),
            "num_classes": self.num_classes, "image_size": self.image_size,
            "mean": list(self.mean), "std": list(self.std), "method": self.name,
            "config": self.config.to_dict()}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean softmax cross-entropy (PyTorch ``CrossEntropyLoss``) and top-1 accuracy."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=1))
  acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return loss, {"loss": loss, "accuracy": acc}
