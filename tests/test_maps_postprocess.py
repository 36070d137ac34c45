"""Map post-processing: OpenCV-exact resizes (spec §11.9) and the guarded min-max."""
import cv2
import jax
import numpy as np
import pytest

from wsol_jax import maps
from wsol_jax.eval import boxes as boxes_lib

CV2 = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}

# Integer factors and downsampling: both kernels agree with OpenCV to float64 rounding.
EXACT = [((14, 14), (224, 224)), ((7, 7), (224, 224)), ((28, 28), (224, 224)),
         ((28, 28), (448, 448)), ((14, 14), (7, 7)), ((224, 224), (14, 14))]


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
@pytest.mark.parametrize("src,dst", EXACT)
def test_resize_equals_opencv_in_float64(method, src, dst):
  x = np.random.default_rng(0).normal(size=(3,) + src)
  with jax.enable_x64(True):
    got = np.asarray(maps.resize(x, dst, method))
  assert got.dtype == np.float64 and got.shape == (3,) + dst
  for i in range(3):
    ref = cv2.resize(x[i], dst[::-1], interpolation=CV2[method])
    np.testing.assert_allclose(got[i], ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method,atol", [("bilinear", 1e-12), ("bicubic", 1e-5)])
def test_resize_to_non_integer_sizes(method, atol):
  # OpenCV's cubic coefficients at fractional source positions are computed in float32,
  # so a non-integer factor (e.g. an original 500x375 photo) agrees to ~5e-6 on N(0, 1) maps.
  x = np.random.default_rng(1).normal(size=(14, 14))
  with jax.enable_x64(True):
    got = np.asarray(maps.resize(x, (375, 500), method))
  np.testing.assert_allclose(got, cv2.resize(x, (500, 375), interpolation=CV2[method]), atol=atol)


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
def test_resize_in_float32_is_close_to_opencv(method):
  # float32 (the jitted default): single-precision rounding of a map of scale ~3.
  x = np.random.default_rng(2).normal(size=(14, 14)).astype(np.float32)
  got = np.asarray(maps.resize(x, (224, 224), method))
  ref = cv2.resize(x.astype(np.float64), (224, 224), interpolation=CV2[method])
  np.testing.assert_allclose(got, ref, atol=2e-6)


def test_minmax_guards_constant_and_nan_maps():
  x = np.stack([np.arange(16.0).reshape(4, 4), np.full((4, 4), 0.3),
                np.where(np.eye(4) > 0, np.nan, 1.0)]).astype(np.float32)
  out = np.asarray(maps.minmax(x))
  np.testing.assert_allclose(out[0], np.arange(16.0).reshape(4, 4) / 15, atol=1e-7)
  np.testing.assert_array_equal(out[1:], 0)


def test_to_image_size_uses_each_kinds_official_kernel():
  x = np.random.default_rng(3).normal(size=(2, 14, 14)).astype(np.float32)
  for kind, method in [("gar", "bicubic"), ("rollout", "bicubic"), ("lrp", "bicubic"),
                       ("cam", "bicubic"), ("agcam", "bilinear"), ("tscam", "bilinear"),
                       ("scm", "bilinear"), ("rollout_half", "bilinear")]:
    assert maps.upsample_method(kind) == method
    np.testing.assert_array_equal(maps.to_image_size(x, (32, 48), kind),
                                  maps.resize_and_normalize(x, (32, 48), method))
  with pytest.raises(ValueError, match="unknown map kind"):
    maps.upsample_method("gradcam")


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
def test_host_resize_is_opencv_plus_normalize_scoremap(method):
  x = np.random.default_rng(4).normal(size=(14, 14)).astype(np.float32)
  got = maps.resize_and_normalize_host(x, (375, 500), method)
  ref = cv2.resize(x.astype(np.float64), (500, 375), interpolation=CV2[method])
  ref -= ref.min()  # wsolevaluation normalize_scoremap
  ref /= ref.max()
  assert got.shape == (375, 500) and got.dtype == np.float64
  np.testing.assert_allclose(got, ref, atol=1e-15)
  np.testing.assert_array_equal(maps.resize_and_normalize_host(np.ones((4, 4)), (8, 8), method), 0)
  with jax.enable_x64(True):  # integer factors: the same numbers as the jax resize
    np.testing.assert_allclose(maps.resize_and_normalize_host(x, (224, 224), method),
                               maps.resize_and_normalize(x.astype(np.float64), (224, 224), method),
                               atol=1e-12)


def _random_maps(rng, n, shape):
  """float32 maps of many scales and offsets (attention-like, logit-like, CAM-like)."""
  scale = 10.0 ** rng.uniform(-4, 4, (n, 1, 1))
  offset = rng.normal(size=(n, 1, 1)) * scale * rng.integers(0, 2, (n, 1, 1))
  x = rng.random((n,) + shape) ** rng.uniform(0.5, 4, (n, 1, 1)) * scale + offset
  return x.astype(np.float32)


def _official_thresholds(scoremap, taus):
  """wsolevaluation / TS-CAM: ``int(τ·max(uint8(255·S)))`` on the map as given."""
  u = (scoremap * 255).astype(np.uint8)
  return np.asarray([int(t * np.max(u)) for t in taus])


MINMAX_CASES = [("14x14", (14, 14), None, None), ("7x7", (7, 7), None, None),
                ("28x28", (28, 28), None, None), ("1x196", (1, 196), None, None),
                ("14x14->224 bilinear", (14, 14), (224, 224), "bilinear"),
                ("14x14->224 bicubic", (14, 14), (224, 224), "bicubic"),
                ("7x7->224 bicubic", (7, 7), (224, 224), "bicubic")]


@pytest.mark.parametrize("name,shape,size,method", MINMAX_CASES, ids=[c[0] for c in MINMAX_CASES])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_minmax_reaches_exactly_one_and_zero(name, shape, size, method, jit):
  # XLA computes the division as a multiply by the reciprocal; without the pin ~15% of random
  # 14x14 maps peaked at 0.99999994 (uint8 254), which moved every box threshold.
  n = 64 if size else 512
  x = _random_maps(np.random.default_rng(sum(map(ord, name))), n, shape)
  if size is None:
    fn = maps.minmax
  else:
    def fn(m):
      return maps.resize_and_normalize(m, size, method)
  out = np.asarray((jax.jit(fn) if jit else fn)(x))
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out.max(axis=(1, 2)), 1.0)
  np.testing.assert_array_equal(out.min(axis=(1, 2)), 0.0)
  # Elsewhere it is the official numpy ratio up to float32 rounding.
  src = x if size is None else np.asarray((jax.jit(maps.resize, static_argnums=(1, 2)) if jit
                                           else maps.resize)(x, size, method))
  lo, hi = src.min(axis=(1, 2), keepdims=True), src.max(axis=(1, 2), keepdims=True)
  assert (out[src == hi] == 1).all()
  np.testing.assert_allclose(out, (src - lo) / (hi - lo), rtol=0, atol=2e-7)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_box_thresholds_of_normalised_maps_equal_the_official_ones(method):
  """The integer thresholds the box miners use (``threshold_boxes``: float64 as the evaluator
  passes, ``tscam_boxes``: float32 as TS-CAM) equal wsolevaluation's and TS-CAM's
  ``int(τ·255)`` on the official numpy min-max of the same resized map."""
  x = _random_maps(np.random.default_rng(5), 48, (14, 14))
  resized = np.asarray(maps.resize(x, (224, 224), method))
  device = np.asarray(jax.jit(lambda m: maps.resize_and_normalize(m, (224, 224), method))(x))
  taus = boxes_lib.cam_thresholds(0.01)
  expected = np.asarray([int(t * 255) for t in taus])
  for raw, ours in zip(resized, device):
    official = (raw - raw.min()) / (raw.max() - raw.min())  # TS-CAM / SCM, in float32
    np.testing.assert_array_equal(_official_thresholds(official, taus), expected)
    for scoremap in (ours.astype(np.float64), ours):
      u = boxes_lib.quantize(scoremap)
      got = boxes_lib.integer_thresholds(int(u.max()), taus)
      np.testing.assert_array_equal(got, _official_thresholds(scoremap, taus))
      np.testing.assert_array_equal(got, expected)
    assert int(boxes_lib.quantize(ours, nan_to_zero=True).max()) == 255  # tscam_boxes' max U
  host = maps.resize_and_normalize_host(x[0], (224, 224), method)
  assert host.max() == 1.0 and host.min() == 0.0


def test_host_minmax_reaches_exactly_one_and_zero():
  rng = np.random.default_rng(6)
  for i, raw in enumerate(_random_maps(rng, 64, (14, 14))):
    size = (224, 224) if i % 2 else (375, 500)
    out = maps.resize_and_normalize_host(raw, size, ("bilinear", "bicubic")[i % 2])
    assert out.max() == 1.0 and out.min() == 0.0
