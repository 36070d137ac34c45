"""Map post-processing: OpenCV-exact resizes (spec §11.9) and the guarded min-max."""
import cv2
import jax
import numpy as np
import pytest

from wsol_jax import maps

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
