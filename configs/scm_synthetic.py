"""SCM on the synthetic WSOL dataset: a tiny DeiT trained from scratch on a CPU (the README demo).

  python -m wsol_jax.train --config configs/scm_synthetic.py --workdir /tmp/wsol-demo

Generates the dataset on first use, trains ~10 minutes on 2 CPU cores, selects on the
val split, evaluates the test split and prints MaxBoxAccV2 next to the center-Gaussian
baseline; overlays go to WORKDIR/overlays. Variant ``smoke``: a few steps (tests).
"""
import importlib.util
import pathlib

from wsol_jax import config_lib


def _tscam_synthetic():
  path = pathlib.Path(__file__).with_name("tscam_synthetic.py")
  spec = importlib.util.spec_from_file_location("_tscam_synthetic", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  c = _tscam_synthetic().get_config(arg)
  c.method = "scm"
  return c
