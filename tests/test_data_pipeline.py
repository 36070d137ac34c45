"""grain train/eval pipelines on a tiny synthetic dataset: determinism, state, padding, sharding."""
import jax
import numpy as np
import pytest
from PIL import Image

from wsol_jax import sharding
from wsol_jax.data import config as config_lib
from wsol_jax.data import geometry, pipeline, sources

TINY = dict(num_train=24, num_val=6, num_test=21)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  c = config_lib.synthetic_demo_config()  # resize 72 -> crop 64
  c.data_dir = str(tmp_path_factory.mktemp("tfds"))
  c.synthetic.update(TINY)
  sources.make_source(c, "train")  # generates once for the module
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_train_batches_shapes_and_determinism(cfg):
  it = pipeline.build_train_iterator(cfg, batch_size=8, seed=3)
  assert it.num_classes == 6 and it.class_names[:2] == ("disk", "triangle")
  assert it.steps_per_epoch == 3 and it.info.has_masks and it.info.max_boxes == 1
  first = _take(it, 4)
  b = first[0]
  assert set(b) == {"image", "label"}
  assert b["image"].shape == (8, 64, 64, 3) and b["image"].dtype == np.uint8
  assert b["label"].shape == (8,) and b["label"].dtype == np.int32
  _assert_same(first, _take(pipeline.build_train_iterator(cfg, batch_size=8, seed=3), 4))
  other = _take(pipeline.build_train_iterator(cfg, batch_size=8, seed=4), 4)
  assert any((x["image"] != y["image"]).any() for x, y in zip(first, other))


def test_train_state_restore_mid_epoch_is_bit_identical(cfg):
  it = pipeline.build_train_iterator(cfg, batch_size=8, seed=0)
  _take(it, 2)  # 3 batches per epoch: stop mid-epoch
  state = it.get_state()
  assert isinstance(state, bytes)
  rest = _take(it, 5)  # crosses into later epochs
  resumed = pipeline.build_train_iterator(cfg, batch_size=8, seed=0)
  resumed.set_state(state)
  _assert_same(rest, _take(resumed, 5))


def test_state_round_trips_through_grains_orbax_checkpoint_handler(cfg, tmp_path):
  import grain.python as grain
  from etils import epath
  it = pipeline.build_train_iterator(cfg, batch_size=8, seed=1)
  _take(it, 1)
  grain.PyGrainCheckpointHandler().save(epath.Path(tmp_path), item=it)
  rest = _take(it, 3)
  resumed = pipeline.build_train_iterator(cfg, batch_size=8, seed=1)
  grain.PyGrainCheckpointHandler().restore(epath.Path(tmp_path), item=resumed)
  _assert_same(rest, _take(resumed, 3))


def test_epochs_reshuffle_and_finite_runs_stop(cfg):
  it = pipeline.build_train_iterator(cfg, batch_size=8, seed=0)
  epochs = [np.concatenate([b["label"] for b in _take(it, 3)]) for _ in range(3)]
  for e in epochs:  # every epoch is a permutation of the split's labels
    np.testing.assert_array_equal(np.sort(e), np.sort(epochs[0]))
  assert any((e != epochs[0]).any() for e in epochs[1:])
  finite = cfg.copy_and_resolve_references()
  finite.num_epochs = 1
  assert len(list(pipeline.build_train_iterator(finite, batch_size=8, seed=0))) == 3


def test_train_augmentation_is_resize_crop_flip(cfg):
  c = cfg.copy_and_resolve_references()
  c.resize_size = 64  # resize == crop: the crop is the whole resized image
  src = sources.make_source(c, "train")
  resized = [np.asarray(Image.fromarray(src[i]["image"]).resize((64, 64), Image.BILINEAR))
             for i in range(len(src))]
  flips = 0
  for b in _take(pipeline.build_train_iterator(c, batch_size=8, seed=0), 3):
    for img in b["image"]:
      plain = any((img == r).all() for r in resized)
      mirrored = any((img == r[:, ::-1]).all() for r in resized)
      assert plain or mirrored
      flips += mirrored and not plain
  assert 0 < flips < 24
  c.random_flip = False
  for b in _take(pipeline.build_train_iterator(c, batch_size=8, seed=0), 3):
    for img in b["image"]:
      assert any((img == r).all() for r in resized)


