"""RFGA (ResNet-50) on ILSVRC-2012 — the MoANA code's ILSVRC recipe (the paper has no ILSVRC run).

  python -m weights_convert.timm --model resnet50 --hf-repo timm/resnet50.tv_in1k --out ckpt/r50
  python -m wsol_jax.train --config configs/rfga_ilsvrc.py:moana --workdir runs/rfga_ilsvrc \
      --config.model.pretrained=ckpt/r50

Recipe source: ku-milab/MoANA @ 4820e1f ``Localization/configs/config.json`` + ``main.py``
(the RFGA authors' journal extension, the only official code): resize 256 → random crop
224 + flip, test resize 224; batch 256, 20 epochs; SGD momentum 0.9, weight decay 5e-4;
backbone lr 0.002, the module and the class-map head ×10 (0.02; MoANA's
``layer4[3]``/``classifier`` groups); MultiStepLR milestones [5, 10, 15], γ 0.1; output
stride 8 (28×28 maps at 224). The 1000-class fc of the checkpoint is dropped (the head is
a new 1×1 conv). Selection: the last epoch (``eval.select_split=''``; ``val`` =
ImageNetV2 is available).
Default module = the paper's reading (second sigmoid); variant ``moana`` = MoANA's (no
second sigmoid), i.e. the MoANA configuration end to end. MoANA evaluates with its own
CAM normalisation (65th percentile) and IoU {30, 50, 70}; wsol_jax reports the
wsolevaluation metrics and the RFGA protocol (min-max CAMs). Published ImageNet numbers
for RFGA/MoANA are not in the RFGA paper.
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/rfga_ilsvrc.py:a,b``).
VARIANTS = ('moana', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  config_lib.set_ilsvrc_data(c, variants)
  c.method = "rfga"
  c.seed = 1  # MoANA main.py SEED
  c.model.name = "resnet50"
  c.model.kwargs = dict(output_stride=8)
  c.rfga.update(dict(second_sigmoid="moana" not in variants, calibration="residual",
                     hw_conv="full", kernel_size=3))
  c.data.image_size, c.data.resize_size = 224, 256
  c.optimizer.update(dict(name="sgd", lr=0.002, momentum=0.9, nesterov=False, weight_decay=5e-4))
  c.optimizer.lr_multipliers = dict(new_decay=10.0)
  c.schedule.update(dict(name="multistep", steps=(5, 10, 15), factor=0.1))
  c.training.update(dict(batch_size=256, num_epochs=20))
  c.eval.update(dict(select_split="", batch_size=64))
  config_lib.set_precision(c, variants)
  return c
