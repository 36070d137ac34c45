"""RFGA (ResNet-50) on Stanford Dogs — the paper's recipe (Sohn et al., arXiv 2104.04952).

  python -m weights_convert.timm --model resnet50 --hf-repo timm/resnet50.tv_in1k --out ckpt/r50
  python -m wsol_jax.train --config configs/rfga_stanford_dogs.py --workdir runs/rfga_dogs \
      --config.model.pretrained=ckpt/r50

Data: TFDS ``stanford_dogs`` (120 classes; 12,000 train / 8,580 test, up to 16 boxes per
image: a box counts as found when it matches any ground-truth box). TFDS has no val split:
10% of train is held out (``train[90%:]``) like ``config_lib.set_cub_data``'s ``tfds``
variant; the paper protocol keeps the last epoch, so it only serves
``--config.eval.select_split=val``. Variant ``paper``: train on all 12,000 images as the paper.
Recipe, defaults taken from the MoANA code and the variants ``moana``, ``wo_r``, ``os16``:
see ``rfga_cub.py`` (600 → crop 448, SGD 0.9, lr 0.01 ×0.1 every 15 epochs, 60 epochs,
batch 20, wd 5e-4, output stride 8).
Paper (Table 1, Dogs, MaxBoxAcc % at δ = 0.5 / 0.6 / 0.7 / 0.8 / 0.9, Avg., mIoU):
  RFGA w/ R  84.15 / 74.69 / 60.55 / 39.14 / 13.61, 54.42, 0.8135   (top-1 cls 68.17)
  RFGA w/o R 84.81 / 74.62 / 59.22 / 36.49 / 12.10, 53.44, 0.7613   (top-1 cls 76.13)
  CAM        81.05 / 69.58 / 53.87 / 31.76 / 10.51, 49.35, 0.7884   (top-1 cls 79.35)
Ablation (Table 3, Avg. / mIoU): channel only 52.81 / 0.8001, height 30.21 / 0.5710,
width 53.13 / 0.8018, full 54.42 / 0.8135.
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
import importlib.util
import pathlib

from wsol_jax import config_lib


def _rfga_cub():
  path = pathlib.Path(__file__).with_name("rfga_cub.py")
  spec = importlib.util.spec_from_file_location("_rfga_cub", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def set_dogs_data(c, variants):
  """TFDS stanford_dogs, 10% of train held out (``paper``: all of train, no val split)."""
  c.data.name = "stanford_dogs"
  if "paper" in variants:
    c.data.train_split, c.data.val_split = "train", ""
  else:
    c.data.train_split, c.data.val_split = "train[:90%]", "train[90%:]"
  c.data.test_split = "test"
  c.model.num_classes = 120

# The variants ``get_config(arg)`` accepts (``--config configs/rfga_stanford_dogs.py:a,b``).
VARIANTS = ('moana', 'wo_r', 'os16', 'paper', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  set_dogs_data(c, variants)
  _rfga_cub().paper_recipe(c, variants)
  config_lib.set_precision(c, variants)
  return c
