"""Experiment configs: Python files with ``get_config(arg)`` built on ``base_config()``.

``base_config()`` is the schema: every valid key with its default (the official
code's behaviour). Config files start from it and change values; the loader
rejects keys the schema does not know — in the file or in ``--config.a.b=v``
overrides — naming the key and the closest valid ones, before any compute.
A few subtrees are free-form (``model.kwargs``, ``optimizer.lr_multipliers``).
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import pathlib
import sys
from typing import TYPE_CHECKING, Any, Sequence

import ml_collections

from wsol_jax.data import config as data_config

if TYPE_CHECKING:
  from etils import epath

FREE_FORM = ("model.kwargs", "optimizer.lr_multipliers")


def _cd(**kwargs: Any) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(kwargs)


def base_config() -> ml_collections.ConfigDict:
  """All valid keys with their defaults (TS-CAM's official recipe where one applies)."""
  c = ml_collections.ConfigDict()
  c.method = "tscam"
  c.seed = 26
  c.model = _cd(
      name="deit_small_patch16_224",
      num_classes=200,      # 0 = from the data (wsol_jax.data.derive)
      pretrained="",        # a weights_convert directory ("" = random init)
      kwargs=_cd(),         # model constructor overrides, e.g. depth=4
      drop_path_rate=None,  # None = the method's (TS-CAM/SCM 0.1, others 0.0)
      mean=(),              # () = the registered model's normalisation
      std=(),
      # Numerics: compute dtype (float32 = the official code's | bfloat16: softmax, norms'
      # statistics, logits, loss, SCM's diffusion and the maps' post-processing stay float32)
      # and parameter dtype (the optimizer state follows it).
      dtype="float32",
      param_dtype="float32",
      fused_attn=True,      # ViTs: jax.nn.dot_product_attention where no probability is read
  )
  c.data = data_config.default_data_config()   # fields documented in wsol_jax.data.config
  c.data.name = "cub"
  c.optimizer = _cd(
      name="adamw",         # adamw | sgd
      lr=5e-5,
      b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.05,    # timm rule: no decay on 1-D params, pos_embed, cls_token
      momentum=0.9,
      nesterov=False,
      lr_multipliers=_cd(), # parameter label -> lr factor (e.g. new_decay=10.0)
      grad_clip_norm=0.0,   # 0 = off (the official code does not clip)
  )
  c.schedule = _cd(
      name="step",          # step (TS-CAM: ×factor at every epoch divisible by a step) | multistep | constant | cosine
      steps=(30,),
      factor=0.1,
      warmup_epochs=0,
  )
  c.training = _cd(
      batch_size=128,
      num_epochs=60,
      total_steps=0,        # > 0 overrides num_epochs; -1 = from the data (wsol_jax.data.derive)
      log_every_steps=20,
  )
  c.eval = _cd(
      every_epochs=1,
      every_steps=0,        # > 0: also evaluate every N steps
      select_split="val",   # checkpoint selection ("" = keep the last; "test" only to reproduce a paper's protocol)
      select_metric="maxboxacc_v2",
      test_at_end=True,
      batch_size=64,
      map_kind="",          # "" = the method's default map
      upsample="",          # "" = the method's official interpolation
      cam_curve_interval=0.01,
      iou_thresholds=(30, 50, 70),
      multi_contour=True,   # MaxBoxAccV2 boxes (all contours)
      protocols=(),         # the papers' own protocols (() = the method's): tscam scm vitol agcam rfga
      cam_threshold=0.1,    # 'tscam': fixed CAM_THR (CUB 0.1, ILSVRC 0.12)
      fixed_threshold=0.0,  # 'vitol': the fixed score-map threshold (DeiT-S GAR 0.165, ...)
      pixel_threshold=0.5,  # 'agcam': binarisation threshold of the pixel metrics
      abpc=True,            # 'agcam': also run the ABPC perturbation test (11 forwards/batch)
      rfga_iou_thresholds=(50, 60, 70, 80, 90),  # 'rfga': IoU thresholds of the RFGA tables
      sat_thresholds=(0.3, 0.35, 0.4, 0.45),     # 'sat': map thresholds (train.py's default list)
      num_overlays=6,
      max_examples=0,       # > 0: evaluate on a prefix (debugging)
      # Per-device memory budget of the maps (MiB; 0 = automatic: half the accelerator's, or
      # of the host's share on CPU): a batch whose compiled maps need more runs in chunks.
      maps_memory_mb=0.0,
  )
  c.checkpoint = _cd(every_steps=500, keep=3)
  # Device mesh: axes 'data' (batch) and optionally 'fsdp' (batch and parameters, sharded
  # by wsol_jax.sharding.PARAM_RULES); shape () = all devices on the first axis, -1 = the
  # rest; e.g. shape=(2, 4), axes=('data', 'fsdp'). Default: replicated data parallelism.
  c.mesh = _cd(shape=(), axes=("data",))
  # jax.profiler trace of training steps start_step+1 .. start_step+num_steps into
  # WORKDIR/profile (TensorBoard's profile plugin / Perfetto read it); num_steps=0: off.
  c.profile = _cd(start_step=0, num_steps=0)
  # Persistent XLA compilation cache ('' = $WSOL_JAX_COMPILATION_CACHE, else off): a re-run
  # or resume loads its compiled steps instead of compiling again; on a pod, a path every
  # host sees (a gs:// bucket or NFS).
  c.compilation_cache_dir = ""
  # XLA:CPU tuning (wsol_jax.cpu): auto = on for the CPU backend, off on GPU/TPU | on | off
  c.cpu_tuning = "auto"
  # Method sections: each method's config dataclass holds its defaults (scm, padl, rfga, agcam).
  from wsol_jax import methods  # here: the methods import JAX, the rest of this module does not
  for name, defaults in methods.config_sections().items():
    c[name] = _cd(**defaults)
  return c


class ConfigError(ValueError):
  """A config key or value is invalid (raised before any compute)."""


def dir_path(value: str | os.PathLike, flag: str) -> "epath.Path":
  """``value`` as a directory path (``wsol_jax.files.as_path``): a ``gs://`` URL, or an
  absolute filesystem path; another URL scheme is a ``ConfigError`` naming ``flag``."""
  from wsol_jax import files
  try:
    return files.as_path(value)
  except files.UnsupportedPathError as e:
    raise ConfigError(f"{flag} {value}: {e}") from None


def _paths(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in cfg.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and path not in FREE_FORM:
      out.update(_paths(value, path + "."))
    else:
      out[path] = value
  return out


def _unknown(path: str, valid: Sequence[str], what: str) -> ConfigError:
  close = difflib.get_close_matches(path, valid, n=3, cutoff=0.6)
  if not close:  # also compare the last component within the same section
    section, _, leaf = path.rpartition(".")
    same = [v for v in valid if v.rpartition(".")[0] == section]
    close = [f"{section}.{c}" if section else c for c in difflib.get_close_matches(
        leaf, [v.rpartition(".")[2] for v in same], n=3, cutoff=0.5)]
  hint = f"; did you mean {', '.join(close)}?" if close else ""
  return ConfigError(f"unknown config key {path!r} {what}{hint}")


def validate(cfg: ml_collections.ConfigDict, source: str = "in the config") -> None:
  """Raises ``ConfigError`` for keys the schema does not have."""
  schema = _paths(base_config())
  for path in _paths(cfg):
    if path not in schema and not any(path.startswith(f + ".") for f in FREE_FORM):
      raise _unknown(path, list(schema), source)


def _coerce(path: str, text: str, current: Any) -> Any:
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if current is None or isinstance(current, str):
    return text if not isinstance(value, str) and isinstance(current, str) else value
  if isinstance(current, bool):
    if isinstance(value, bool):
      return value
    if str(text).lower() in ("true", "false", "1", "0"):
      return str(text).lower() in ("true", "1")
  elif isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
    return value
  elif isinstance(current, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  elif isinstance(current, (tuple, list)):
    if isinstance(value, (tuple, list)):
      return tuple(value)
    if isinstance(value, (int, float)):
      return (value,)
  raise ConfigError(f"--config.{path}={text}: expected {type(current).__name__} "
                    f"(current value {current!r})")


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies ``a.b=value`` overrides in place (values parsed as Python literals)."""
  for item in overrides:
    path, sep, text = item.partition("=")
    if not sep:
      raise ConfigError(f"override {item!r} must look like --config.a.b=value")
    paths = _paths(cfg)
    free = next((f for f in FREE_FORM if path.startswith(f + ".")), None)
    if path not in paths and free is None:
      raise _unknown(path, list(paths), "(command-line override)")
    parent = cfg
    *parents, leaf = path.split(".")
    for p in parents:
      parent = parent[p]
    current = parent.get(leaf, None) if free else paths[path]
    value = _coerce(path, text, current)
    with parent.ignore_type():
      parent[leaf] = value


def load_module(path: str | pathlib.Path) -> Any:
  """The Python module of a config file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file not found: {path}")
  module_name = f"_wsol_config_{path.stem}"
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[module_name] = module
  module_spec.loader.exec_module(module)
  return module


def load_file(spec: str) -> ml_collections.ConfigDict:
  """Loads ``path.py[:arg]`` and returns ``get_config(arg)`` (``arg``'s variants checked
  against the file's ``VARIANTS``)."""
  path_str, _, arg = spec.partition(":")
  path = pathlib.Path(path_str)
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config(arg) function")
  check_variants(path, arg, getattr(module, "VARIANTS", None))
  cfg = module.get_config(arg or None) if arg or _takes_arg(module.get_config) else module.get_config()
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
  return cfg


def _takes_arg(fn) -> bool:
  import inspect
  return len(inspect.signature(fn).parameters) > 0


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads, validates and overrides a config; raises ``ConfigError`` on any unknown key."""
  cfg = load_file(spec)
  validate(cfg, f"in {spec.partition(':')[0]}")
  apply_overrides(cfg, overrides)
  return cfg


# Keys a resumed run may change: how long it trains, how it evaluates, logs and checkpoints,
# where it reads from and how it runs. Any other difference (model, method, data, optimizer,
# batch size, schedule, seed) would make the restored state mean something else.
RESUMABLE = ("training.num_epochs", "training.total_steps", "training.log_every_steps", "eval.",
             "checkpoint.", "cpu_tuning", "mesh.", "model.dtype", "model.fused_attn", "profile.", "compilation_cache_dir",
             "model.pretrained", "data.data_dir",
             "data.download", "data.worker_count", "data.worker_buffer_size",
             "data.read_threads", "data.read_prefetch", "data.val_split", "data.test_split",
             "data.use_masks", "data.max_consecutive_unreadable", "data.metadata.image_root",
             "data.metadata.val_image_root", "data.metadata.mask_root",
             "data.metadata.metadata_dir", "data.metadata.clip_boxes", "data.synthetic.generate",
             "data.voc.root", "data.voc.clip_boxes")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """``'a.b' -> leaf`` of a nested dict (free-form sections too; tuples as lists)."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flat(value, path + "."))
    else:
      out[path] = list(value) if isinstance(value, tuple) else value
  return out


def config_changes(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """``key -> (stored value, new value)`` for every key of ``new`` whose value differs (JSON-like
  dicts; a key only ``stored`` has, e.g. one an older schema had, is not a change)."""
  a, b = _flat(stored), _flat(new)
  missing = object()
  return {k: (a.get(k), b[k]) for k in sorted(b) if a.get(k, missing) != b[k]}


def resumable(key: str) -> bool:
  """Whether a resumed run may change ``key`` (``RESUMABLE``)."""
  return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def parse_arg(arg: str | None) -> set[str]:
  """``get_config`` argument ``'a,b'`` -> ``{'a', 'b'}`` (config variants)."""
  return {a.strip() for a in (arg or "").split(",") if a.strip()}


def check_variants(path: pathlib.Path, arg: str, declared: Sequence[str] | None) -> None:
  """Raises ``ConfigError`` unless every variant of ``arg`` is one the config file declares
  (its ``VARIANTS``); a mistyped variant must not run the config without it."""
  asked = parse_arg(arg)
  if not asked:
    return
  if declared is None:
    raise ConfigError(f"{path}:{arg}: the config declares no variants (a VARIANTS tuple)")
  unknown = sorted(asked - set(declared))
  if unknown:
    close = {u: difflib.get_close_matches(u, declared, n=1) for u in unknown}
    hints = [f"{u!r} (did you mean {c[0]!r}?)" if c else repr(u) for u, c in close.items()]
    raise ConfigError(f"{path}: unknown variant{'s' if len(unknown) > 1 else ''} "
                      f"{', '.join(hints)}; valid: {', '.join(declared)}")


def set_precision(c: ml_collections.ConfigDict, variants: set[str]) -> None:
  """The ``bf16`` variant of a paper config: bfloat16 compute with float32 parameters and
  optimizer state (softmax, norms' statistics, logits, loss, SCM's diffusion, BatchNorm
  statistics and the maps' post-processing stay float32; LRP maps run in float32)."""
  if "bf16" in variants:
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"


def set_cub_data(c: ml_collections.ConfigDict, variants: set[str]) -> None:
  """CUB-200-2011: wsolevaluation metadata (val = CUBV2), or TFDS with a held-out 10% of train."""
  if "tfds" in variants:
    c.data.name = "cub"   # TFDS caltech_birds2011 (no CUBV2): hold out 10% of train
    c.data.train_split = "train[:90%]"
    c.data.val_split = "train[90%:]"
  else:
    c.data.name = "wsol_metadata"
    c.data.metadata.dataset = "CUB"
    c.data.metadata.metadata_dir = "wsolevaluation/metadata/CUB"
    c.data.metadata.image_root = "dataset/CUB"
    c.data.val_split = "val"  # CUBV2
  c.model.num_classes = 200
  if "paper" in variants:
    c.eval.select_split = "test"  # the official code selects on the test set


def set_ilsvrc_data(c: ml_collections.ConfigDict, variants: set[str]) -> None:
  """ILSVRC-2012 through wsolevaluation metadata (val = ImageNetV2, test = ILSVRC val)."""
  c.data.name = "wsol_metadata"
  c.data.metadata.dataset = "ILSVRC"
  c.data.metadata.metadata_dir = "wsolevaluation/metadata/ILSVRC"
  c.data.metadata.image_root = "dataset/ILSVRC"
  c.data.val_split = "val"
  c.model.num_classes = 1000
  if "paper" in variants:
    c.eval.select_split = "test"


def set_synthetic_data(c: ml_collections.ConfigDict, image_size: int = 64,
                       difficulty: str = "easy") -> None:
  """The wsol_jax synthetic dataset (generated on first use), at a CPU-sized resolution.

  ``difficulty`` picks a preset of ``wsol_jax.data.config.SYNTHETIC_PRESETS``: 'easy'
  (upright, untextured shapes, little clutter) is what a tiny CNN learns on a CPU in
  minutes, 'easy_light' (light objects on dark backgrounds) what a tiny ViT does;
  'default' and 'hard' add rotation, stretch, textures and clutter.
  """
  if difficulty not in data_config.SYNTHETIC_PRESETS:
    raise ValueError(f"difficulty must be one of {sorted(data_config.SYNTHETIC_PRESETS)}")
  c.data.synthetic.update(data_config.SYNTHETIC_PRESETS[difficulty])
  c.data.name = "synthetic"
  c.data.image_size = image_size
  c.data.resize_size = image_size + image_size // 8
  c.data.val_split = "val"
  c.model.num_classes = int(c.data.synthetic.num_classes)


# ---- CPU demos on the synthetic dataset (``configs/*_synthetic.py``) ----------------------------

def set_synthetic_vit(c: ml_collections.ConfigDict) -> None:
  """A tiny DeiT trained from scratch at 64×64 (8×8 patches of 8 px) on the synthetic data.

  Demo choices, not a paper recipe: width 128, depth 4, AdamW 1e-3 (wd 0.05), cosine
  schedule after a 1-epoch warm-up, batch 32, 6 epochs, no stochastic depth. Data: the
  'easy_light' preset (light objects on dark backgrounds): on 'easy', where object and
  background take any colour, this ViT's loss stays at chance for ~900 steps.
  """
  set_synthetic_data(c, image_size=64, difficulty="easy_light")
  c.model.name = "deit_tiny_patch16_224"
  c.model.kwargs = dict(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4)
  c.model.drop_path_rate = 0.0
  c.optimizer.update(dict(name="adamw", lr=1e-3, weight_decay=0.05))
  c.schedule.update(dict(name="cosine", warmup_epochs=1))
  c.training.update(dict(batch_size=32, num_epochs=6, log_every_steps=10))
  c.eval.update(dict(every_epochs=2, batch_size=64, num_overlays=6))
  c.checkpoint.every_steps = 500


def set_synthetic_resnet(c: ml_collections.ConfigDict) -> None:
  """A narrow ResNet (one Bottleneck per stage, width 16, output stride 8) from scratch at 64×64.

  Demo choices, not a paper recipe: SGD momentum 0.9, lr 0.05 with a cosine schedule after
  a 1-epoch warm-up, batch 64, 8×8 class maps.
  """
  set_synthetic_data(c, image_size=64)
  c.model.name = "resnet50"
  c.model.kwargs = dict(layers=(1, 1, 1, 1), output_stride=8, width=16)
  c.optimizer.update(dict(name="sgd", lr=0.05, momentum=0.9, nesterov=False, weight_decay=1e-4))
  c.schedule.update(dict(name="cosine", warmup_epochs=1))
  c.training.update(dict(batch_size=64, num_epochs=10, log_every_steps=10))
  c.eval.update(dict(every_epochs=2, batch_size=64, num_overlays=6))
  c.checkpoint.every_steps = 500


def set_synthetic_smoke(c: ml_collections.ConfigDict) -> None:
  """The ``smoke`` variant of a synthetic config: a few steps on a tiny generated dataset (tests)."""
  c.data.synthetic.update(dict(num_train=64, num_val=16, num_test=16, min_size=64, max_size=80))
  c.data.image_size, c.data.resize_size = 32, 36
  if "patch_size" in c.model.kwargs:
    c.model.kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
  else:
    c.model.kwargs.width = 8
  c.training.update(dict(batch_size=16, num_epochs=2, log_every_steps=2))
  c.eval.update(dict(every_epochs=1, batch_size=16, num_overlays=2))
  c.checkpoint.every_steps = 2
