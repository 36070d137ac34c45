"""PASCAL VOC 2012 sources (VOCdevkit folder, TFDS voc/2012) on a VOCdevkit the tests write."""
import pathlib

import numpy as np
import pytest

import voc_devkit
from wsol_jax.data import config as config_lib
from wsol_jax.data import pipeline, sources, tfds_sources, voc

DOG, CAT, PERSON = (voc.CLASSES.index(n) for n in ("dog", "cat", "person"))


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> pathlib.Path:
  return voc_devkit.write_devkit(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def tfds_dir(devkit, tmp_path_factory) -> pathlib.Path:
  data_dir = tmp_path_factory.mktemp("tfds")
  voc_devkit.build_tfds_voc(devkit.parents[1], data_dir)
  return data_dir


def _write_xml(tmp_path, text, name="x.xml"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


# ---- annotations -----------------------------------------------------------------------------

def test_parse_annotation_reads_size_objects_and_flags(tmp_path):
  objects = [("dog", (3, 4, 30, 40), 0, 0), ("Cat", (1, 1, 50, 40), 1, 1)]
  path = _write_xml(tmp_path, voc_devkit.xml_text("a", (50, 40), objects))
  size, got, clipped = voc.parse_annotation(path)
  assert size == (50, 40) and clipped == 0
  assert got == [voc.VocObject(DOG, (3.0, 4.0, 30.0, 40.0), False, False),
                 voc.VocObject(CAT, (1.0, 1.0, 50.0, 40.0), True, True)]  # parts ignored


@pytest.mark.parametrize("text,message", [
    (voc_devkit.xml_text("a", None, [("dog", (1, 1, 5, 5), 0, 0)]), r"no <size>"),
    (voc_devkit.xml_text("a", (0, 40), []), r"<size> 0x40 is not positive"),
    (voc_devkit.xml_text("a", (50, 40), [("dragon", (1, 1, 5, 5), 0, 0)]),
     r"object 0 has unknown class 'dragon'"),
    (voc_devkit.xml_text("a", (50, 40), [("dog", (1, 1, "5.x", 5), 0, 0)]),
     r"object 0 \(dog\) <xmax> is not a number: '5.x'"),
    (voc_devkit.xml_text("a", (50, 40), [("dog", (1, "nan", 5, 5), 0, 0)]),
     r"object 0 \(dog\) <ymin> is not a number: 'nan'"),
    (voc_devkit.xml_text("a", (50, 40), [("dog", (9, 1, 5, 5), 0, 0)]),
     r"box \(9, 1, 5, 5\) has xmin > xmax"),
    (voc_devkit.xml_text("a", (50, 40), [("dog", (1, 1, 5, 5), 0, 0),
                                         ("cat", (10, 5, 51, 20), 0, 0)]),
     r"object 1 \(cat\) box \(10, 5, 51, 20\) leaves the 50x40 image \(set data.voc.clip_boxes"),
    (voc_devkit.xml_text("a", (50, 40), [], "<object><name>dog</name></object>"),
     r"object 0 \(dog\) has no <bndbox>"),
    (voc_devkit.xml_text("a", (50, 40), [], "<object><bndbox/></object>"),
     r"object 0 has no <name>"),
    ("<annotation><size>", r"not valid XML"),
])
def test_bad_annotations_fail_in_one_line_naming_the_file(tmp_path, text, message):
  path = _write_xml(tmp_path, text)
  with pytest.raises(voc.VocAnnotationError, match=message) as e:
    voc.parse_annotation(path)
  assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_boxes_outside_the_image_are_clipped_on_request(tmp_path):
  path = _write_xml(tmp_path, voc_devkit.xml_text(
      "a", (50, 40), [("dog", (-3, 2, 55, 30), 0, 0), ("dog", (60, 2, 70, 30), 0, 0)]))
  with pytest.raises(voc.VocAnnotationError, match="object 1 .* lies outside the 50x40 image"):
    voc.parse_annotation(path, voc.VocOptions(clip_boxes=True))
  path = _write_xml(tmp_path, voc_devkit.xml_text("a", (50, 40), [("dog", (-3, 2, 55, 30), 0, 0)]))
  (size, objects, clipped) = voc.parse_annotation(path, voc.VocOptions(clip_boxes=True))
  assert clipped == 1 and objects[0].box == (0.0, 2.0, 50.0, 30.0)


def test_missing_annotation_is_not_found(tmp_path):
  with pytest.raises(voc.VocNotFoundError, match="missing annotation .*nope.xml"):
    voc.parse_annotation(str(tmp_path / "nope.xml"))


# ---- the selection rule ------------------------------------------------------------------------

def _objs(*specs):
  return [voc.VocObject(voc.CLASSES.index(n), (i, i, i + 5, i + 5), bool(d), bool(t))
          for i, (n, d, t) in enumerate(specs)]


def test_selection_rule_and_its_options():
  dog_and_difficult_cat = _objs(("dog", 0, 0), ("cat", 1, 0), ("dog", 1, 0), ("dog", 0, 1))
  s = voc.select(dog_and_difficult_cat, voc.VocOptions())
  assert s.reason == "" and s.label == DOG
  np.testing.assert_array_equal(s.boxes[:, 0], [0, 2, 3])  # every dog, difficult/truncated too
  assert voc.select(dog_and_difficult_cat,
                    voc.VocOptions(difficult_labels=True)).reason == "multi_class"
  np.testing.assert_array_equal(
      voc.select(dog_and_difficult_cat, voc.VocOptions(difficult_boxes=False)).boxes[:, 0], [0, 3])
  np.testing.assert_array_equal(
      voc.select(dog_and_difficult_cat, voc.VocOptions(truncated_boxes=False)).boxes[:, 0], [0, 2])
  two = _objs(("person", 0, 0), ("cat", 0, 0), ("person", 0, 0))
  assert voc.select(two, voc.VocOptions()).reason == "multi_class"
  s = voc.select(two, voc.VocOptions(single_class=False))  # the first object's class
  assert s.label == PERSON and s.boxes[:, 0].tolist() == [0, 2]
  assert voc.select(_objs(("cat", 1, 0)), voc.VocOptions()).reason == "no_class"
  assert voc.select(_objs(("cat", 1, 0)), voc.VocOptions(difficult_labels=True)).label == CAT
  assert voc.select(_objs(("cat", 0, 1)), voc.VocOptions(truncated_boxes=False)).reason == "no_box"
  assert voc.select([], voc.VocOptions()).reason == "no_class"


# ---- the folder source -------------------------------------------------------------------------

def test_folder_source_keeps_single_class_images_with_every_instance(devkit, caplog):
  with caplog.at_level("INFO", logger="wsol_jax.data"):
    src = voc.VocFolderSource(str(devkit), "val")
  assert (src.num_classes, src.class_names, src.has_masks) == (20, list(voc.CLASSES), False)
  assert src.num_images == 9 and len(src) == 7
  assert src.excluded == {"multi_class": 1, "no_class": 1, "no_box": 0}
  assert ("7 of 9 images kept, 1 with several classes excluded (data.voc.single_class), 1 "
          "without a non-difficult object excluded") in caplog.text
  assert "2012_100000" not in src.image_ids and "2012_100002" not in src.image_ids
  r = src[src.image_ids.index("2012_100001")]
  assert r["label"] == DOG and r["image"].shape == (48, 64, 3) and r["error"] == ""
  np.testing.assert_array_equal(r["boxes"], [[3, 4, 30, 40], [31, 2, 64, 20], [35, 25, 50, 48]])
  for i in range(len(src)):  # generated images: 1-3 instances of one class
    r = src[i]
    assert r["index"] == i and r["boxes"].shape[1] == 4 and r["error"] == ""
    assert r["label"] in (CAT, DOG, PERSON)
  train = voc.VocFolderSource(str(devkit), "train")
  assert len(train) == 23 and train.excluded["multi_class"] == 1


def test_folder_source_options_change_what_is_kept(devkit):
  src = voc.VocFolderSource(str(devkit), "val", voc.VocOptions(single_class=False,
                                                               difficult_labels=True))
  assert len(src) == 9 and src.excluded == {"multi_class": 0, "no_class": 0, "no_box": 0}
  r = src[src.image_ids.index("2012_100000")]
  assert r["label"] == CAT and r["boxes"].tolist() == [[5, 5, 30, 30]]
  src = voc.VocFolderSource(str(devkit), "val", voc.VocOptions(difficult_boxes=False))
  assert src[src.image_ids.index("2012_100001")]["boxes"].tolist() == [[3, 4, 30, 40],
                                                                       [35, 25, 50, 48]]


def test_folder_source_errors(devkit, tmp_path):
  with pytest.raises(voc.VocNotFoundError, match="VOC folder .* not found .*data.voc.root"):
    voc.VocFolderSource(str(tmp_path / "none"), "val")
  with pytest.raises(voc.VocNotFoundError, match=r"no split list .*test.txt .*\['train', 'val'\]"):
    voc.VocFolderSource(str(devkit), "test")
  # A bad annotation of a listed image stops the source, naming the file.
  bad = tmp_path / "VOC2012"
  bad.mkdir()
  (bad / "ImageSets" / "Main").mkdir(parents=True)
  (bad / "Annotations").mkdir()
  (bad / "ImageSets" / "Main" / "val.txt").write_text("a\nb\n")
  (bad / "Annotations" / "a.xml").write_text(voc_devkit.xml_text("a", (9, 9), []))
  with pytest.raises(voc.VocNotFoundError, match=r"missing annotation .*Annotations/b.xml"):
    voc.VocFolderSource(str(bad), "val")
  (bad / "Annotations" / "b.xml").write_text(voc_devkit.xml_text("b", None, []))
  with pytest.raises(voc.VocAnnotationError, match=r"b.xml: no <size>"):
    voc.VocFolderSource(str(bad), "val")
  (bad / "ImageSets" / "Main" / "val.txt").write_text("a\na\n")
  with pytest.raises(voc.VocAnnotationError, match=r"val.txt: image id 'a' is listed twice"):
    voc.VocFolderSource(str(bad), "val")


def test_unreadable_or_resized_images(devkit, tmp_path, caplog):
  import shutil
  copy = tmp_path / "VOC2012"
  shutil.copytree(devkit, copy)
  src = voc.VocFolderSource(str(copy), "val")
  first, second = src.image_ids[:2]
  (copy / "JPEGImages" / f"{first}.jpg").write_bytes(b"not a jpeg")
  r = src[0]
  assert r["error"] and r["label"] >= 0 and r["image"].shape == (1, 1, 3)
  # An image whose size differs from its XML: logged, boxes rescaled with the decoded size.
  from PIL import Image
  path = copy / "JPEGImages" / f"{second}.jpg"
  with Image.open(path) as im:
    im.resize((im.width * 2, im.height * 2)).save(path)
  with caplog.at_level("WARNING", logger="wsol_jax.data"):
    r = src[1]
  assert r["error"] == "" and "the annotation says" in caplog.text


# ---- TFDS voc/2012 ----------------------------------------------------------------------------

def test_tfds_voc_gives_the_folder_sources_records(devkit, tfds_dir):
  for tfds_split, folder_split in (("validation", "val"), ("train", "train")):
    t = voc.VocTfdsSource(tfds_split, str(tfds_dir))
    f = voc.VocFolderSource(str(devkit), folder_split)
    assert sorted(t.image_ids) == sorted(f.image_ids) and t.excluded == f.excluded
    assert (t.num_classes, t.class_names) == (20, list(voc.CLASSES))
    for i, image_id in enumerate(t.image_ids):
      a, b = t[i], f[f.image_ids.index(image_id)]
      assert a["index"] == i and a["image_id"] == image_id and a["error"] == ""
      assert a["label"] == b["label"]
      np.testing.assert_array_equal(a["boxes"], b["boxes"])
      np.testing.assert_array_equal(a["image"], b["image"])  # the stored JPEG, decoded by PIL
  options = voc.VocOptions(single_class=False, difficult_labels=True, difficult_boxes=False)
  t = voc.VocTfdsSource("validation", str(tfds_dir), options)
  f = voc.VocFolderSource(str(devkit), "val", options)
  assert len(t) == len(f) == 8  # the only-difficult image keeps its label but no box
  assert t.excluded == f.excluded == {"multi_class": 0, "no_class": 0, "no_box": 1}
  got = {i: (t[k]["label"], t[k]["boxes"].tolist()) for k, i in enumerate(t.image_ids)}
  assert got == {i: (f[k]["label"], f[k]["boxes"].tolist()) for k, i in enumerate(f.image_ids)}


def test_tfds_voc_source_pickles_and_reports_missing_data(tfds_dir, tmp_path):
  import pickle
  t = voc.VocTfdsSource("validation", str(tfds_dir))
  clone = pickle.loads(pickle.dumps(t))
  assert clone._ds is None and len(clone) == len(t)  # pylint: disable=protected-access
  np.testing.assert_array_equal(clone[0]["image"], t[0]["image"])
  with pytest.raises(tfds_sources.DatasetNotFoundError, match="tfds build voc"):
    voc.VocTfdsSource("validation", str(tmp_path))


# ---- config entry points and the eval pipeline ------------------------------------------------

def test_config_entry_points(devkit, tfds_dir):
  cfg = config_lib.default_data_config()
  cfg.name, cfg.voc.root = "voc", str(devkit)
  info = sources.dataset_info(cfg)
  assert (info.num_classes, info.max_boxes, info.has_masks) == (20, 64, False)
  assert info.class_names[DOG] == "dog"
  assert len(sources.make_source(cfg, "val")) == 7
  cfg.voc.single_class = False
  assert len(sources.make_source(cfg, "val")) == 8
  cfg.test_split = "val"
  assert len(pipeline.build_eval_iterator(cfg, "test", 8).source) == 8
  with pytest.raises(ValueError, match="'val' is this config's test split: ask for 'test'"):
    pipeline.build_eval_iterator(cfg, "val", 8)
  cfg = config_lib.default_data_config()
  cfg.name, cfg.data_dir = "voc_tfds", str(tfds_dir)
  assert len(sources.make_source(cfg, "validation")) == 7
  assert sources.dataset_info(cfg).num_classes == 20


def test_eval_boxes_follow_agcams_scaling(devkit):
  """Eval rows carry int(x / W · S) of the XML boxes, the GT AG-CAM's metrics rasterise."""
  src = voc.VocFolderSource(str(devkit), "val")
  loader, _ = pipeline.eval_loader(src, batch_size=8, image_size=32, max_boxes=4)
  b = next(iter(loader))
  assert b["valid"].tolist() == [True] * 7 + [False]
  for row in range(7):
    r = src[int(b["index"][row])]
    h, w = r["image"].shape[:2]
    n = len(r["boxes"])
    official = [[int(x0 / w * 32), int(y0 / h * 32), int(x1 / w * 32), int(y1 / h * 32)]
                for x0, y0, x1, y1 in r["boxes"].tolist()]
    assert b["boxes"][row, :n].tolist() == official and (b["boxes"][row, n:] == -1).all()


def test_pixel_ground_truth_is_the_union_of_the_class_instances(devkit):
  """AG-CAM's GT mask of the dog image is its three dogs (one difficult, one truncated);
  without difficult boxes the difficult dog becomes background."""
  from wsol_jax.eval import pixel_metrics
  rows = {}
  for difficult_boxes in (True, False):
    src = voc.VocFolderSource(str(devkit), "val", voc.VocOptions(difficult_boxes=difficult_boxes))
    loader, _ = pipeline.eval_loader(src, batch_size=8, image_size=32, max_boxes=4)
    b = next(iter(loader))
    row = list(b["index"]).index(src.image_ids.index("2012_100001"))
    rows[difficult_boxes] = b["boxes"][row]
  all_dogs = pixel_metrics.boxes_to_mask(rows[True], (32, 32))
  scores = pixel_metrics.agcam_image_metrics(all_dogs.astype(np.float64), rows[True])
  assert scores[4] == pytest.approx(1.0)  # recall: the predicted boxes cover every dog
  fewer = pixel_metrics.agcam_image_metrics(all_dogs.astype(np.float64), rows[False])
  assert fewer[3] < scores[3]  # precision drops: the difficult dog is background now
