"""CAM (wsolevaluation ResNet-50) on ILSVRC-2012 — wsolevaluation's defaults.

  python -m weights_convert.timm --model resnet50 --hf-repo timm/resnet50.tv_in1k --out ckpt/r50
  python -m wsol_jax.train --config configs/cam_ilsvrc.py --workdir runs/cam_ilsvrc \
      --config.model.pretrained=ckpt/r50

Recipe of ``cam_cub.py`` (output stride 16, GAP + fc, 256 → 224, SGD Nesterov 0.9, wd 1e-4,
lr 0.01 ×10 on layer4/fc, ×0.1 every 30 epochs, 40 epochs, batch 64, last checkpoint) on
the wsolevaluation ILSVRC metadata (val = ImageNetV2, test = ILSVRC val); the ImageNet fc
of the checkpoint is kept (wsolevaluation loads it for ILSVRC). Variant ``large``: output
stride 8. The wsolevaluation paper's tuned ImageNet values differ (README/appendix).
Published: ResNet-50 CAM on ImageNet, MaxBoxAccV2 63.7 (wsolevaluation; quoted in
ViTOL's Table 1).
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
import importlib.util
import pathlib

from wsol_jax import config_lib


def _cam_cub():
  path = pathlib.Path(__file__).with_name("cam_cub.py")
  spec = importlib.util.spec_from_file_location("_cam_cub", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

# The variants ``get_config(arg)`` accepts (``--config configs/cam_ilsvrc.py:a,b``).
VARIANTS = ('large', 'rfga', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  config_lib.set_ilsvrc_data(c, variants)
  _cam_cub().wsolevaluation_recipe(c, variants)
  c.eval.protocols = ()
  config_lib.set_precision(c, variants)
  return c
