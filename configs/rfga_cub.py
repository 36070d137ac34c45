"""RFGA (ResNet-50) on CUB-200-2011 — the paper's recipe (Sohn et al., arXiv 2104.04952, §4.2).

  python -m weights_convert.timm --model resnet50 --hf-repo timm/resnet50.tv_in1k --out ckpt/r50
  python -m wsol_jax.train --config configs/rfga_cub.py --workdir runs/rfga_cub \
      --config.model.pretrained=ckpt/r50

Paper: ImageNet ResNet-50 + one RFGA module after layer4 (second sigmoid, X + X⊙M) + a
1×1-conv class-map head ("similar to ACoL"; CAM = the target's class map, bicubic
upsampling as wsolevaluation); train resize 600×600 → random crop 448 + flip, test resize
448; SGD momentum 0.9, lr 0.01 ×0.1 every 15 epochs (``schedule.step``: at the start of
epochs 15, 30, 45, 60), 60 epochs, batch 20; the model of the last epoch
(``eval.select_split=''``); RFGA protocol at the end (MaxBoxAcc V1 at IoU 50…90, their
mean, mIoU) next to MaxBoxAccV2.
Not stated in the paper, taken from the MoANA code (its authors' only released code):
weight decay 5e-4 (on every parameter, as PyTorch SGD), output stride 8 (layer3 and layer4
at stride 1, no dilation: 56×56 maps at 448), full C → C h/w convs, PyTorch-default
conv1d init, kaiming-normal head, BN momentum 0.1 / eps 1e-5.

Variants (``configs/rfga_cub.py:moana,tfds``):
  ``moana``  the MoANA code's reading: no second sigmoid (M = a_c + a_h + a_w ∈ (0, 3)),
             backbone lr 0.002 and ×10 (0.02) on the module and head
             (``optimizer.lr_multipliers.new_decay``), its config.json values; the paper's
             data, epochs and schedule are kept (MoANA's 256 → 224, batch 256, 20 epochs,
             MultiStepLR [5, 10, 15] are its ILSVRC recipe: ``rfga_ilsvrc.py``).
  ``wo_r``   "RFGA w/o R": X⊙M.
  ``os16``   the wsolevaluation ResNet-50 (layer4 stride 1 only: 28×28 maps at 448).
  ``tfds``   TFDS caltech_birds2011 with 10% of train held out (default: the wsolevaluation
             layout, val = CUBV2; neither is used for selection by the paper protocol).
Paper (Table 1, CUB, MaxBoxAcc % at δ = 0.5 / 0.6 / 0.7 / 0.8 / 0.9, Avg., mIoU):
  RFGA w/ R  75.99 / 51.19 / 26.30 / 8.08 / 1.19, 32.55, 0.6970   (top-1 cls 76.65)
  RFGA w/o R 71.85 / 42.04 / 17.24 / 4.09 / 0.59, 27.16, 0.6635   (top-1 cls 79.75)
  CAM        68.54 / 39.59 / 16.00 / 3.92 / 0.54, 25.71, 0.6565   (top-1 cls 81.41)
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/rfga_cub.py:a,b``).
VARIANTS = ('moana', 'wo_r', 'os16', 'tfds', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  config_lib.set_cub_data(c, variants)
  paper_recipe(c, variants)
  config_lib.set_precision(c, variants)
  return c


def paper_recipe(c, variants):
  """The RFGA paper's fine-grained recipe (CUB, Aircraft, Dogs) and the shared variants."""
  c.method = "rfga"
  c.seed = 0
  c.model.name = "resnet50"
  c.model.kwargs = dict(output_stride=16 if "os16" in variants else 8)
  c.rfga.update(dict(second_sigmoid=True, calibration="residual", hw_conv="full", kernel_size=3))
  c.data.image_size, c.data.resize_size = 448, 600
  c.optimizer.update(dict(name="sgd", lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4))
  c.schedule.update(dict(name="step", steps=(15,), factor=0.1))
  c.training.update(dict(batch_size=20, num_epochs=60))
  c.eval.update(dict(select_split="", batch_size=32))  # the paper keeps the last epoch
  if "wo_r" in variants:
    c.rfga.calibration = "multiplicative"
  if "moana" in variants:
    c.rfga.second_sigmoid = False
    c.optimizer.lr = 0.002
    c.optimizer.lr_multipliers = dict(new_decay=10.0)
