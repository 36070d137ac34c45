"""Checks shared by the end-to-end CLI tests of the ResNet methods (CAM, RFGA)."""
import pathlib

import jax
import numpy as np
from PIL import Image

from wsol_jax import config_lib, methods
from wsol_jax.models import load_pretrained


def check_export_and_overlays(workdir: pathlib.Path, method_name: str) -> dict:
  """The export names the method and a selected step; two RGB overlays. Returns the variables."""
  variables, meta = load_pretrained(workdir / "export")
  assert meta["method"] == method_name and meta["selected_step"] >= 1
  assert len(list((workdir / "overlays").glob("*.png"))) == 2
  for png in (workdir / "overlays").glob("*.png"):
    with Image.open(png) as im:
      assert im.mode == "RGB"
  return variables


def check_batch_stats_trained(config_spec: str, data_dir: pathlib.Path, variables: dict) -> None:
  """BatchNorm running statistics moved during training and the eval forward uses them."""
  cfg = config_lib.load(config_spec)
  cfg.data.data_dir = str(data_dir)
  method = methods.get_method(cfg)
  fresh = method.init(jax.random.key(int(cfg.seed)))
  moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                                 variables["batch_stats"], fresh["batch_stats"])
  assert min(jax.tree_util.tree_leaves(moved)) > 0
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  predict = jax.jit(method.predict)
  reset = {**variables, "batch_stats": fresh["batch_stats"]}
  assert np.abs(np.asarray(predict(variables, images)) - np.asarray(predict(reset, images))).max() > 1e-4
