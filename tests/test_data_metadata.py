"""wsolevaluation metadata folders (CUB/CUBV2 boxes, OpenImages masks) built on the fly."""
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from wsol_jax.data import config as config_lib
from wsol_jax.data import pipeline, wsol_metadata

# (image_id, label, PIL mode, format, (W, H)); CUB-style ids '<class_dir>/<file>'.
_CUB_IMAGES = [
    ("001.Black_footed_Albatross/rgb.jpg", 0, "RGB", "JPEG", (40, 30)),
    ("001.Black_footed_Albatross/gray.jpg", 0, "L", "JPEG", (33, 41)),
    ("002.Laysan_Albatross/cmyk.jpg", 1, "CMYK", "JPEG", (50, 20)),
    ("002.Laysan_Albatross/rgba.png", 1, "RGBA", "PNG", (24, 24)),
    ("003.Sooty_Albatross/corrupt.jpg", 2, None, None, (30, 30)),
    ("003.Sooty_Albatross/palette.png", 2, "P", "PNG", (37, 29)),
]
CORRUPT_INDEX = 4


def _write_image(path, mode, fmt, size, seed):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if mode is None:  # a truncated JPEG: valid header, missing data
    buf = path + ".tmp"
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 30, 3), np.uint8)).save(
        buf, "JPEG")
    with open(buf, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[:len(data) // 3])
    os.remove(buf)
    return
  w, h = size
  arr = np.random.default_rng(seed).integers(0, 255, (h, w, 4), np.uint8)
  img = Image.fromarray(arr, "RGBA")
  img = img.convert("RGB").convert(mode) if mode != "RGBA" else img
  img.save(path, fmt)


def _write_lines(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines))  # like some wsolevaluation files: no trailing newline


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
  root = tmp_path_factory.mktemp("wsoleval")
  images = root / "dataset" / "CUB"
  meta = root / "metadata" / "CUB"
  for k, (image_id, _, mode, fmt, size) in enumerate(_CUB_IMAGES):
    _write_image(str(images / image_id), mode, fmt, size, k)
  for split, entries in [("test", _CUB_IMAGES), ("train", _CUB_IMAGES),
                         ("val", [_CUB_IMAGES[0], _CUB_IMAGES[2]])]:
    d = meta / split
    _write_lines(d / "image_ids.txt", [e[0] for e in entries])
    _write_lines(d / "class_labels.txt", [f"{e[0]},{e[1]}" for e in entries])
    _write_lines(d / "image_sizes.txt", [f"{e[0]},{e[4][0]},{e[4][1]}" for e in entries])
    boxes = []
    for e in entries:
      w, h = e[4]
      boxes.append(f"{e[0]},1,2,{w // 2},{h - 1}")
      if e[1] == 1:
        boxes.append(f"{e[0]},0,0,{w - 1},{h // 2}")  # a second box
    _write_lines(d / "localization.txt", boxes)
  return root


def _cfg(root, **kw):
  cfg = config_lib.default_data_config()
  cfg.name = "wsol_metadata"
  cfg.metadata.update(dict(dataset="CUB", metadata_dir=str(root / "metadata" / "CUB"),
                           image_root=str(root / "dataset" / "CUB"), num_classes=3))
  cfg.image_size = 32
  cfg.resize_size = 40
  cfg.max_boxes = 2
  cfg.update(kw)
  return cfg


def test_records_convert_every_mode_to_rgb(cub):
  src = wsol_metadata.WsolMetadataSource(str(cub / "metadata" / "CUB"), "test",
                                         str(cub / "dataset" / "CUB"), num_classes=3)
  assert len(src) == 6 and not src.has_masks
  assert src.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross",
                             "003.Sooty_Albatross"]
  for i, (image_id, label, mode, _, (w, h)) in enumerate(_CUB_IMAGES):
    r = src[i]
    assert r["image_id"] == image_id and r["label"] == label and r["index"] == i
    if mode is None:
      assert "truncated" in r["error"] or "cannot" in r["error"]
      continue
    assert r["error"] == ""
    assert r["image"].shape == (h, w, 3) and r["image"].dtype == np.uint8
    ref = np.asarray(Image.open(cub / "dataset" / "CUB" / image_id).convert("RGB"))
    np.testing.assert_array_equal(r["image"], ref)  # same conversion as wsolevaluation
  gray = src[1]["image"]
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  np.testing.assert_array_equal(src[2]["boxes"], [[1, 2, 25, 19], [0, 0, 49, 10]])


