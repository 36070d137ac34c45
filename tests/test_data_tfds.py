"""CUB and Stanford Dogs through tfds.data_source on TFDS mock data (no TensorFlow)."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from wsol_jax.data import config as config_lib
from wsol_jax.data import pipeline, sources, tfds_sources


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def _check_record(r, i):
  h, w = r["image"].shape[:2]
  assert r["image"].dtype == np.uint8 and r["image"].shape[2] == 3
  assert r["error"] == "" and r["index"] == i and isinstance(r["image_id"], str)
  b = r["boxes"]
  assert b.dtype == np.float32 and b.shape[1] == 4
  assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()  # mock pairs get sorted
  assert (b >= 0).all() and (b[:, 2] <= w - 1).all() and (b[:, 3] <= h - 1).all()
  assert (b == np.rint(b)).all()


def test_cub_records(mock_tfds):
  src = tfds_sources.TfdsSource(tfds_sources.CUB, "train")
  assert len(src) == 6 and src.num_classes == 200 and src.has_masks
  for i in range(len(src)):
    r = src[i]
    _check_record(r, i)
    assert r["boxes"].shape == (1, 4)
    assert r["mask"].shape == r["image"].shape[:2]  # mock mask sizes differ: resized
    assert set(np.unique(r["mask"])) <= {0, 1}
  assert not tfds_sources.TfdsSource(tfds_sources.CUB, "test", use_masks=False).has_masks


def test_dogs_records_have_many_boxes(mock_tfds):
  src = tfds_sources.TfdsSource(tfds_sources.STANFORD_DOGS, "test")
  assert src.num_classes == 120 and not src.has_masks
  counts = []
  for i in range(len(src)):
    r = src[i]
    _check_record(r, i)
    counts.append(len(r["boxes"]))
    assert "mask" not in r
  assert max(counts) > 1


def test_eval_pipeline_on_mock_cub(mock_tfds):
  src = tfds_sources.TfdsSource(tfds_sources.CUB, "test")
  loader, n_batches = pipeline.eval_loader(src, batch_size=8, image_size=32, max_boxes=1)
  batches = list(loader)
  assert len(batches) == n_batches == 1
  b = batches[0]
  assert b["image"].shape == (8, 32, 32, 3) and b["mask"].shape == (8, 32, 32)
  assert b["valid"].tolist() == [True] * 6 + [False] * 2
  for row in range(6):
    r = src[int(b["index"][row])]
    h, w = r["image"].shape[:2]
    assert b["orig_size"][row].tolist() == [h, w]
    expected = np.floor(r["boxes"][0].astype(np.float64) * [32 / w, 32 / h, 32 / w, 32 / h])
    np.testing.assert_array_equal(b["boxes"][row, 0], expected)


def test_dogs_box_overflow_keeps_first_g_and_warns(mock_tfds, caplog):
  src = tfds_sources.TfdsSource(tfds_sources.STANFORD_DOGS, "train")
  loader, _ = pipeline.eval_loader(src, batch_size=8, image_size=16, max_boxes=4)
  with caplog.at_level("WARNING"):
    b = next(iter(loader))
  assert b["boxes"].shape == (8, 4, 4)
  assert "more than max_boxes=4" in caplog.text


def test_unreadable_tfds_record_becomes_error_record(mock_tfds):
  src = tfds_sources.TfdsSource(tfds_sources.CUB, "train")

  class Broken:
    def __init__(self, ds):
      self.ds = ds

    def __getitem__(self, i):
      if i == 2:
        raise ValueError("corrupt JPEG data")
      return self.ds[i]

  src._ds = Broken(src._ds)  # pylint: disable=protected-access
  r = src[2]
  assert "corrupt JPEG" in r["error"] and r["image"].shape == (1, 1, 3) and r["label"] == -1
  loader, _ = pipeline.eval_loader(src, batch_size=8, image_size=16, max_boxes=1)
  it = pipeline.EvalIterator(loader, 1, None, src)
  b = next(iter(it))
  assert it.num_skipped == 1 and it.skipped_indices == [2]
  assert b["valid"].tolist() == [True, True, False, True, True, True, False, False]
  assert (b["mask"][2] == 255).all() and (b["boxes"][2] == -1).all()


def test_missing_tfds_dataset_says_how_to_get_it(tmp_path):
  with pytest.raises(tfds_sources.DatasetNotFoundError,
                     match=r"tfds build caltech_birds2011 .*--file_format=array_record"):
    tfds_sources.TfdsSource(tfds_sources.CUB, "train", str(tmp_path))
  cfg = config_lib.default_data_config()
  cfg.name, cfg.data_dir = "stanford_dogs", str(tmp_path)
  with pytest.raises(tfds_sources.DatasetNotFoundError, match="stanford_dogs"):
    sources.make_source(cfg, "train")


def test_failed_download_says_what_is_needed(tmp_path, monkeypatch):
  def no_tensorflow(*args, **kwargs):
    raise ModuleNotFoundError("No module named 'tensorflow'")

  monkeypatch.setattr(tfds, "data_source", no_tensorflow)
  with pytest.raises(tfds_sources.DatasetNotFoundError, match="TensorFlow"):
    tfds_sources.TfdsSource(tfds_sources.CUB, "train", str(tmp_path), download=True)


def test_source_pickles_without_the_open_tfds_handle(mock_tfds):
  import pickle
  src = tfds_sources.TfdsSource(tfds_sources.CUB, "train")
  clone = pickle.loads(pickle.dumps(src))
  assert clone._ds is None and len(clone) == 6  # pylint: disable=protected-access
  np.testing.assert_array_equal(clone[3]["image"], src[3]["image"])  # reopened lazily


def test_config_entry_points_for_cub_and_dogs(mock_tfds):
  cfg = config_lib.default_data_config()
  cfg.name, cfg.image_size, cfg.resize_size = "cub", 32, 40
  info = sources.dataset_info(cfg)
  assert info.num_classes == 200 and info.max_boxes == 1 and info.splits["val"] == ""
  b = next(pipeline.build_train_iterator(cfg, batch_size=8, seed=0))
  assert b["image"].shape == (8, 32, 32, 3)
  ev = pipeline.build_eval_iterator(cfg, "test", batch_size=8)
  assert next(iter(ev))["mask"].shape == (8, 32, 32)
  with pytest.raises(ValueError, match="no 'val' split"):
    pipeline.build_eval_iterator(cfg, "val", batch_size=8)
  cfg.name = "stanford_dogs"
  ev = pipeline.build_eval_iterator(cfg, "test", batch_size=8)
  assert ev.info.max_boxes == 16 and ev.info.num_classes == 120
  assert next(iter(ev))["boxes"].shape == (8, 16, 4)
