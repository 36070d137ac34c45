"""Box/mask geometry against wsolevaluation semantics (spec §1.6, §2) and record helpers."""
import cv2
import numpy as np
import pytest

from wsol_jax.data import geometry, images, records


@pytest.mark.parametrize("box, image_size, target, expected", [
    ((1, 2, 4, 3), (10, 20), (35, 10), (3, 1, 14, 1)),
    ((1, 2, 1, 2), (3, 3), (3, 3), (1, 2, 1, 2)),
    ((60, 27, 385, 331), (500, 335), (224, 224), (26, 18, 172, 221)),
])
def test_resize_bbox_golden_vectors(box, image_size, target, expected):
  out = geometry.resize_bbox(np.array([box]), image_size, target)
  assert out.dtype == np.float64
  np.testing.assert_array_equal(out[0], expected)


def test_resize_bbox_matches_reference_formula():
  rng = np.random.default_rng(0)
  for _ in range(200):
    w, h = rng.integers(1, 600, 2)
    x0, x1 = np.sort(rng.integers(0, w, 2))
    y0, y1 = np.sort(rng.integers(0, h, 2))
    ref = (int(x0 * 224 / w), int(y0 * 224 / h), int(x1 * 224 / w), int(y1 * 224 / h))
    out = geometry.resize_bbox(np.array([[x0, y0, x1, y1]]), (w, h), (224, 224))
    assert tuple(out[0].astype(int)) == ref


def test_mask_nearest_is_cv2_floor_without_half_pixel_offset():
  row = np.arange(10, dtype=np.uint8)[None, :]
  out = geometry.resize_mask_nearest(np.repeat(row, 3, 0), (3, 4))
  np.testing.assert_array_equal(out[0], [0, 2, 5, 7])  # spec §2: jax 'nearest' gives [1,3,6,8]
  rng = np.random.default_rng(1)
  for h, w in [(375, 500), (224, 224), (17, 301), (500, 99)]:
    mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
    out = geometry.resize_mask_nearest(mask, (224, 224))
    ys = np.floor(np.arange(224) * h / 224).astype(int)
    xs = np.floor(np.arange(224) * w / 224).astype(int)
    np.testing.assert_array_equal(out, mask[ys][:, xs])
    np.testing.assert_array_equal(out, cv2.resize(mask, (224, 224), interpolation=cv2.INTER_NEAREST))


def test_pad_boxes_pads_with_minus_one_and_reports_overflow():
  padded, dropped = geometry.pad_boxes(np.array([[1, 2, 3, 4]], np.float32), 3)
  assert padded.dtype == np.int32 and padded.shape == (3, 4) and dropped == 0
  np.testing.assert_array_equal(padded, [[1, 2, 3, 4], [-1] * 4, [-1] * 4])
  padded, dropped = geometry.pad_boxes(np.arange(20).reshape(5, 4), 2)
  assert dropped == 3
  np.testing.assert_array_equal(padded, np.arange(8).reshape(2, 4))
  assert geometry.pad_boxes(np.zeros((0, 4)), 2)[0].tolist() == [[-1] * 4] * 2


def test_crop_and_flip_boxes_follow_the_pixels():
  # Object in columns [10, 20) rows [5, 8) of a 40x30 image; exclusive-end box.
  img = np.zeros((30, 40), bool)
  img[5:8, 10:20] = True
  box = np.array([[10, 5, 20, 8]], np.float32)
  flipped = geometry.flip_boxes(box, 40)
  cols = np.nonzero(img[:, ::-1].any(0))[0]
  np.testing.assert_array_equal(flipped[0], [cols.min(), 5, cols.max() + 1, 8])
  cropped = geometry.crop_boxes(box, left=12, top=6, width=20, height=20)
  np.testing.assert_array_equal(cropped[0], [0, 0, 8, 2])
  np.testing.assert_array_equal(geometry.scale_boxes(box, 2.0, 0.5)[0], [20, 2.5, 40, 4])


def test_boxes_from_normalized_yxyx_shapes_sorting_rounding():
  h, w = 335, 500
  # CUB id 1: x, y, w, h = 60, 27, 325, 304 -> TFDS (y/H, x/W, (y+h)/H, (x+w)/W) in float32.
  tfds_box = np.array([27 / h, 60 / w, 331 / h, 385 / w], np.float32)
  np.testing.assert_array_equal(records.boxes_from_normalized_yxyx(tfds_box, h, w),
                                [[60, 27, 385, 331]])
  as_list = [np.array([0.1, 0.2, 0.5, 0.6], np.float32), np.array([0.0, 0.0, 1.0, 1.0], np.float32)]
  out = records.boxes_from_normalized_yxyx(as_list, 10, 10)
  np.testing.assert_array_equal(out, [[2, 1, 6, 5], [0, 0, 9, 9]])  # clipped to W-1, H-1
  unordered = np.array([[0.5, 0.6, 0.1, 0.2]], np.float32)  # mock data: min > max
  np.testing.assert_array_equal(records.boxes_from_normalized_yxyx(unordered, 10, 10),
                                [[2, 1, 6, 5]])
  assert records.boxes_from_normalized_yxyx([], 10, 10).shape == (0, 4)


def test_make_record_validates_and_error_record_is_a_placeholder():
  img = np.zeros((4, 5, 3), np.uint8)
  r = records.make_record(image=img, label=3, boxes=[[0, 0, 1, 1]], image_id="a", index=7,
                          mask=np.ones((4, 5), np.uint8))
  assert r["label"].dtype == np.int32 and r["boxes"].shape == (1, 4) and r["error"] == ""
  with pytest.raises(ValueError, match="mask shape"):
    records.make_record(image=img, label=0, boxes=[], image_id="a", index=0,
                        mask=np.ones((5, 4), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    records.make_record(image=img.astype(np.float32), label=0, boxes=[], image_id="b", index=0)
  e = records.error_record(index=2, image_id="x", error="boom", has_mask=True)
  assert e["error"] == "boom" and e["mask"].tolist() == [[255]]


def test_to_rgb_handles_gray_and_alpha():
  assert images.to_rgb(np.zeros((3, 4), np.uint8)).shape == (3, 4, 3)
  assert images.to_rgb(np.zeros((3, 4, 1), np.uint8)).shape == (3, 4, 3)
  rgba = np.arange(2 * 2 * 4, dtype=np.uint8).reshape(2, 2, 4)
  np.testing.assert_array_equal(images.to_rgb(rgba), rgba[..., :3])
  with pytest.raises(images.ImageDecodeError):
    images.to_rgb(np.zeros((3, 4, 2), np.uint8))
  with pytest.raises(images.ImageDecodeError):
    images.decode_image_bytes(b"not an image")