def test_bad_metadata_lines_name_file_and_line(tmp_path):
  d = tmp_path / "CUB" / "test"
  _write_lines(d / "image_ids.txt", ["a.jpg", "b.jpg"])
  _write_lines(d / "class_labels.txt", ["a.jpg,0", "b.jpg"])
  _write_lines(d / "image_sizes.txt", ["a.jpg,4,4", "b.jpg,4,4"])
  _write_lines(d / "localization.txt", ["a.jpg,0,0,1,1"])
  with pytest.raises(wsol_metadata.MetadataError, match=r"class_labels.txt:2: expected"):
    wsol_metadata.read_split_metadata(str(d))
  _write_lines(d / "class_labels.txt", ["a.jpg,0", "b.jpg,1"])
  _write_lines(d / "localization.txt", ["a.jpg,0,0,1,1", "", "b.jpg,0,zero,1,1"])
  with pytest.raises(wsol_metadata.MetadataError, match=r"localization.txt:3: 'zero' is not"):
    wsol_metadata.read_split_metadata(str(d))
  _write_lines(d / "localization.txt", ["a.jpg,3,0,1,1"])
  with pytest.raises(wsol_metadata.MetadataError, match=r"localization.txt:1: invalid box"):
    wsol_metadata.read_split_metadata(str(d))
  _write_lines(d / "localization.txt", ["a.jpg,0,0,1,1"])
  _write_lines(d / "image_sizes.txt", ["a.jpg,4,4"])
  with pytest.raises(wsol_metadata.MetadataError, match=r"image_sizes.txt: no size for image 'b"):
    wsol_metadata.read_split_metadata(str(d))


def test_every_annotation_is_validated_with_file_line_and_image_id(tmp_path):
  d = tmp_path / "CUB" / "test"

  def write(ids=("a.jpg", "b.jpg"), labels=("a.jpg,0", "b.jpg,1"),
            sizes=("a.jpg,40,30", "b.jpg,40,30"), boxes=("a.jpg,0,0,39,29", "b.jpg,1,1,20,20")):
    _write_lines(d / "image_ids.txt", list(ids))
    _write_lines(d / "class_labels.txt", list(labels))
    _write_lines(d / "image_sizes.txt", list(sizes))
    _write_lines(d / "localization.txt", list(boxes))
  write()
  assert wsol_metadata.read_split_metadata(str(d)).clipped_boxes == 0
  cases = [
      (dict(ids=("a.jpg", "b.jpg", "a.jpg")), r"image_ids.txt:3: duplicate image id 'a.jpg' "
       r"\(first at line 1\)"),
      (dict(labels=("a.jpg,0", "b.jpg,-1")), r"class_labels.txt:2: negative label -1 of image 'b.jpg'"),
      (dict(sizes=("a.jpg,40,30", "b.jpg,0,30")), r"image_sizes.txt:2: size 0x30 of image 'b.jpg'"),
      (dict(boxes=("a.jpg,0,0,39,29", "b.jpg,1,1,50,20")),
       r"localization.txt:2: box of image 'b.jpg' leaves the image \(40x30 .*clip_boxes"),
      (dict(boxes=("a.jpg,-2,0,39,29",)), r"localization.txt:1: box of image 'a.jpg' leaves"),
      (dict(boxes=("a.jpg,9,0,3,29",)), r"localization.txt:1: invalid box of image 'a.jpg'"),
  ]
  for kwargs, message in cases:
    write(**kwargs)
    with pytest.raises(wsol_metadata.MetadataError, match=message):
      wsol_metadata.read_split_metadata(str(d))
  # Clipping is an explicit option; clipped boxes are counted.
  write(boxes=("a.jpg,-2,0,39,29", "b.jpg,1,1,50,35", "b.jpg,2,2,8,8"))
  meta = wsol_metadata.read_split_metadata(str(d), clip_boxes=True)
  assert meta.clipped_boxes == 2
  assert meta.boxes["a.jpg"] == [(0, 0, 39, 29)] and meta.boxes["b.jpg"][0] == (1, 1, 40, 30)
  write(boxes=("a.jpg,50,0,60,29",))
  with pytest.raises(wsol_metadata.MetadataError, match="lies outside the image"):
    wsol_metadata.read_split_metadata(str(d), clip_boxes=True)
  # A label above the class count names its line and image.
  write(labels=("a.jpg,0", "b.jpg,7"))
  (tmp_path / "img").mkdir()
  with pytest.raises(wsol_metadata.MetadataError,
                     match=r"class_labels.txt:2: label 7 of image 'b.jpg' >= num_classes 2"):
    wsol_metadata.WsolMetadataSource(str(tmp_path / "CUB"), "test", str(tmp_path / "img"),
                                     num_classes=2)


