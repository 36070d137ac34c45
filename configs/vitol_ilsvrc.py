"""ViTOL (DeiT-S + p-ADL, GAR maps) on ILSVRC-2012 — the PAPER's recipe (no training code
was released: Saurav-31/ViTOL issue #1).

  python -m weights_convert.timm --model deit_small_patch16_224 \
      --hf-repo timm/deit_small_patch16_224.fb_in1k --out ckpt/deit_s
  python -m wsol_jax.train --config configs/vitol_ilsvrc.py --workdir runs/vitol_ilsvrc \
      --config.model.pretrained=ckpt/deit_s

Evaluate a released ViTOL checkpoint (ImageNet, DeiT-B or DeiT-S) with the official protocol:

  python -m weights_convert.timm --model deit_base_patch16_224 --method vitol \
      --checkpoint ViTOL-DeiT-B_IMAGENET_last.pth.tar --out ckpt/vitol_deit_b
  python -m wsol_jax.evaluate --config configs/vitol_ilsvrc.py:base --checkpoint ckpt/vitol_deit_b

Variants (``:base,lrp``): ``base`` = DeiT-B (default DeiT-S); ``lrp`` = LRP maps instead
of GAR. Each sets the official fixed score-map threshold of the ``'vitol'`` protocol:
DeiT-S GAR 0.165, DeiT-S LRP 0.15, DeiT-B GAR 0.208, DeiT-B LRP 0.185.

Paper (§4.3): ImageNet-pretrained DeiT trained with p-ADL (drop rate 0.75, γ 0.9 in every
block, after the MLP) for 10 epochs, lr 1e-4, weight decay 0, ×0.1 every 3 epochs (at the
start of epochs 3, 6, 9, the wsolevaluation rule); the LAST checkpoint is evaluated.
Not stated, our choices: Adam (AdamW with wd 0; β 0.9/0.999) and batch 64 (the batch
size of the official config.py); train resize 256 → random crop 224 → flip, test resize
224 (wsolevaluation transforms); no stochastic depth (hila's ViT_LRP has none).
Paper numbers (ILSVRC val; MaxBoxAccV2 / Top-1 Loc / GT-known (IoU50) / Top-1 Cls):
DeiT-S GAR 69.61 (README) / 54.74 / 71.86 / 71.84; DeiT-S LRP 68.23 (README) / 53.62 /
70.48 / 71.84; DeiT-B GAR 69.17 / 57.62 / 71.32 / 77.08; DeiT-B LRP 70.47 / 58.64 /
72.51 / 77.08 (Tables 1–2). The baseline DeiT-B (no p-ADL, no training): GAR 62.82,
rollout 45.94 (Table 3).
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
from wsol_jax import config_lib

THRESHOLDS = {("deit_small_patch16_224", "gar"): 0.165, ("deit_small_patch16_224", "lrp"): 0.15,
              ("deit_base_patch16_224", "gar"): 0.208, ("deit_base_patch16_224", "lrp"): 0.185}

# The variants ``get_config(arg)`` accepts (``--config configs/vitol_ilsvrc.py:a,b``).
VARIANTS = ('base', 'lrp', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "vitol"
  c.seed = 123  # the official config.py seed
  c.model.name = "deit_base_patch16_224" if "base" in variants else "deit_small_patch16_224"
  c.model.drop_path_rate = 0.0
  config_lib.set_ilsvrc_data(c, variants)
  c.padl.update(dict(enabled=True, drop_rate=0.75, gamma=0.9, per_example=False))
  c.optimizer.update(dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.0))
  c.schedule.update(dict(name="step", steps=(3,), factor=0.1, warmup_epochs=0))
  c.training.update(dict(batch_size=64, num_epochs=10))
  set_map(c, "lrp" if "lrp" in variants else "gar")
  c.eval.select_split = ""  # the paper evaluates the last checkpoint
  c.checkpoint.every_steps = 2000
  config_lib.set_precision(c, variants)
  return c


def set_map(c, kind):
  """The map kind and its official fixed threshold (``'vitol'`` protocol)."""
  c.eval.map_kind = "" if kind == "gar" else kind
  c.eval.fixed_threshold = THRESHOLDS[(c.model.name, kind)]
