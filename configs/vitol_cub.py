"""ViTOL (DeiT-B + p-ADL) on CUB-200-2011 — the PAPER's two-stage recipe (no training code
was released).

  python -m weights_convert.timm --model deit_base_patch16_224 \
      --hf-repo timm/deit_base_patch16_224.fb_in1k --out ckpt/deit_b
  # stage 1: the DeiT-B baseline with a new 200-way head (no p-ADL)
  python -m wsol_jax.train --config configs/vitol_cub.py:stage1 --workdir runs/vitol_cub_stage1 \
      --config.model.pretrained=ckpt/deit_b
  # stage 2 (default): add p-ADL and continue from the stage-1 export
  python -m wsol_jax.train --config configs/vitol_cub.py --workdir runs/vitol_cub \
      --config.model.pretrained=runs/vitol_cub_stage1/export

Variants (``:stage1,lrp,tfds``): ``stage1`` (the baseline), ``lrp`` (LRP maps, threshold
0.185), ``tfds`` (TFDS caltech_birds2011 with 10% of train held out; default: the
wsolevaluation layout). Paper (§4.3): stage 1 = ImageNet-pretrained DeiT-B, new 200-way
classifier, 50 epochs, lr 1e-4, wd 0, ×0.1 every 10 epochs; stage 2 = p-ADL (drop rate
0.75, γ 0.9), lr 1e-5, wd 0, ×0.1 every 5 epochs; the LAST checkpoint is evaluated.
Not stated, our choices: stage 2 runs 10 epochs (``--config.training.num_epochs``; lr
1e-5 for epochs 1–4, 1e-6 for 5–9, 1e-7 for 10, as long as the ImageNet p-ADL training);
Adam (AdamW with wd 0) and batch 64 (official config.py) in both stages; train resize
256 → crop 224 → flip, test resize 224; no stochastic depth. The fixed score-map
thresholds of the ``'vitol'`` protocol are the official DeiT-B ones (GAR 0.208, LRP 0.185;
tuned on ImageNet — the repo has no CUB configuration).
Paper numbers (CUB test, DeiT-B, MaxBoxAccV2 / IoU30 / IoU50 / IoU70): ViTOL-GAR 72.42 /
96.68 / 80.89 / 39.69; ViTOL-LRP 73.17 (Table 1); stage-1 baseline GAR 70.79 / 96.15 /
78.2 / 38.03, rollout 49.75; p-ADL + rollout 57.42 (Table 3).
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
import importlib.util
import pathlib

from wsol_jax import config_lib


def _vitol_ilsvrc():
  path = pathlib.Path(__file__).with_name("vitol_ilsvrc.py")
  spec = importlib.util.spec_from_file_location("_vitol_ilsvrc", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

# The variants ``get_config(arg)`` accepts (``--config configs/vitol_cub.py:a,b``).
VARIANTS = ('stage1', 'lrp', 'tfds', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "vitol"
  c.seed = 123
  c.model.name = "deit_base_patch16_224"
  c.model.drop_path_rate = 0.0
  config_lib.set_cub_data(c, variants - {"paper"})
  c.optimizer.update(dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.0))
  c.training.batch_size = 64
  if "stage1" in variants:
    c.padl.enabled = False
    c.schedule.update(dict(name="step", steps=(10,), factor=0.1, warmup_epochs=0))
    c.training.num_epochs = 50
  else:
    c.padl.update(dict(enabled=True, drop_rate=0.75, gamma=0.9, per_example=False))
    c.model.pretrained = "runs/vitol_cub_stage1/export"
    c.optimizer.lr = 1e-5
    c.schedule.update(dict(name="step", steps=(5,), factor=0.1, warmup_epochs=0))
    c.training.num_epochs = 10
  _vitol_ilsvrc().set_map(c, "lrp" if "lrp" in variants else "gar")
  c.eval.select_split = ""  # the paper evaluates the last checkpoint
  config_lib.set_precision(c, variants)
  return c