def test_missing_metadata_or_images_say_how_to_get_them(cub, tmp_path):
  with pytest.raises(wsol_metadata.MetadataNotFoundError, match="clovaai/wsolevaluation"):
    wsol_metadata.WsolMetadataSource(str(tmp_path / "nothing"), "test", str(tmp_path))
  with pytest.raises(wsol_metadata.MetadataNotFoundError, match="prepare_cub.sh"):
    wsol_metadata.WsolMetadataSource(str(cub / "metadata" / "CUB"), "test",
                                     str(tmp_path / "no_images"))


def test_eval_marks_unreadable_images_invalid_and_counts_them(cub):
  it = pipeline.build_eval_iterator(_cfg(cub), "test", batch_size=8)
  batches = list(it)
  assert len(batches) == len(it) == 1
  b = batches[0]
  assert it.num_skipped == 1 and it.skipped_indices == [CORRUPT_INDEX]
  assert b["valid"].tolist() == [True] * 4 + [False] + [True] + [False] * 2
  assert b["index"].tolist() == [0, 1, 2, 3, 4, 5, -1, -1]
  assert b["image"].shape == (8, 32, 32, 3) and b["boxes"].shape == (8, 2, 4)
  assert b["orig_size"][2].tolist() == [20, 50]
  # wsolevaluation resize_bbox: floor(x * 32 / W), floor(y * 32 / H).
  assert b["boxes"][2].tolist() == [[0, 3, 16, 30], [0, 0, 31, 16]]
  assert b["boxes"][0, 1].tolist() == [-1, -1, -1, -1]
  assert "mask" not in b


def test_val_split_is_the_held_out_set(cub):
  it = pipeline.build_eval_iterator(_cfg(cub), "val", batch_size=8)
  b = next(iter(it))
  assert b["valid"].sum() == 2 and it.num_examples == 2
  cfg = _cfg(cub)  # CUBV2 images kept in their own folder
  cfg.metadata.val_image_root = cfg.metadata.image_root
  cfg.metadata.image_root = str(cub / "nonexistent")
  assert next(iter(pipeline.build_eval_iterator(cfg, "val", batch_size=8)))["valid"].sum() == 2
  with pytest.raises(wsol_metadata.MetadataNotFoundError):
    pipeline.build_eval_iterator(cfg, "test", batch_size=8)
  src = wsol_metadata.WsolMetadataSource(  # per-split mapping in the source API
      str(cub / "metadata" / "CUB"), "val", {"val": cfg.metadata.val_image_root}, num_classes=3)
  assert len(src) == 2


