"""Generates ``sat.npz``: outputs of the OFFICIAL SAT code (wpy1999/SAT) on a tiny random model.

    pip install --no-deps --target DEPS timm==0.4.12 torchvision==0.28.0   # beside torch 2.13 CPU
    PYTHONPATH=DEPS python tests/golden_sat/make_golden.py --repo /path/to/SAT/.git \
        --out tests/golden_sat/sat.npz

(timm 0.4.12: the DeiT-era release whose ``timm.models.layers``/``registry`` layout the
official imports name; the network uses only its ``trunc_normal_``, ``DropPath``, ``to_2tuple``.)

A development tool (torch + timm), never imported by the package or its tests. The official
``Model/SAT.py`` and the ``utils`` files it imports are read with ``git show COMMIT:path`` from
a checkout of github.com/wpy1999/SAT and executed unmodified from a temporary directory.
Run-time adaptations (no official line edited):

* ``skimage`` and ``matplotlib.pyplot`` are empty stub modules: ``Model/SAT.py`` and
  ``utils/func.py`` import them but the network never calls them.
* the ``torchvision::nms``/``qnms`` op schemas are defined before ``timm`` imports the CPU
  torchvision wheel (its compiled ops are not loaded; ``timm.data`` only needs the module).

Model: ``SAT`` built with the arguments of the official ``deit_sat_*`` factories (qkv_bias,
LayerNorm eps 1e-6) except the sizes: image 56, patch 4 (the 14×14 grid the official
forward hard-codes), D = 16, depth 12 (the official ``cur_depth >= 9`` masks blocks 9–11
and ``mask_all[-3:]`` averages them), 2 heads, mlp_ratio 2, 5 classes, no dropout or drop
path. Official init under ``torch.manual_seed(0)``, then perturbed with
``torch.Generator().manual_seed(1000)`` so that attention is far from uniform: every bias
+= 0.02·N(0,1), every LayerNorm weight += 0.1·N(0,1), the q and k rows of every qkv weight
×20, cls/loc token and loc_embed += 0.5·N(0,1). The saved weights ARE the final weights.

Outputs (float32; ``*_f64``: the same pipeline in float64, a measure of float32 rounding;
``f64diff/<torch key>``: max |float32 − float64| of that gradient):
``images`` (B,3,56,56) NCHW, ``labels`` (B,), ``w/<torch key>`` every state-dict tensor,
``logits`` (B,C) and ``ba`` / ``norm`` (B,) of ``forward(phase='train')``; ``map`` (B,14,14)
of ``forward(phase='test')``; ``loss_cls``, ``loss_ba`` = |mean(ba) − area_thr|,
``loss_norm`` = mean(norm) and ``loss`` = their sum, as the official CUB ``train.py``
(area_thr 0.25); ``g/<torch key>``: d loss / d every trainable parameter.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import types

import numpy as np

COMMIT = "702290d7a29197920e115581cfc02ebe1ed528c8"
FILES = ("Model/SAT.py", "utils/__init__.py", "utils/cfgs.py", "utils/accuracy.py", "utils/func.py")
AREA_THR = 0.25  # official train.py (CUB) default


def official_module(repo: str, commit: str, tmp: pathlib.Path):
  for name in FILES:
    target = tmp / name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
      text = subprocess.run(["git", "--git-dir", repo, "show", f"{commit}:{name}"], check=True,
                            capture_output=True, text=True).stdout
    except subprocess.CalledProcessError:
      if name.endswith("__init__.py"):
        text = ""  # namespace package in the official repo
      else:
        raise
    target.write_text(text)
  (tmp / "Model" / "__init__.py").touch()
  for stub in ("skimage", "skimage.measure", "matplotlib", "matplotlib.pyplot"):
    sys.modules.setdefault(stub, types.ModuleType(stub))
  sys.modules["skimage"].measure = sys.modules["skimage.measure"]
  sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
  sys.path.insert(0, str(tmp))
  import Model.SAT as sat  # noqa: E402
  return sat


def define_torchvision_ops():
  """The CPU torchvision wheel registers fake kernels for ops its compiled library defines."""
  import torch
  lib = torch.library.Library("torchvision", "DEF")
  lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  return lib  # the definitions live as long as this object


def build(sat, seed: int):
  import functools
  import torch
  torch.manual_seed(seed)
  model = sat.SAT(img_size=56, patch_size=4, embed_dim=16, depth=12, num_heads=2, mlp_ratio=2,
                  qkv_bias=True, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
                  num_classes=5, drop_rate=0.0, drop_path_rate=0.0)
  gen = torch.Generator().manual_seed(seed + 1000)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if not p.requires_grad:
        continue
      if name in ("cls_token", "loc_token", "loc_embed"):
        p += 0.5 * torch.randn(p.shape, generator=gen)
      elif name.endswith("bias"):
        p += 0.02 * torch.randn(p.shape, generator=gen)
      elif "norm" in name and name.endswith("weight"):
        p += 0.1 * torch.randn(p.shape, generator=gen)
      elif name.endswith("attn.qkv.weight"):
        p[: 2 * p.shape[1]] *= 20.0
  return model


def run(model, images, labels, dtype):
  import torch
  model = model.to(dtype)
  x = torch.as_tensor(images, dtype=dtype)
  y = torch.as_tensor(labels)
  model.train()
  model.zero_grad()
  logits, ba, norm = model(x, phase="train")
  loss_cls = torch.nn.CrossEntropyLoss()(logits, y)
  ba_mean, norm_mean = ba.mean(0), norm.mean(0)
  loss_ba = torch.abs(ba_mean - AREA_THR).mean(0)
  loss = loss_cls + loss_ba + norm_mean
  loss.backward()
  out = {"logits": logits, "ba": ba, "norm": norm, "loss_cls": loss_cls, "loss_ba": loss_ba,
         "loss_norm": norm_mean, "loss": loss}
  out = {k: v.detach().numpy() for k, v in out.items()}
  for name, p in model.named_parameters():
    if p.requires_grad:
      out[f"g/{name}"] = p.grad.detach().numpy().copy()
  model.eval()
  with torch.no_grad():
    logits_eval, cam = model(x, phase="test")
  out["logits_eval"] = logits_eval.numpy()
  out["map"] = cam.numpy()
  return out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repo", required=True, help="git dir of github.com/wpy1999/SAT")
  parser.add_argument("--commit", default=COMMIT)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).with_name("sat.npz")))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  import copy
  ops = define_torchvision_ops()  # noqa: F841
  import timm
  import torch
  torch.set_num_threads(1)
  torch.use_deterministic_algorithms(True)
  with tempfile.TemporaryDirectory() as tmp:
    sat = official_module(args.repo, args.commit, pathlib.Path(tmp))
    model = build(sat, args.seed)
  rng = np.random.RandomState(args.seed + 1)
  images = rng.standard_normal((4, 3, 56, 56)).astype(np.float32)
  labels = rng.randint(0, 5, size=4).astype(np.int64)
  state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  out32 = run(copy.deepcopy(model), images, labels, torch.float32)
  out64 = run(copy.deepcopy(model), images, labels, torch.float64)
  arrays = {"images": images, "labels": labels.astype(np.int32)}
  arrays.update({f"w/{k}": v.astype(np.float32) for k, v in state.items()})
  for k, v in out32.items():
    arrays[k] = np.asarray(v, np.float32)
    if k.startswith("g/"):  # full float64 gradients would triple the file: their distance only
      arrays[f"f64diff/{k[2:]}"] = np.float64(np.max(np.abs(out64[k] - v)))
    else:
      arrays[f"{k}_f64"] = np.asarray(out64[k], np.float64)
  arrays["provenance"] = np.asarray(json.dumps({
      "repo": "wpy1999/SAT", "commit": args.commit, "seed": args.seed, "area_thr": AREA_THR,
      "torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__}))
  np.savez_compressed(args.out, **arrays)
  diffs = {k: float(np.max(np.abs(out32[k] - out64[k]))) for k in out32}
  grads = max(v for k, v in diffs.items() if k.startswith("g/"))
  print(json.dumps({"out": args.out, "max grad |f32-f64|": f"{grads:.2e}",
                    "max|f32-f64|": {k: f"{v:.2e}" for k, v in diffs.items()
                                     if not k.startswith("g/")}}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
