"""Reading checkpoint files into ``{name: numpy array}`` without unpickling arbitrary objects.

* ``.safetensors``: safetensors' numpy reader.
* ``.pth`` / ``.pth.tar`` / ``.pt`` / ``.bin``: ``torch.load(weights_only=True)`` (torch is the
  ``convert`` extra); the state dict may be nested under ``model``, ``state_dict`` or
  ``model_state``, and a DataParallel ``module.`` prefix is removed.
* ``.npz``: big_vision / AugReg ViT checkpoints (renamed to timm keys by the mapping).
"""
from __future__ import annotations

import os
import pathlib
import zipfile
from typing import Any

import numpy as np

NESTING_KEYS = ("state_dict", "model", "model_state", "model_state_dict")


def detect_format(path: pathlib.Path) -> str:
  name = path.name.lower()
  if name.endswith(".safetensors"):
    return "safetensors"
  if name.endswith((".pth", ".pth.tar", ".pt", ".bin", ".ckpt", ".tar")):
    return "torch"
  if name.endswith(".npz"):
    return "npz"
  raise ValueError(f"{path}: unknown checkpoint format (expected .safetensors, .pth, .pth.tar "
                   f"or a big_vision .npz)")


def _to_numpy(value: Any, key: str) -> np.ndarray:
  try:
    import torch  # only reached for torch files
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      if value.dtype in (torch.bfloat16, torch.float16):
        value = value.float()
      return value.numpy()
  except ImportError:
    pass
  if isinstance(value, np.ndarray):
    return value
  raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")


def unwrap_state_dict(obj: Any, path: os.PathLike | str) -> dict[str, Any]:
  """Finds the tensor dict inside a training checkpoint (nested under model/state_dict)."""
  depth = 0
  while isinstance(obj, dict) and depth < 3:
    nested = [k for k in NESTING_KEYS if isinstance(obj.get(k), dict)]
    if not nested:
      break
    obj = obj[nested[0]]
    depth += 1
  if not isinstance(obj, dict) or not obj:
    raise ValueError(f"{path}: no state dict found (looked under {list(NESTING_KEYS)})")
  keys = list(obj)
  if all(k.startswith("module.") for k in keys):
    obj = {k[len("module."):]: v for k, v in obj.items()}
  return obj


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch: pip install 'wsol_jax[convert]' "
                      "(or convert the checkpoint to .safetensors elsewhere)") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle, zip and torch errors all mean "not a readable checkpoint"
    raise ValueError(f"{path}: cannot read the PyTorch checkpoint safely "
                     f"(torch.load weights_only=True): {type(e).__name__}: {e}") from e
  state = unwrap_state_dict(obj, path)
  return {k: _to_numpy(v, k) for k, v in state.items()
          if not (isinstance(v, (int, float, str)) or v is None)}


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  try:
    return dict(load_file(str(path)))
  except Exception as e:  # SafetensorError, OSError on truncation
    raise ValueError(f"{path}: not a readable safetensors file "
                     f"({type(e).__name__}: {e})") from e


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: np.asarray(data[k]) for k in data.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e


def read_checkpoint(path: os.PathLike | str) -> tuple[dict[str, np.ndarray], str]:
  """Returns ``(state_dict, format)`` for a checkpoint file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint file not found: {path}")
  fmt = detect_format(path)
  reader = {"safetensors": _read_safetensors, "torch": _read_torch, "npz": _read_npz}[fmt]
  state = reader(path)
  if not state:
    raise ValueError(f"{path}: the checkpoint holds no tensors")
  return state, fmt
