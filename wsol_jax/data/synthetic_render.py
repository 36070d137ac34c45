"""Renders images of the synthetic WSOL dataset (numpy, PIL and cv2 only: cheap
to import in generation worker processes).

Each image holds exactly one object whose class is carried ONLY by its shape:
its colours and texture, the background and the distractors are drawn from
class-independent distributions. The object is rasterised without
anti-aliasing, so its mask is exact and its box is the tight box of the mask.

Box convention (the same as CUB's ``x + w`` in wsolevaluation's metadata):
``[x0, y0, x1, y1]`` with ``x0``/``y0`` the first object column/row and
``x1 = last column + 1``, ``y1 = last row + 1`` (exclusive end). Objects keep
a margin of ``MARGIN`` pixels from every border, so ``x1 <= W - 2`` and the
wsolevaluation check ``x1 <= W - 1`` always holds without clipping. Under the
wsolevaluation "+1" IoU this is exactly the box that its box mining returns
for a perfect score map of the object at the original resolution.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

MARGIN = 2  # pixels kept free between the object and every image border

# Polygon = (N, 2) float array of (x, y) in a unit frame centred on 0.
_Polygon = np.ndarray


def _circle(radius: float, n: int = 48, cx: float = 0.0, cy: float = 0.0) -> _Polygon:
  t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
  return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> _Polygon:
  t = phase + np.arange(n) * 2 * math.pi / n
  return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(points: int, inner: float) -> _Polygon:
  t = -math.pi / 2 + np.arange(2 * points) * math.pi / points
  r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
  return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _poly(points: Sequence[tuple[float, float]]) -> _Polygon:
  return np.asarray(points, np.float64)


# Each shape: list of (polygon, filled). Later polygons paint over earlier
# ones; filled=False cuts a hole. Shapes are normalised to max radius 1 below.
_SHAPES: dict[str, list[tuple[_Polygon, bool]]] = {
    "disk": [(_circle(1.0), True)],
    "triangle": [(_regular(3), True)],
    "square": [(_poly([(-1, -1), (1, -1), (1, 1), (-1, 1)]), True)],
    "cross": [(_poly([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3),
                      (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]),
               True)],
    "star": [(_star(5, 0.42), True)],
    "ring": [(_circle(1.0), True), (_circle(0.55), False)],
    "crescent": [(_circle(1.0), True), (_circle(0.8, cx=0.45), False)],
    "ell": [(_poly([(-1, -1), (-0.35, -1), (-0.35, 0.4), (1, 0.4), (1, 1), (-1, 1)]), True)],
    "arrow": [(_poly([(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25),
                      (-1, 0.25)]), True)],
    "bowtie": [(_poly([(-1, -0.9), (0, -0.1), (1, -0.9), (1, 0.9), (0, 0.1), (-1, 0.9)]), True)],
}
SHAPE_NAMES: tuple[str, ...] = tuple(_SHAPES)


def _normalised(parts: list[tuple[_Polygon, bool]]) -> list[tuple[_Polygon, bool]]:
  pts = np.concatenate([p for p, _ in parts])
  centre = (pts.max(0) + pts.min(0)) / 2
  radius = np.sqrt(((pts - centre) ** 2).sum(1)).max()
  return [((p - centre) / radius, f) for p, f in parts]


_SHAPES = {k: _normalised(v) for k, v in _SHAPES.items()}


@dataclasses.dataclass(frozen=True)
class RenderParams:
  """Difficulty knobs of the synthetic dataset (all class-independent).

  Attributes:
    num_classes: number of shape classes, 2..len(SHAPE_NAMES).
    min_size: smallest image side in pixels (height and width drawn separately).
    max_size: largest image side in pixels.
    object_scale: (lo, hi) object diameter before stretching, as a fraction
      of the shorter image side.
    aspect: (lo, hi) range of the x/y stretch ratio (log-uniform).
    rotation: objects are rotated uniformly in [-rotation, rotation] degrees.
    texture_prob: probability that the object is textured (stripes, checks,
      speckle, gradient) rather than a solid colour.
    clutter: multiplier of the number of background lines, scribbles, blobs.
    noise_std: std of the Gaussian pixel noise added to the whole image.
    min_contrast: minimal RGB distance between object and background colours.
    polarity: 'any' (object and background colours anywhere in the RGB cube) or
      'light_object' (background colours in [0, 110), object colours in [150, 256)
      per channel; distractors keep any colour). Shape remains the only class cue;
      'light_object' spares a model the search for which colour is the object, which
      a tiny ViT trained from scratch cannot do within a CPU demo's budget.
  """
  num_classes: int = 6
  min_size: int = 96
  max_size: int = 160
  object_scale: tuple[float, float] = (0.35, 0.7)
  aspect: tuple[float, float] = (0.8, 1.25)
  rotation: float = 30.0
  texture_prob: float = 0.25
  clutter: float = 0.5
  noise_std: float = 2.0
  min_contrast: float = 90.0
  polarity: str = "any"

  def __post_init__(self):
    if not 2 <= self.num_classes <= len(SHAPE_NAMES):
      raise ValueError(f"num_classes must be in [2, {len(SHAPE_NAMES)}], got {self.num_classes}")
    if not 8 * MARGIN <= self.min_size <= self.max_size:
      raise ValueError(f"need {8 * MARGIN} <= min_size <= max_size, got "
                       f"{self.min_size}, {self.max_size}")
    if self.polarity not in POLARITIES:
      raise ValueError(f"polarity must be one of {list(POLARITIES)}, got {self.polarity!r}")
    lo, hi = self.object_scale
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"object_scale must satisfy 0 < lo <= hi <= 1, got {self.object_scale}")


def class_names(num_classes: int) -> list[str]:
  """Shape names of the first ``num_classes`` classes."""
  return list(SHAPE_NAMES[:num_classes])


# Per-channel colour ranges [lo, hi) of (background, object) for each polarity.
POLARITIES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "any": ((0, 256), (0, 256)),
    "light_object": ((0, 110), (150, 256)),
}


def _random_colour(rng: np.random.Generator, span: tuple[int, int] = (0, 256)) -> np.ndarray:
  return rng.integers(span[0], span[1], 3).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, refs: Sequence[np.ndarray],
                        min_dist: float, span: tuple[int, int] = (0, 256)) -> np.ndarray:
  best, best_d = None, -1.0
  for _ in range(64):
    c = _random_colour(rng, span)
    d = min(float(np.linalg.norm(c - r)) for r in refs)
    if d >= min_dist:
      return c
    if d > best_d:
      best, best_d = c, d
  return best


def _background(rng: np.random.Generator, h: int, w: int, span: tuple[int, int] = (0, 256)
                ) -> tuple[np.ndarray, list[np.ndarray]]:
  """Linear or radial two-colour gradient with soft blotches, (H, W, 3) uint8, plus its colours.

  Built on a coarse grid (one node per ~16 px) and upsampled bilinearly; colours per
  channel in ``span``.
  """
  c0, c1 = _random_colour(rng, span), _random_colour(rng, span)
  gh, gw = h // 16 + 2, w // 16 + 2
  y = np.linspace(0, h, gh, dtype=np.float32)[:, None]
  x = np.linspace(0, w, gw, dtype=np.float32)[None, :]
  if rng.random() < 0.5:
    a = rng.uniform(0, 2 * math.pi)
    t = x * np.float32(math.cos(a)) + y * np.float32(math.sin(a))
  else:
    cx, cy = np.float32(rng.uniform(0, w)), np.float32(rng.uniform(0, h))
    t = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
  t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
  grid = c0 + t[..., None] * (c1 - c0) + rng.normal(0, 12.0, (gh, gw, 3)).astype(np.float32)
  image = cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
  return np.clip(image, 0, 255).astype(np.uint8), [c0, c1]


_BLOB_T = np.linspace(0, 2 * math.pi, 32, endpoint=False)


def _lumpy_blobs(rng: np.random.Generator, n: int, w: int, h: int, side: int) -> np.ndarray:
  """``n`` irregular potato-shaped polygons, (n, 32, 2).

  Radius r(t) = R (1 + a2 cos(2t + p2) + a3 cos(3t + p3)) with a2 >= 0.25:
  only harmonics 2 and 3, so a blob is never a disk, a ring or a star.
  """
  centre = rng.uniform([0, 0], [w, h], (n, 1, 2))
  radius = rng.uniform(0.05, 0.15, (n, 1)) * side
  a2, a3 = rng.uniform(0.25, 0.4, (n, 1)), rng.uniform(0.1, 0.25, (n, 1))
  p2, p3 = rng.uniform(0, 2 * math.pi, (2, n, 1))
  rr = radius * (1 + a2 * np.cos(2 * _BLOB_T + p2) + a3 * np.cos(3 * _BLOB_T + p3))
  return centre + np.stack([rr * np.cos(_BLOB_T), rr * np.sin(_BLOB_T)], axis=-1)


def _draw_clutter(rng: np.random.Generator, canvas: Image.Image, clutter: float) -> None:
  """Straight lines, scribbles and blobs in random colours (all class-independent)."""
  w, h = canvas.size
  side = min(w, h)
  draw = ImageDraw.Draw(canvas)
  n_lines, n_scribbles, n_blobs = rng.poisson(np.array([3.0, 2.0, 2.0]) * clutter)
  colours = [tuple(c) for c in rng.integers(0, 256, (n_lines + n_scribbles + n_blobs, 3)).tolist()]
  ends = rng.uniform([-0.2 * w, -0.2 * h], [1.2 * w, 1.2 * h], (n_lines, 2, 2)).tolist()
  widths = rng.integers(1, 4, n_lines).tolist()
  for (p, q), width, colour in zip(ends, widths, colours):
    draw.line([tuple(p), tuple(q)], fill=colour, width=width)
  for k in range(n_scribbles):  # smooth random walks
    steps = int(rng.integers(5, 12))
    heading = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 0.6, steps))
    step = rng.uniform(0.04, 0.1) * side * np.stack([np.cos(heading), np.sin(heading)], 1)
    pts = rng.uniform([0, 0], [w, h]) + np.cumsum(step, 0)
    draw.line([tuple(p) for p in pts.tolist()], fill=colours[n_lines + k],
              width=int(rng.integers(2, 5)), joint="curve")
  for k, poly in enumerate(_lumpy_blobs(rng, n_blobs, w, h, side).tolist()):
    draw.polygon([tuple(p) for p in poly], fill=colours[n_lines + n_scribbles + k])


def _texture(rng: np.random.Generator, h: int, w: int, c1: np.ndarray,
             c2: np.ndarray, texture_prob: float) -> np.ndarray:
  """Class-independent fill pattern, (H, W, 3) uint8 (c1, c2: integer-valued colours)."""
  kind = int(rng.integers(1, 5)) if rng.random() < texture_prob else 0
  u1, u2 = c1.astype(np.uint8), c2.astype(np.uint8)
  if kind == 0:  # solid
    return np.broadcast_to(u1, (h, w, 3))
  yy = np.arange(h, dtype=np.float32)[:, None]
  xx = np.arange(w, dtype=np.float32)[None, :]
  if kind == 1:  # stripes
    a = rng.uniform(0, math.pi)
    period = rng.uniform(4, 10)
    sel = (np.floor((xx * math.cos(a) + yy * math.sin(a)) / period) % 2).astype(bool)
  elif kind == 2:  # checkerboard
    period = rng.uniform(4, 9)
    sel = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(bool)
  elif kind == 3:  # speckle
    sel = rng.random((h, w)) < rng.uniform(0.2, 0.5)
  else:  # smooth two-tone gradient
    a = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(a) + yy * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return np.clip(np.rint(c1 + t[..., None] * (c2 - c1)), 0, 255).astype(np.uint8)
  return np.where(sel[..., None], u2, u1)


def _place_object(rng: np.random.Generator, shape: str, h: int, w: int,
                  params: RenderParams) -> list[tuple[np.ndarray, bool]]:
  """Scales, stretches, rotates and translates a shape to fit inside the image."""
  side = min(h, w)
  scale = rng.uniform(*params.object_scale) * side / 2
  aspect = math.exp(rng.uniform(math.log(params.aspect[0]), math.log(params.aspect[1])))
  theta = math.radians(rng.uniform(-params.rotation, params.rotation))
  rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
  stretch = np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)])
  parts = [((p * stretch) @ rot.T * scale, f) for p, f in _SHAPES[shape]]
  pts = np.concatenate([p for p, _ in parts])
  lo, hi = pts.min(0), pts.max(0)
  # Room for the object's extent inside [MARGIN, size - 1 - MARGIN].
  room = np.array([w, h], np.float64) - 1 - 2 * MARGIN - 1
  shrink = min(1.0, float(np.min(room / np.maximum(hi - lo, 1e-6))))
  parts = [(p * shrink, f) for p, f in parts]
  lo, hi = lo * shrink, hi * shrink
  offset = rng.uniform(MARGIN + 0.5 - lo, np.array([w, h]) - 1.5 - MARGIN - hi)
  return [(p + offset, f) for p, f in parts]


@functools.lru_cache(maxsize=4)
def _noise_bank(max_size: int, std: float) -> tuple[np.ndarray, np.ndarray]:
  """Fixed Gaussian noise field (2*max_size, 2*max_size, 3); crops of it are the pixel noise."""
  bank = np.rint(std * np.random.default_rng(20240601).standard_normal(
      (2 * max_size, 2 * max_size, 3)))
  # Positive and negative parts as uint8, for cv2's saturating add/subtract.
  return np.clip(bank, 0, 255).astype(np.uint8), np.clip(-bank, 0, 255).astype(np.uint8)


@dataclasses.dataclass
class Example:
  """One rendered example: image (H,W,3) uint8, mask (H,W) bool, box, label."""
  image: np.ndarray
  mask: np.ndarray
  box: np.ndarray  # int64 (4,) [x0, y0, x1, y1], exclusive ends
  label: int


def render_example(rng: np.random.Generator, params: RenderParams) -> Example:
  """Draws one image with one object of a uniformly random class."""
  h = int(rng.integers(params.min_size, params.max_size + 1))
  w = int(rng.integers(params.min_size, params.max_size + 1))
  label = int(rng.integers(0, params.num_classes))
  bg_span, object_span = POLARITIES[params.polarity]
  bg, bg_colours = _background(rng, h, w, bg_span)
  canvas = Image.fromarray(bg)
  _draw_clutter(rng, canvas, params.clutter)

  parts = _place_object(rng, SHAPE_NAMES[label], h, w, params)
  mask_img = Image.new("L", (w, h), 0)
  draw = ImageDraw.Draw(mask_img)
  for poly, filled in parts:
    draw.polygon([tuple(p) for p in poly], fill=255 if filled else 0)
  mask = np.asarray(mask_img) > 0
  if not mask.any():  # degenerate rasterisation: retry with fresh randomness
    return render_example(rng, params)

  c1 = _contrasting_colour(rng, bg_colours, params.min_contrast, object_span)
  c2 = _contrasting_colour(rng, bg_colours + [c1], params.min_contrast / 2, object_span)
  image = np.array(canvas)
  rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
  y0, y1 = int(np.argmax(rows)), int(h - np.argmax(rows[::-1]))
  x0, x1 = int(np.argmax(cols)), int(w - np.argmax(cols[::-1]))
  tex = _texture(rng, y1 - y0, x1 - x0, c1, c2, params.texture_prob)
  sub = mask[y0:y1, x0:x1]
  image[y0:y1, x0:x1][sub] = tex[sub]
  if params.noise_std > 0:
    pos, neg = _noise_bank(params.max_size, float(params.noise_std))
    oy = int(rng.integers(0, pos.shape[0] - h + 1))
    ox = int(rng.integers(0, pos.shape[1] - w + 1))
    image = cv2.subtract(cv2.add(image, pos[oy:oy + h, ox:ox + w]), neg[oy:oy + h, ox:ox + w])
  box = np.array([x0, y0, x1, y1], np.int64)
  return Example(image=image, mask=mask, box=box, label=label)


# Images: PNG with stored (uncompressed) deflate blocks and no row filter. The
# pixel noise makes compression slow and weak (x0.5 size for x15 time), and
# stored PNGs also decode 2-3x faster in the training pipeline (~50 KB each).
# Masks compress to well under 1 KB at zlib level 1.
_PNG_IMAGE_FLAGS = [cv2.IMWRITE_PNG_COMPRESSION, 0,
                    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
_PNG_MASK_FLAGS = [cv2.IMWRITE_PNG_COMPRESSION, 1,
                   cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of an RGB (H,W,3) image or a gray (H,W) mask, uint8 (cv2 is BGR: flipped)."""
  flags = _PNG_IMAGE_FLAGS if array.ndim == 3 else _PNG_MASK_FLAGS
  if array.ndim == 3:
    array = array[..., ::-1]
  ok, buf = cv2.imencode(".png", np.ascontiguousarray(array), flags)
  if not ok:
    raise RuntimeError("PNG encoding failed")
  return buf.tobytes()


def render_examples(params: RenderParams, seed: int, split_code: int, split: str, start: int,
                    stop: int) -> list[tuple[int, dict]]:
  """Images [start, stop) of a split as (key, TFDS example) pairs.

  Image i uses ``np.random.default_rng([seed, split_code, i])``, so the data
  does not depend on how the range is split over processes. 'bbox' is the
  normalised [ymin, xmin, ymax, xmax] float64 array TFDS's BBoxFeature takes.
  """
  names = class_names(params.num_classes)
  out = []
  for i in range(start, stop):
    ex = render_example(np.random.default_rng([seed, split_code, i]), params)
    h, w = ex.mask.shape
    x0, y0, x1, y1 = (float(v) for v in ex.box)
    out.append((i, {
        "image": encode_png(ex.image),
        "image/filename": f"{names[ex.label]}/{split}_{i:06d}.png",
        "label": ex.label,
        "label_name": names[ex.label],
        "bbox": np.array([y0 / h, x0 / w, y1 / h, x1 / w], np.float64),
        "segmentation_mask": encode_png(ex.mask.astype(np.uint8) * 255),
    }))
  return out