def test_train_boxes_follow_the_crop(cfg):
  c = cfg.copy_and_resolve_references()
  c.train_boxes = True
  b = next(pipeline.build_train_iterator(c, batch_size=8, seed=0))
  assert b["boxes"].shape == (8, 1, 4) and b["boxes"].dtype == np.int32
  assert (b["boxes"] >= 0).all() and (b["boxes"] <= 63).all()
  assert (b["boxes"][..., 2] >= b["boxes"][..., 0]).all()


def test_batch_size_must_divide_over_devices(cfg):
  assert jax.device_count() == 8
  with pytest.raises(ValueError, match="multiple of the 8 devices"):
    pipeline.build_train_iterator(cfg, batch_size=12, seed=0)
  with pytest.raises(ValueError, match="multiple of the 8 devices"):
    pipeline.build_eval_iterator(cfg, "test", batch_size=4)


def test_eval_sees_every_image_once_with_static_shapes(cfg):
  c = cfg.copy_and_resolve_references()
  c.image_size = 224
  it = pipeline.build_eval_iterator(c, "test", batch_size=8)
  src = it.source
  batches = list(it)
  assert len(batches) == len(it) == 3 and it.num_examples == 21 and it.num_skipped == 0
  for b in batches:
    assert b["image"].shape == (8, 224, 224, 3) and b["image"].dtype == np.uint8
    assert b["boxes"].shape == (8, 1, 4) and b["boxes"].dtype == np.int32
    assert b["mask"].shape == (8, 224, 224) and b["mask"].dtype == np.uint8
    assert b["orig_size"].shape == (8, 2) and b["orig_size"].dtype == np.int32
    assert b["index"].dtype == np.int32 and b["valid"].dtype == np.bool_
  index = np.concatenate([b["index"] for b in batches])
  valid = np.concatenate([b["valid"] for b in batches])
  assert sorted(index[valid].tolist()) == list(range(21))
  assert (index[~valid] == -1).all() and valid.sum() == 21
  last = batches[-1]
  assert (last["boxes"][~last["valid"]] == -1).all() and (last["mask"][~last["valid"]] == 255).all()
  for b in batches:
    for row in np.nonzero(b["valid"])[0]:
      r = src[int(b["index"][row])]
      h, w = r["image"].shape[:2]
      assert b["orig_size"][row].tolist() == [h, w]
      np.testing.assert_array_equal(b["boxes"][row],
                                    geometry.resize_bbox(r["boxes"], (w, h), (224, 224)))
      np.testing.assert_array_equal(b["mask"][row],
                                    geometry.resize_mask_nearest(r["mask"], (224, 224)))
      np.testing.assert_array_equal(
          b["image"][row], np.asarray(Image.fromarray(r["image"]).resize((224, 224),
                                                                         Image.BILINEAR)))
  assert [b["index"][0] for b in list(it)] == [b["index"][0] for b in batches]  # re-iterable


def test_batches_shard_over_the_mesh(cfg):
  mesh = sharding.make_mesh()
  batch = next(pipeline.build_train_iterator(cfg, batch_size=16, seed=0))
  g = sharding.global_batch(batch, mesh)
  assert g["image"].shape == (16, 64, 64, 3) and g["label"].shape == (16,)
  shards = g["image"].addressable_shards
  assert len(shards) == 8 and all(s.data.shape == (2, 64, 64, 3) for s in shards)
  np.testing.assert_array_equal(np.asarray(g["image"]), batch["image"])
  ev = next(iter(pipeline.build_eval_iterator(cfg, "test", batch_size=8)))
  ge = sharding.global_batch(ev, mesh)
  assert ge["valid"].dtype == np.bool_ and ge["boxes"].shape == (8, 1, 4)


def test_two_worker_processes(cfg):
  c = cfg.copy_and_resolve_references()
  c.worker_count = 2
  it = pipeline.build_eval_iterator(c, "test", batch_size=8)
  batches = list(it)
  # Each of the 2 workers gets whole batches: 21 images padded to 32 rows.
  assert len(batches) == len(it) == 4
  index = np.concatenate([b["index"] for b in batches])
  valid = np.concatenate([b["valid"] for b in batches])
  assert sorted(index[valid].tolist()) == list(range(21))
  train = pipeline.build_train_iterator(c, batch_size=8, seed=0)
  got = _take(train, 4)
  train.close()
  assert all(b["image"].shape == (8, 64, 64, 3) for b in got)
