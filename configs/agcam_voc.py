"""AG-CAM (ViT-B/16) on PASCAL VOC 2012 (the paper's Table 2): fine-tune the public ViT-B/16
classifier on the single-class images of VOC train, then explain it on VOC val.

  python -m weights_convert.timm --model vit_base_patch16_224 \
      --hf-repo timm/vit_base_patch16_224.orig_in21k_ft_in1k --out ckpt/vit_b16
  python -m wsol_jax.train --config configs/agcam_voc.py --workdir runs/agcam_voc \
      --config.model.pretrained=ckpt/vit_b16 --config.data.voc.root=VOCdevkit/VOC2012

Data (``wsol_jax.data.voc``, AG-CAM's ``Datasets/PascalVOC.py``): the VOCdevkit folder of
VOCtrainval_11-May-2012.tar (variant ``tfds``: TFDS ``voc/2012`` in ``data.data_dir``); 20
classes; only images with exactly one class (a class counts when it has a non-difficult
instance); ground truth = the boxes of every instance of that class, difficult and truncated
included (``data.voc.*`` changes each rule). Train on VOC train, test on VOC val (the
paper's evaluation set; 2012's test set has no annotations); no selection split, the last
checkpoint is evaluated.
The paper releases no VOC checkpoint and its fine-tuning details are in a supplementary we do
not have: the recipe is ``agcam_cub.py``'s (ViT-B/16 in21k → in1k with a new 20-way head; SGD
momentum 0.9, lr 0.01, 1-epoch warm-up, cosine, 20 epochs, batch 64, clip 1; mean = std = 0.5;
train resize 256 → crop 224 → flip, test resize 224).
Evaluation: the AG-CAM protocol (pixel accuracy / IoU / dice / precision / recall of the union
of the external-contour boxes of map > 0.5 against the union of the class's GT boxes, over
correctly classified images; ABPC) plus MaxBoxAccV2 and the center-Gaussian baseline.
Variants: ``rollout`` / ``lrp`` (the paper's baselines as the evaluated map), ``nostopgrad``,
``tfds``, ``bf16`` (bfloat16 compute with float32 parameters; GPUs/TPUs).
Paper (Table 2, VOC 2012 val; pixel acc / IoU / dice / precision / recall): AG-CAM 0.7521 /
0.5335 / 0.6646 / 0.8167 / 0.6647; Rollout 0.5592 / 0.1645 / 0.2431 / 0.5802 / 0.2115;
LRP 0.5750 / 0.1574 / 0.2348 / 0.7651 / 0.1716. Not yet reproduced here (no VOC run).
"""
import pathlib

from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/agcam_voc.py:a,b``).
VARIANTS = ('rollout', 'lrp', 'nostopgrad', 'tfds', 'bf16')


def _agcam_cub():
  return config_lib.load_module(pathlib.Path(__file__).with_name("agcam_cub.py"))


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = _agcam_cub().get_config(",".join(sorted(variants & {"rollout", "lrp", "nostopgrad", "bf16"})))
  if "tfds" in variants:
    c.data.name = "voc_tfds"   # TFDS voc/2012: 'train', 'validation' (= VOC val)
    c.data.test_split = "validation"
  else:
    c.data.name = "voc"
    c.data.voc.root = "VOCdevkit/VOC2012"
    c.data.test_split = "val"
  c.data.train_split = "train"
  c.data.val_split = ""
  c.model.num_classes = 20
  c.eval.select_split = ""     # no held-out split: evaluate the last checkpoint
  return c
