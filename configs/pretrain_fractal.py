"""Formula-driven pretraining (FractalDB / RCDB style) of the demos' backbones, no natural images.

  python -m wsol_jax.train --config configs/pretrain_fractal.py --workdir /tmp/fractal-vit
  python -m wsol_jax.train --config configs/pretrain_fractal.py:resnet --workdir /tmp/fractal-resnet

A plain classification run of the same trainer on ``data.name='fractal'`` (``wsol_jax.data.
fractal``: IFS fractals and radial contours rendered on the fly, 256 categories, val = 4
held-out instances per category), selected by val ``cls_top1`` and exported to
WORKDIR/export, which a demo loads with ``--config.model.pretrained=WORKDIR/export`` (the
classification head is re-initialised: its class count differs; TS-CAM's / SCM's conv head
is new):

  python -m wsol_jax.train --config configs/tscam_synthetic.py --workdir /tmp/wsol-tscam \\
    --config.model.pretrained=/tmp/fractal-vit/export

The model (default: the ViT):
  (none)  the demos' tiny DeiT (``config_lib.set_synthetic_vit``: img 64, patch 8, width 128,
          depth 4) with AG-CAM's linear class-token head; val maps are the cheap attention
          rollout (the selection reads only cls_top1).
Variants:
  resnet  the demos' narrow ResNet (``config_lib.set_synthetic_resnet``) with CAM's head.
  smoke   with either model: the ``*_synthetic.py:smoke`` model shapes on a tiny fractal set, a few
          steps (tests).

Budget: each run must finish in <= 90 minutes on 2 CPU cores. Timed on the project VM (2
cores shared with other agents' jobs) under ``flock /tmp/wsol_heavy.lock``, on-the-fly
rendering included (250-800 images/s on one thread: ``python -m wsol_jax.data.fractal``):

  --config.training.total_steps=40, load average 6-8:   vit 0.77 s/step, resnet 0.75 s/step
  --config.training.total_steps=300, load average 4-6:  vit 0.31 s/step, resnet 0.42 s/step

and one val evaluation (1,024 images, compilation included) takes 8-16 s. Planned: 6,000
steps each (3 epochs of 2,000 steps, val top-1 after each): 31-42 minutes at the second
rates, 77 at the slowest measured, plus < 1 minute of evaluation. In the 300-step runs the
loss fell from 5.55 (chance, ln 256) to 4.69 (vit) / 4.80 (resnet), val top-1 1.8 / 2.6 %
(chance 0.4 %). Weights: not yet trained or shipped (the runs are scheduled for a later
session), so no expected val top-1 is stated yet.
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/pretrain_fractal.py:a,b``).
VARIANTS = ("resnet", "smoke")

# Planned optimizer steps of each model variant (see the budget above).
STEPS = {"vit": 6000, "resnet": 6000}


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  model = "resnet" if "resnet" in variants else "vit"
  c = config_lib.base_config()
  if model == "vit":
    c.method = "agcam"
    config_lib.set_synthetic_vit(c)
    c.eval.map_kind = "rollout"   # maps are not what this run selects on: the cheapest kind
    c.eval.abpc = False
  else:
    c.method = "cam"
    config_lib.set_synthetic_resnet(c)
  # The data: hundreds of formula categories, every split rendered on the fly.
  c.data.name = "fractal"
  c.data.val_split = "val"
  c.data.image_size, c.data.resize_size = 64, 72
  c.data.fractal.update(dict(num_classes=256, train_per_class=500, val_per_class=4,
                             test_per_class=4, families=("ifs", "contour")))
  c.model.num_classes = 256
  # The recipe: batch 64; epochs of 256 x 500 / 64 = 2000 steps, the planned steps as
  # total_steps, a 0.25-epoch warm-up, val top-1 after every epoch.
  c.training.update(dict(batch_size=64, total_steps=STEPS[model], log_every_steps=50))
  c.schedule.name = "cosine"
  with c.schedule.ignore_type():  # the schema's default is the int 0
    c.schedule.warmup_epochs = 0.25
  c.eval.update(dict(every_epochs=1, select_split="val", select_metric="cls_top1",
                     test_at_end=False, batch_size=128, num_overlays=0))
  c.checkpoint.every_steps = 1000
  if "smoke" in variants:
    config_lib.set_synthetic_smoke(c)
    c.data.fractal.update(dict(num_classes=8, train_per_class=8, val_per_class=2,
                               test_per_class=2, min_size=32, max_size=40, num_points=1500))
    c.model.num_classes = 8
    c.training.update(dict(batch_size=16, total_steps=3, log_every_steps=1))
    c.eval.update(dict(every_epochs=1, batch_size=16))
  return c
