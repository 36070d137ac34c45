"""The synthetic WSOL dataset: exact boxes, class only in the shape, TFDS round trip."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from wsol_jax.data import config as config_lib
from wsol_jax.data import sources, synthetic, synthetic_render, tfds_sources

TINY = dict(num_train=24, num_val=6, num_test=10)


def _tight_box(mask):
  ys, xs = np.nonzero(mask)
  return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _iou_plus_one(a, b):
  """wsolevaluation IoU (inclusive "+1" pixel convention)."""
  iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
  ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
  inter = iw * ih
  area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
  return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def examples():
  p = synthetic_render.RenderParams()
  return [synthetic_render.render_example(np.random.default_rng([7, i]), p) for i in range(300)]


def test_render_is_deterministic():
  p = synthetic_render.RenderParams()
  a = synthetic_render.render_example(np.random.default_rng([0, 5]), p)
  b = synthetic_render.render_example(np.random.default_rng([0, 5]), p)
  np.testing.assert_array_equal(a.image, b.image)
  np.testing.assert_array_equal(a.box, b.box)


def test_boxes_are_exact_tight_mask_boxes_inside_the_image(examples):
  shapes = set()
  for ex in examples:
    h, w = ex.mask.shape
    shapes.add((h, w))
    assert 96 <= h <= 160 and 96 <= w <= 160
    assert ex.image.shape == (h, w, 3) and ex.image.dtype == np.uint8
    assert list(ex.box) == _tight_box(ex.mask)  # x1 = last column + 1 (CUB's x + w)
    x0, y0, x1, y1 = ex.box
    assert x0 >= synthetic_render.MARGIN and y0 >= synthetic_render.MARGIN
    assert x1 <= w - synthetic_render.MARGIN and y1 <= h - synthetic_render.MARGIN
  assert sum(h != w for h, w in shapes) > len(shapes) // 2  # mostly non-square
  labels = np.bincount([ex.label for ex in examples], minlength=6)
  assert labels.min() > 20  # all six classes appear


def test_colour_does_not_reveal_the_class(examples):
  """Nearest-centroid on object/background mean colours must be near chance."""
  feats = np.array([np.concatenate([ex.image[ex.mask].mean(0), ex.image[~ex.mask].mean(0)])
                    for ex in examples])
  labels = np.array([ex.label for ex in examples])
  train, test = slice(0, 200), slice(200, None)
  centroids = np.stack([feats[train][labels[train] == k].mean(0) for k in range(6)])
  pred = np.argmin(((feats[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  assert (pred == labels[test]).mean() < 1 / 6 + 0.12


def test_centred_box_guess_scores_poorly(examples):
  """No centred box (any relative size) localises most objects (IoU >= 0.5)."""
  best = 0.0
  for s in np.linspace(0.1, 1.0, 19):
    hits = 0
    for ex in examples:
      h, w = ex.mask.shape
      guess = [w * (1 - s) / 2, h * (1 - s) / 2, w * (1 + s) / 2 - 1, h * (1 + s) / 2 - 1]
      hits += _iou_plus_one([int(v) for v in guess], list(ex.box)) >= 0.5
    best = max(best, hits / len(examples))
  assert best < 0.35, best


def test_light_object_polarity_keeps_colour_uninformative_and_old_names():
  p = synthetic_render.RenderParams(polarity="light_object")
  exs = [synthetic_render.render_example(np.random.default_rng([3, i]), p) for i in range(120)]
  obj = np.array([ex.image[ex.mask].mean(0) for ex in exs])
  # Background near the object's box (clutter may be light too, so not the whole image).
  bg = np.array([np.median(ex.image[~ex.mask], axis=0) for ex in exs])
  assert obj.min() >= 150 - 3 * 2 and bg.max() < 110 + 12 * 3  # noise_std 2; blotches 12
  assert (obj.mean(1) > bg.mean(1) + 60).all()
  labels = np.array([ex.label for ex in exs])
  per_class = np.stack([obj[labels == k].mean(0) for k in range(6)])
  assert np.ptp(per_class, axis=0).max() < 25  # object colour says nothing about the class
  # 'any' (the default) hashes as before the knob existed: old datasets keep their names
  # (names computed by the code before 'polarity').
  base = synthetic.SyntheticParams()
  assert base.config_name == "k6_30776af03d"
  easy = config_lib.synthetic_params(config_lib.synthetic_demo_config("easy"))
  assert synthetic.SyntheticParams.from_kwargs(**easy).config_name == "k6_21ac72733b"
  assert synthetic.SyntheticParams.from_kwargs(polarity="light_object").config_name != base.config_name
  with pytest.raises(ValueError, match="polarity"):
    synthetic_render.RenderParams(polarity="dark")


def test_object_scale_knob_changes_box_sizes():
  small = synthetic_render.RenderParams(object_scale=(0.2, 0.25))
  large = synthetic_render.RenderParams(object_scale=(0.7, 0.8))
  area = lambda p: np.mean([  # noqa: E731
      np.prod(synthetic_render.render_example(np.random.default_rng(i), p).box[2:] -
              synthetic_render.render_example(np.random.default_rng(i), p).box[:2])
      for i in range(20)])
  assert area(large) > 4 * area(small)


def test_params_validation_and_config_names():
  with pytest.raises(TypeError, match="unknown synthetic"):
    synthetic.SyntheticParams.from_kwargs(num_clases=3)
  with pytest.raises(ValueError, match="num_classes"):
    synthetic.SyntheticParams.from_kwargs(num_classes=11)
  a = synthetic.SyntheticParams.from_kwargs(object_scale=[0.35, 0.7])
  assert a.config_name == synthetic.SyntheticParams().config_name  # lists hash like tuples
  assert synthetic.SyntheticParams.from_kwargs(clutter=2.0).config_name != a.config_name
  assert (synthetic.SyntheticParams.from_kwargs(clutter=2, num_train=10.0).config_name ==
          synthetic.SyntheticParams.from_kwargs(clutter=2.0, num_train=10).config_name)
  assert synthetic.SyntheticParams.from_kwargs(num_classes=4).config_name.startswith("k4_")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  synthetic.ensure_synthetic_dataset(d, **TINY)
  return d


def test_ensure_is_idempotent_and_deterministic(data_dir, tmp_path):
  name = synthetic.ensure_synthetic_dataset(data_dir, **TINY)
  files = sorted((data_dir / name).rglob("*.array_record*"))
  assert len(files) == 3
  mtimes = [os.path.getmtime(f) for f in files]
  assert synthetic.ensure_synthetic_dataset(data_dir, **TINY) == name
  assert [os.path.getmtime(f) for f in files] == mtimes  # not regenerated
  other = synthetic.ensure_synthetic_dataset(tmp_path, **TINY)
  a = tfds.data_source(name, split="test", data_dir=str(data_dir), download=False)
  b = tfds.data_source(other, split="test", data_dir=str(tmp_path), download=False)
  by_name = lambda ds: {ex["image/filename"]: ex["image"] for ex in ds}  # noqa: E731
  ia, ib = by_name(a), by_name(b)
  assert ia.keys() == ib.keys() and len(ia) == TINY["num_test"]
  for k in ia:
    np.testing.assert_array_equal(ia[k], ib[k])


def test_read_through_tfds_data_source_like_cub(data_dir):
  name = synthetic.ensure_synthetic_dataset(data_dir, **TINY)
  ds = tfds.data_source(name, split="train", data_dir=str(data_dir), download=False)
  assert len(ds) == TINY["num_train"]
  features = ds.dataset_info.features
  assert list(features["label"].names) == synthetic_render.class_names(6)
  assert {"image", "image/filename", "label", "label_name", "bbox",
          "segmentation_mask"} <= set(features.keys())
  src = tfds_sources.TfdsSource(name, "train", str(data_dir))
  assert src.has_masks and src.num_classes == 6
  for i in range(len(src)):
    r = src[i]
    assert r["error"] == "" and r["index"] == i
    assert r["image"].dtype == np.uint8 and r["image"].shape[2] == 3
    assert set(np.unique(r["mask"])) <= {0, 1}
    np.testing.assert_array_equal(r["boxes"], [_tight_box(r["mask"])])
    assert r["image_id"].split("/")[0] == src.class_names[int(r["label"])]


def test_config_defaults_are_the_dataset_defaults():
  cfg = config_lib.default_data_config()
  params = synthetic.SyntheticParams.from_kwargs(**config_lib.synthetic_params(cfg))
  assert params == synthetic.SyntheticParams()


@pytest.mark.parametrize("difficulty", ["easy", "easy_light", "default", "hard"])
def test_difficulty_presets_are_valid_and_distinct(difficulty):
  cfg = config_lib.synthetic_demo_config(difficulty)
  assert cfg.image_size == 64 and cfg.resize_size == 72
  params = synthetic.SyntheticParams.from_kwargs(**config_lib.synthetic_params(cfg))
  names = {d: synthetic.SyntheticParams.from_kwargs(
      **config_lib.synthetic_params(config_lib.synthetic_demo_config(d))).config_name
           for d in config_lib.SYNTHETIC_PRESETS}
  assert len(set(names.values())) == 4 and params.config_name == names[difficulty]
  with pytest.raises(ValueError, match="difficulty"):
    config_lib.synthetic_demo_config("impossible")


def test_make_source_generates_or_explains(tmp_path):
  cfg = config_lib.default_data_config()
  cfg.data_dir = str(tmp_path)
  cfg.synthetic.update(TINY)
  cfg.synthetic.generate = False
  with pytest.raises(tfds_sources.DatasetNotFoundError, match="ensure_synthetic_dataset"):
    sources.make_source(cfg, "train")
  cfg.synthetic.generate = True
  src = sources.make_source(cfg, "val")
  assert len(src) == TINY["num_val"]


def test_generation_does_not_say_it_downloads(tmp_path, capfd):
  synthetic.ensure_synthetic_dataset(str(tmp_path), num_train=4, num_val=2, num_test=2,
                                     min_size=40, max_size=48, seed=3)
  out = capfd.readouterr().out
  assert "nothing is downloaded" in out and "Downloading" not in out