def test_train_skips_unreadable_images_and_counts_them(cub):
  it = pipeline.build_train_iterator(_cfg(cub), batch_size=8, seed=0)
  seen = []
  for _ in range(4):  # 4 batches of 8 over 5 readable images: several epochs
    b = next(it)
    assert b["image"].shape == (8, 32, 32, 3) and b["label"].dtype == np.int32
    seen.append(b)
  assert it.num_skipped >= 3  # at least once per completed epoch
  assert it.num_classes == 3


def _open_images(root):
  """OpenImages-style: two instance masks + ignore for a.jpg, one mask for b.jpg."""
  images = root / "dataset" / "OpenImages"
  d = root / "metadata" / "OpenImages" / "test"
  rng = np.random.default_rng(0)
  specs = {"test/c1/a.jpg": (45, 30), "test/c2/b.png": (20, 26)}
  for k, (image_id, (w, h)) in enumerate(specs.items()):
    _write_image(str(images / image_id), "RGB", "PNG", (w, h), k)
  masks = {}
  for name, (w, h) in [("m/a1.png", (45, 30)), ("m/a2.png", (45, 30)), ("m/a_ig.png", (45, 30)),
                       ("m/b1.png", (20, 26))]:
    m = (rng.random((h, w)) < 0.3).astype(np.uint8) * 255
    os.makedirs(images / "m", exist_ok=True)
    cv2.imwrite(str(images / name), m)
    masks[name] = m
  _write_lines(d / "image_ids.txt", list(specs))
  _write_lines(d / "class_labels.txt", ["test/c1/a.jpg,3", "test/c2/b.png,7"])
  _write_lines(d / "image_sizes.txt", ["test/c1/a.jpg,45,30", "test/c2/b.png,20,26"])
  _write_lines(d / "localization.txt", ["test/c1/a.jpg,m/a1.png,m/a_ig.png",
                                        "test/c1/a.jpg,m/a2.png,",
                                        "test/c2/b.png,m/b1.png,"])
  return masks


def _reference_get_mask(masks, instance_names, ignore_name, size=224):
  """wsolevaluation evaluation.get_mask on the 224 grid."""
  load = lambda m: cv2.resize(np.float32(m), (size, size),  # noqa: E731
                              interpolation=cv2.INTER_NEAREST)
  positive = np.zeros((size, size), bool)
  for name in instance_names:
    positive |= load(masks[name]) > 0.5
  out = positive.astype(np.uint8)
  if ignore_name:
    ignore = (load(masks[ignore_name]) > 0.5) & ~positive
    out[ignore] = 255
  return out


def test_openimages_masks_match_wsolevaluation_get_mask(tmp_path):
  masks = _open_images(tmp_path)
  cfg = config_lib.default_data_config()
  cfg.name = "wsol_metadata"
  cfg.metadata.update(dict(dataset="OpenImages",
                           metadata_dir=str(tmp_path / "metadata" / "OpenImages"),
                           image_root=str(tmp_path / "dataset" / "OpenImages")))
  cfg.image_size = 224
  it = pipeline.build_eval_iterator(cfg, "test", batch_size=8)
  assert it.info.num_classes == 100 and it.info.has_masks and it.info.max_boxes == 1
  b = next(iter(it))
  assert b["mask"].shape == (8, 224, 224) and b["mask"].dtype == np.uint8
  np.testing.assert_array_equal(b["mask"][0],
                                _reference_get_mask(masks, ["m/a1.png", "m/a2.png"], "m/a_ig.png"))
  np.testing.assert_array_equal(b["mask"][1], _reference_get_mask(masks, ["m/b1.png"], ""))
  assert (b["mask"][2:] == 255).all() and (b["boxes"] == -1).all()
  assert b["label"][:2].tolist() == [3, 7]
