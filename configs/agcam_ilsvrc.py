"""AG-CAM (ViT-B/16) on ILSVRC-2012 — the paper's setting: the PUBLIC ViT-B/16 explained
as is, no training (the official code evaluates timm's ``vit_base_patch16_224`` with the
original jx weights, in21k → in1k, mean = std = 0.5).

  python -m weights_convert.timm --model vit_base_patch16_224 \
      --hf-repo timm/vit_base_patch16_224.orig_in21k_ft_in1k --out ckpt/vit_b16
  # (or --checkpoint jx_vit_base_p16_224-80ecf9dd.pth, the official file)
  python -m wsol_jax.evaluate --config configs/agcam_ilsvrc.py --checkpoint ckpt/vit_b16

The evaluate CLI runs the AG-CAM protocol on the test split (ILSVRC val through the
wsolevaluation metadata; resize 224, no crop): pixel accuracy / IoU / dice / precision /
recall of the union of the external-contour boxes of map > 0.5 over correctly classified
images, ABPC (11 steps, GT class), next to MaxBoxAccV2 and the center-Gaussian baseline.
Training is 0 epochs (``python -m wsol_jax.train`` then only exports and evaluates
``model.pretrained``); ``--config.training.num_epochs=N`` fine-tunes like
``agcam_cub.py``. Variants: ``rollout``/``lrp`` evaluate the paper's baselines (Attention
Rollout, Transformer-Explainability LRP) instead of AG-CAM; ``nostopgrad`` drops the
official stop-gradient (plain autograd).
Paper (Tables 1 and 4, ILSVRC val; pixel acc / IoU / dice / precision / recall):
AG-CAM 0.7341 / 0.5212 / 0.6515 / 0.8299 / 0.6276; Rollout 0.6209 / 0.3597 / 0.4893 /
0.7326 / 0.4657; LRP 0.5863 / 0.2029 / 0.3055 / 0.9110 / 0.2176. ABPC (LeRF − MoRF):
AG-CAM 0.3691 (0.5298 − 0.1607), LRP 0.3404, Rollout 0.2685.
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
import pathlib

from wsol_jax import config_lib


def _agcam_cub():
  return config_lib.load_module(pathlib.Path(__file__).with_name("agcam_cub.py"))

# The variants ``get_config(arg)`` accepts (``--config configs/agcam_ilsvrc.py:a,b``).
VARIANTS = ('rollout', 'lrp', 'nostopgrad', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = _agcam_cub().get_config(",".join(sorted(variants & {"rollout", "lrp", "nostopgrad"})))
  config_lib.set_ilsvrc_data(c, variants)
  c.model.pretrained = "ckpt/vit_b16"
  c.training.num_epochs = 0
  c.eval.select_split = ""
  c.checkpoint.every_steps = 2000
  config_lib.set_precision(c, variants)
  return c
