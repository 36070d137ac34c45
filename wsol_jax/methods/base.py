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
papers' own evaluation protocols run at the final test / by the evaluate CLI).
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from wsol_jax.models import pretrained as pretrained_lib
from wsol_jax.models import registry

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
  flat_fresh = traverse_util.flatten_dict(fresh)
  flat_loaded = traverse_util.flatten_dict(loaded)
  backbone_roots = {k[1] for k in flat_loaded if len(k) > 1}
  problems, kept = [], []
  out = dict(flat_fresh)
  for key, value in flat_loaded.items():
    if key not in flat_fresh:
      if len(key) > 1 and key[1] in head_names:
        continue  # e.g. a linear head when the method uses a conv head
      problems.append(f"unexpected {'/'.join(key)} {tuple(np.shape(value))}")
    elif tuple(np.shape(value)) != tuple(flat_fresh[key].shape):
      if len(key) > 1 and key[1] in head_names:
        kept.append("/".join(key))
        continue
      problems.append(f"shape {'/'.join(key)}: checkpoint {tuple(np.shape(value))} vs model "
                      f"{tuple(flat_fresh[key].shape)}")
    else:
      out[key] = jnp.asarray(value, flat_fresh[key].dtype)
  for key in flat_fresh:
    if key not in flat_loaded:
      if len(key) > 1 and (key[1] in head_names or key[1] not in backbone_roots):
        kept.append("/".join(key))
      else:
        problems.append(f"missing {'/'.join(key)} {tuple(flat_fresh[key].shape)}")
  if problems:
    raise ValueError(f"pretrained weights in {pretrained_dir} do not fit the model:\n  "
                     + "\n  ".join(problems))
  return traverse_util.unflatten_dict(out), sorted(set(kept))


class Method(abc.ABC):
  """Base class of the method plug-ins (see the module docstring)."""
  name: ClassVar[str]
  map_kinds: ClassVar[tuple[str, ...]]
  maps_all_classes: ClassVar[bool] = False
  upsample: ClassVar[str] = "bilinear"
  eval_protocols: ClassVar[tuple[str, ...]] = ()  # see wsol_jax.eval.protocols

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model_name = config.model.name
    spec = registry.get_spec(self.model_name)
    self.mean = tuple(config.model.get("mean", None) or spec.mean)
    self.std = tuple(config.model.get("std", None) or spec.std)
    self.image_size = int(config.data.image_size)
    self.num_classes = int(config.model.num_classes)
    self.model = self.build_model()

  @abc.abstractmethod
  def build_model(self) -> nn.Module:
    """The backbone module for this method and config."""

  def model_kwargs(self, **method_kwargs: Any) -> dict[str, Any]:
    """Constructor arguments: the method's requirements, then ``config.model.kwargs`` overrides."""
    kwargs = dict(method_kwargs)
    kwargs["num_classes"] = self.num_classes
    kwargs.update(dict(self.config.model.get("kwargs", None) or {}))
    return registry.model_kwargs(self.model_name, **kwargs)

  def init_fresh(self, rng: jax.Array) -> Variables:
    """Variables of a fresh (randomly initialised) model, without pretrained weights."""
    images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
    return dict(self.model.init(rng, images))

  def init(self, rng: jax.Array) -> Variables:
    variables = self.init_fresh(rng)
    path = self.config.model.get("pretrained", None)
    if path:
      variables, _ = load_into(variables, path)
    return variables

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
    """Metadata of a trained model directory (``wsol_model.json``) for explain/evaluate."""
    spec = registry.get_spec(self.model_name)
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.model_kwargs_final().items()}
    return {"model": self.model_name, "family": spec.family, "kwargs": kwargs,
            "num_classes": self.num_classes, "image_size": self.image_size,
            "mean": list(self.mean), "std": list(self.std), "method": self.name,
            "config": self.config.to_dict() if hasattr(self.config, "to_dict") else {}}

  def model_kwargs_final(self) -> dict[str, Any]:
    """The JSON-serialisable constructor arguments of ``self.model`` (architecture only:
    not ``attention_impl``, which is how this machine runs it)."""
    import dataclasses as dc
    out = {}
    for f in dc.fields(self.model):
      if f.name in ("parent", "name", "attention_impl"):
        continue
      value = getattr(self.model, f.name)
      if callable(value) or f.name == "dtype":
        continue
      out[f.name] = value
    return out


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean softmax cross-entropy (PyTorch ``CrossEntropyLoss``) and top-1 accuracy."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=1))
  acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return loss, {"loss": loss, "accuracy": acc}
