"""Formula-driven images for pretraining without natural images (``data.name='fractal'``).

Two families of categories, each a formula sampled from ``(seed, category)``:

* ``'ifs'`` — FractalDB (Kataoka et al., ACCV 2020): an iterated function system of 2–8
  random affine maps ``x -> A_i x + t_i`` drawn by the chaos game (map ``i`` picked with
  probability proportional to ``|det A_i|``). The maps are sampled by their singular values
  so that the system's σ-factor ``Σ_i (s1_i + 2 s2_i)`` lies in the band ``[(5 + N) / 2,
  (6 + N) / 2]`` (the σ-factor filter of Anderson & Farrell, "Improving Fractal
  Pre-training", WACV 2022, which keeps FractalDB-style systems from collapsing to dust or
  spreading to noise), every map contractive (``s1 < 1``), rotations and a reflection random;
  a system whose attractor fills less than ``fill_min`` of its bounding box (FractalDB's own
  filling-rate filter) is drawn again (up to ``_MAX_TRIES`` times).
* ``'contour'`` — RCDB (Kataoka et al., CVPR 2022): 1–6 concentric closed contours of a
  polygon with 3–20 vertices whose radii carry a category-fixed noise.

An instance (``(seed, category, instance)``, FractalDB's intra-category variation) perturbs
one map's (one contour's) parameters by up to ±``jitter``, and draws colours, the object's
scale and position on the black canvas, the canvas size and a horizontal flip; the class is
carried by the shape only. Points are drawn one pixel each (no anti-aliasing), so the box is
the tight box of the drawn pixels in the convention of ``synthetic_render`` (exclusive end,
``MARGIN`` pixels from every border).

The chaos game is numba-jitted and releases the GIL (grain's read threads render in
parallel); rendering is on the fly, record ``i`` of a split is category ``i // per_class``,
instance ``offset + i % per_class``, with train, val and test taking disjoint instance ranges
of every category (val and test: held-out instances of the training categories).

  python -m wsol_jax.data.fractal [sheet.png]   # render rate (images/s, one thread) [and a
                                                # contact sheet of 16 categories]
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Sequence

import numpy as np

from wsol_jax.data import records

FAMILIES = ("ifs", "contour")
SPLITS = ("train", "val", "test")
MARGIN = 2           # pixels kept free between the object and every border
_BURN_IN = 20        # chaos-game iterations before the point is on the attractor
_MAX_TRIES = 200     # category resampling attempts of the filling-rate filter


@dataclasses.dataclass(frozen=True)
class FractalParams:
  """The generator's parameters (``data.fractal`` in the config)."""
  num_classes: int = 256
  train_per_class: int = 1000
  val_per_class: int = 4
  test_per_class: int = 4
  seed: int = 0
  min_size: int = 64            # canvas side range (each side drawn independently)
  max_size: int = 80
  families: tuple[str, ...] = ("ifs",)   # classes are split evenly between the families
  num_points: int = 6000        # chaos-game points (IFS) / contour samples per image
  object_scale: tuple[float, float] = (0.5, 0.95)  # longest object side / free canvas side
  jitter: float = 0.1           # instance perturbation of one map's parameters (±fraction)
  fill_min: float = 0.1         # FractalDB filling-rate filter (of the attractor's box)

  def __post_init__(self):
    bad = [f for f in self.families if f not in FAMILIES]
    if not self.families or bad:
      raise ValueError(f"data.fractal.families must be a non-empty subset of {FAMILIES}, "
                       f"got {self.families!r}")
    if self.num_classes < len(self.families):
      raise ValueError(f"data.fractal.num_classes={self.num_classes} must be >= the "
                       f"{len(self.families)} families")
    if not 16 <= self.min_size <= self.max_size:
      raise ValueError(f"data.fractal sizes need 16 <= min_size <= max_size, got "
                       f"{self.min_size}, {self.max_size}")
    lo, hi = self.object_scale
    if not 0.05 <= lo <= hi <= 1.0:
      raise ValueError(f"data.fractal.object_scale must be 0.05 <= lo <= hi <= 1, "
                       f"got {self.object_scale}")
    for name in ("train_per_class", "val_per_class", "test_per_class"):
      if getattr(self, name) < 0:
        raise ValueError(f"data.fractal.{name} must be >= 0, got {getattr(self, name)}")

  @classmethod
  def from_config(cls, cfg: Any) -> "FractalParams":
    values = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"unknown data.fractal keys {unknown}; valid: {sorted(names)}")
    for key in ("families", "object_scale"):
      if key in values:
        values[key] = tuple(values[key])
    return cls(**values)

  def family_of(self, category: int) -> str:
    """Classes are split into contiguous, near-equal blocks, one per family."""
    return self.families[category * len(self.families) // self.num_classes]

  def split_range(self, split: str) -> tuple[int, int]:
    """``(first instance, instances per class)`` of a split."""
    if split not in SPLITS:
      raise ValueError(f"fractal dataset has splits {SPLITS}, got {split!r}")
    sizes = (self.train_per_class, self.val_per_class, self.test_per_class)
    i = SPLITS.index(split)
    return sum(sizes[:i]), sizes[i]


# ---- categories ---------------------------------------------------------------------------------

def _rot(a: float) -> np.ndarray:
  return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _sample_singular_values(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """``(n, 2)`` singular values ``1 > s1 >= s2 >= 0`` with ``Σ s1 + 2 s2 = sigma``."""
  cap = 3.0 * 0.999  # s1 + 2 s2 of one map is at most 3 (s1 = s2 = 1), kept contractive
  out = np.zeros((n, 2))
  rest = sigma
  for i in range(n):
    left = n - i - 1
    lo, hi = max(0.0, rest - cap * left), min(cap, rest)
    share = hi if left == 0 else rng.uniform(lo, hi)
    s2 = rng.uniform(max(0.0, (share - 0.999) / 2), share / 3)
    out[i] = (share - 2 * s2, s2)
    rest -= share
  return out[rng.permutation(n)]


def _ifs_maps(rng: np.random.Generator) -> np.ndarray:
  """``(N, 2, 3)`` affine maps ``[A | t]`` of one IFS category."""
  n = int(rng.integers(2, 9))
  sigma = rng.uniform((5 + n) / 2, (6 + n) / 2)
  maps = np.zeros((n, 2, 3))
  for i, (s1, s2) in enumerate(_sample_singular_values(n, sigma, rng)):
    d = np.diag([s1, s2 * rng.choice([-1.0, 1.0])])
    maps[i, :, :2] = _rot(rng.uniform(-math.pi, math.pi)) @ d @ _rot(rng.uniform(-math.pi, math.pi))
    maps[i, :, 2] = rng.uniform(-1.0, 1.0, 2)
  return maps


def _probabilities(maps: np.ndarray) -> np.ndarray:
  det = np.abs(np.linalg.det(maps[:, :, :2]))
  det = np.maximum(det, 1e-3 * max(det.max(), 1e-6))  # a degenerate map is still visited
  return np.cumsum(det / det.sum())


def _chaos_game(maps, cumprob, n, seed, out, which):  # compiled by _compiled_chaos_game
  np.random.seed(seed)
  x, y = 0.0, 0.0
  m = maps.shape[0]
  for i in range(n + _BURN_IN):
    r = np.random.random()
    k = 0
    while k < m - 1 and r > cumprob[k]:
      k += 1
    nx = maps[k, 0, 0] * x + maps[k, 0, 1] * y + maps[k, 0, 2]
    y = maps[k, 1, 0] * x + maps[k, 1, 1] * y + maps[k, 1, 2]
    x = nx
    if i >= _BURN_IN:
      out[i - _BURN_IN, 0] = x
      out[i - _BURN_IN, 1] = y
      which[i - _BURN_IN] = k


@functools.cache
def _compiled_chaos_game():
  import numba  # here: the data config imports this module, and numba takes a while to import
  return numba.njit(cache=True, nogil=True)(_chaos_game)


def _ifs_points(maps: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  pts, which = np.empty((n, 2)), np.empty(n, np.int64)
  _compiled_chaos_game()(np.ascontiguousarray(maps), _probabilities(maps), n, seed, pts, which)
  return pts, which


def _fill_rate(pts: np.ndarray, grid: int = 32) -> float:
  """Fraction of a ``grid``² raster of the points' (square) bounding box that they cover."""
  lo, span = pts.min(0), np.ptp(pts, 0).max()
  if not np.isfinite(span) or span <= 1e-9:
    return 0.0
  cells = np.minimum(((pts - lo) / span * grid).astype(np.int64), grid - 1)
  occupied = np.zeros((grid, grid), bool)
  occupied[cells[:, 1], cells[:, 0]] = True
  ext = np.ceil(np.ptp(pts, 0) / span * grid).clip(1, grid)  # the box's cells, not the square's
  return float(occupied.sum() / (ext[0] * ext[1]))


def _contour_shape(rng: np.random.Generator) -> dict[str, Any]:
  """One RCDB-like category: vertices, contours and the radial noise of every vertex."""
  vertices = int(rng.integers(3, 21))
  contours = int(rng.integers(1, 7))
  amplitude = rng.uniform(0.05, 0.4)
  return dict(vertices=vertices, radii=np.sort(rng.uniform(0.2, 1.0, contours))[::-1],
              noise=amplitude * rng.uniform(-1, 1, (contours, vertices)),
              phase=rng.uniform(0, 2 * math.pi, contours))


@functools.lru_cache(maxsize=4096)
def category(seed: int, index: int, family: str, fill_min: float) -> dict[str, Any]:
  """The formula of category ``index`` (cached: every record of a class reuses it)."""
  rng = np.random.default_rng([seed, FAMILIES.index(family), index])
  if family == "contour":
    return _contour_shape(rng)
  maps = _ifs_maps(rng)
  for _ in range(_MAX_TRIES):
    pts, _ = _ifs_points(maps, 4000, int(rng.integers(2**31)))
    if np.isfinite(pts).all() and _fill_rate(pts) >= fill_min:
      break
    maps = _ifs_maps(rng)
  return dict(maps=maps)


# ---- instances ----------------------------------------------------------------------------------

def _contour_points(shape: dict[str, Any], n: int, jitter: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  noise = shape["noise"].copy()
  k = rng.integers(noise.shape[0])
  noise[k] *= rng.uniform(1 - jitter, 1 + jitter)
  v, c = shape["vertices"], len(shape["radii"])
  per = max(n // (c * v), 2)
  pts, which = [], []
  t = np.linspace(0.0, 1.0, per, endpoint=False)[:, None]
  for j in range(c):
    ang = shape["phase"][j] + 2 * math.pi * np.arange(v) / v
    r = shape["radii"][j] * (1 + noise[j])
    corners = np.stack([r * np.cos(ang), r * np.sin(ang)], 1)
    nxt = np.roll(corners, -1, axis=0)
    seg = corners[:, None] + t[None] * (nxt - corners)[:, None]   # (v, per, 2)
    pts.append(seg.reshape(-1, 2))
    which.append(np.full(v * per, j))
  return np.concatenate(pts), np.concatenate(which)


def _jitter_maps(maps: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
  maps = maps.copy()
  k = rng.integers(len(maps))
  maps[k] *= rng.uniform(1 - jitter, 1 + jitter)
  s1 = np.linalg.svd(maps[k, :, :2], compute_uv=False)[0]
  if s1 >= 0.999:  # keep every map contractive
    maps[k, :, :2] *= 0.999 / s1
  return maps


def _palette(n: int, rng: np.random.Generator) -> np.ndarray:
  """``n`` bright colours around a random hue (uint8 RGB)."""
  hue = (rng.uniform() + rng.uniform(-0.15, 0.15, n)) % 1.0
  sat, val = rng.uniform(0.3, 1.0, n), rng.uniform(0.7, 1.0, n)
  i = (hue * 6).astype(int) % 6
  f = hue * 6 - np.floor(hue * 6)
  p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
  rgb = np.select([i[:, None] == j for j in range(6)], [
      np.stack(c, 1) for c in ((val, t, p), (q, val, p), (p, val, t), (p, q, val),
                                (t, p, val), (val, p, q))])
  return (rgb * 255).round().astype(np.uint8)


def render(params: FractalParams, index: int, instance: int) -> tuple[np.ndarray, np.ndarray]:
  """Image ``uint8 (H, W, 3)`` and tight box ``float32 (1, 4)`` of one instance of a category.

  Deterministic in ``(params.seed, index, instance)`` and the rendering parameters.
  """
  family = params.family_of(index)
  shape = category(params.seed, index, family, params.fill_min)
  rng = np.random.default_rng([params.seed, 1000 + FAMILIES.index(family), index, instance])
  if family == "ifs":
    maps = _jitter_maps(shape["maps"], params.jitter, rng)
    pts, which = _ifs_points(maps, params.num_points, int(rng.integers(2**31)))
    ok = np.isfinite(pts).all(1)
    pts, which = pts[ok], which[ok]
    n_colours = len(maps)
  else:
    pts, which = _contour_points(shape, params.num_points, params.jitter, rng)
    n_colours = len(shape["radii"])
  h, w = (int(v) for v in rng.integers(params.min_size, params.max_size + 1, 2))
  if rng.uniform() < 0.5:
    pts = pts * np.array([-1.0, 1.0])
  lo, span = pts.min(0), np.maximum(np.ptp(pts, 0), 1e-9)
  free = min(h, w) - 2 * MARGIN - 1
  size = rng.uniform(*params.object_scale) * free / span.max()   # pixels per unit
  extent = np.floor(span * size).astype(int)                     # (w, h) of the object - 1
  x0 = int(rng.integers(MARGIN, w - MARGIN - extent[0]))
  y0 = int(rng.integers(MARGIN, h - MARGIN - extent[1]))
  px = np.clip(np.floor((pts - lo) * size).astype(int), 0, extent) + (x0, y0)
  image = np.zeros((h, w, 3), np.uint8)
  image[px[:, 1], px[:, 0]] = _palette(n_colours, rng)[which]
  box = np.array([[px[:, 0].min(), px[:, 1].min(), px[:, 0].max() + 1, px[:, 1].max() + 1]],
                 np.float32)
  return image, box


class FractalSource:
  """A random-access record source rendering one split on the fly (``sources.Source``)."""
  has_masks = False

  def __init__(self, params: FractalParams, split: str):
    self.params = params
    self.split = split
    self.offset, self.per_class = params.split_range(split)
    self.num_classes = params.num_classes
    self.class_names = [f"{params.family_of(k)}_{k:04d}" for k in range(params.num_classes)]

  def __len__(self) -> int:
    return self.num_classes * self.per_class

  def __getitem__(self, index: int) -> records.Record:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"fractal {self.split}: record {index} of {len(self)}")
    label, instance = divmod(index, self.per_class)
    instance += self.offset
    image, box = render(self.params, label, instance)
    return records.make_record(image=image, label=label, boxes=box, index=index,
                               image_id=f"{self.split}/{label:04d}_{instance:06d}")

  def __repr__(self) -> str:
    return (f"FractalSource({self.split!r}, {self.num_classes} classes x {self.per_class}, "
            f"families={self.params.families})")


def render_rate(params: FractalParams, count: int = 200) -> float:
  """Images per second of ``render`` on this thread (categories already sampled)."""
  for k in range(params.num_classes):
    category(params.seed, k, params.family_of(k), params.fill_min)
  render(params, 0, 0)  # compile
  start = time.perf_counter()
  for i in range(count):
    render(params, i % params.num_classes, i)
  return count / (time.perf_counter() - start)


def contact_sheet(params: FractalParams, classes: Sequence[int], instances: int = 6
                  ) -> np.ndarray:
  """Rows of instances of ``classes`` on one uint8 image (for looking at the categories)."""
  s = params.max_size
  sheet = np.full((len(classes) * (s + 2), instances * (s + 2), 3), 40, np.uint8)
  for r, k in enumerate(classes):
    for c in range(instances):
      img, _ = render(params, k, c)
      sheet[r * (s + 2):r * (s + 2) + img.shape[0], c * (s + 2):c * (s + 2) + img.shape[1]] = img
  return sheet


if __name__ == "__main__":
  import sys
  for fams in (("ifs",), ("contour",)):
    p = FractalParams(num_classes=64, families=fams)
    print(f"{fams[0]}: {render_rate(p):.0f} images/s ({p.min_size}-{p.max_size} px, "
          f"{p.num_points} points, one thread)")
  if len(sys.argv) > 1:
    from PIL import Image
    p = FractalParams(num_classes=16, families=FAMILIES)
    Image.fromarray(contact_sheet(p, range(16))).save(sys.argv[1])
    print("wrote", sys.argv[1])
