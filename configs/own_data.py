"""Any method on your own data: classes, boxes, masks, image size and training length from the data.

  # a folder of class sub-folders plus boxes.csv (rows: relative_path,x0,y0,x1,y1[,split])
  python -m wsol_jax.train --config configs/own_data.py:scm --workdir runs/mine \
      --config.data.metadata.image_root=/data/birds
  # a wsolevaluation-layout metadata folder (train/ val/ test/ with image_ids.txt,
  # class_labels.txt, image_sizes.txt, localization.txt) and its image folder
  python -m wsol_jax.train --config configs/own_data.py:cam --workdir runs/mine \
      --config.data.metadata.metadata_dir=/data/birds/metadata \
      --config.data.metadata.image_root=/data/birds/images
  python -m wsol_jax.evaluate --config configs/own_data.py:cam --checkpoint runs/mine \
      --config.data.metadata.metadata_dir=/data/birds/metadata \
      --config.data.metadata.image_root=/data/birds/images

The variant is the method: cam, rfga, tscam, scm, vitol or agcam (none: cam). The training
log starts with what was derived (``wsol_jax.data.derive``), e.g.
``model.num_classes=0 -> 3 (from the data)``; every derived key is a "0 = from the data"
value that an explicit override replaces:

  model.num_classes    max label + 1 (labels must be 0..K-1; class folders: sorted names).
                       An explicit value that disagrees with the data fails in one line.
  data.max_boxes       the most boxes any image has (no box is dropped).
  masks                localization.txt mask lines, or a mask/ folder under the image root
                       (``data.metadata.mask_root``) with mask/<image id without extension>.png
                       (pixel > 0 = object) for every image of a split: PxAP on that split.
  data.image_size      the median image side rounded to a multiple of 32 in [128, 224]
                       (data.resize_size = image_size x 8/7).
  training.total_steps -1: 30 epochs, at least 500 steps.
  splits               class folders without a split column: each class 80/10/10
                       (data.metadata.split_fractions, split_seed); a missing val split
                       keeps the last checkpoint, a missing test split skips the test.

Recipe: the method's CUB config (``configs/<method>_cub.py``: model, optimizer, batch size)
with a cosine schedule, evaluation on val every 5 epochs and checkpoint selection on val.
Backbone: none is shipped yet, so ``model.pretrained`` is '' (random init: a ViT from
scratch needs far more data than a CNN); pass an ImageNet backbone converted with
``weights_convert`` (README "Pretrained weights"), e.g.
``--config.model.pretrained=ckpt/deit_s``, for the methods' published accuracy.
"""
import importlib.util
import pathlib

from wsol_jax import config_lib
from wsol_jax.data import config as data_config

METHODS = ("cam", "rfga", "tscam", "scm", "vitol", "agcam")
# The variants ``get_config(arg)`` accepts (``--config configs/own_data.py:a,b``).
VARIANTS = METHODS
DEFAULT_VARIANT = "cam"  # no variant: the same config as ':cam'


def _recipe(method):
  path = pathlib.Path(__file__).with_name(f"{method}_cub.py")
  spec = importlib.util.spec_from_file_location(f"_own_data_{method}_cub", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(None)


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  if len(variants) > 1:
    raise config_lib.ConfigError(f"configs/own_data.py:<method> takes one method of "
                                 f"{', '.join(METHODS)}, got {arg!r}")
  method = next(iter(variants), DEFAULT_VARIANT)
  c = _recipe(method)
  c.data.name = "wsol_metadata"
  c.data.metadata = data_config.default_data_config().metadata  # dataset='': from the data
  c.data.val_split, c.data.test_split = "val", "test"
  c.data.image_size, c.data.resize_size = 0, 0
  c.data.max_boxes = 0
  c.model.num_classes = 0
  c.model.pretrained = ""
  c.schedule.name = "cosine"
  c.training.update(dict(num_epochs=0, total_steps=-1))
  c.eval.update(dict(select_split="val", every_epochs=5))
  return c
