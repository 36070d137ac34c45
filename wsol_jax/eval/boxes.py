"""Boxes from score maps with OpenCV contour semantics (wsolevaluation, TS-CAM, AG-CAM).

All variants binarise a uint8 map and read boxes off ``cv2.findContours``:

* **wsolevaluation** (``threshold_boxes``): ``U = uint8(255·S)``, ``T_k = int(τ_k·max U)``,
  foreground ``U > T_k``, ``RETR_TREE`` + ``CHAIN_APPROX_SIMPLE``; V1 keeps the contour with the
  largest ``cv2.contourArea`` (the first one in OpenCV's order on ties), V2 keeps every contour
  (holes included); box ``[x, y, min(x+w, W-1), min(y+h, H-1)]``; no contour -> ``[0, 0, 0, 0]``.
* **TS-CAM** (``tscam_boxes``): the same V1 selection at ``int(CAM_THR·max U)`` but the box is
  ``[x, y, x+w, y+h]`` (not clipped) and no contour gives ``[0, 0, 1, 1]``.
* **AG-CAM** (``agcam_boxes``): foreground ``S > 0.5`` in float, ``RETR_EXTERNAL`` +
  ``CHAIN_APPROX_NONE``, one unclipped ``[x, y, x+w, y+h]`` box per contour.

The threshold sweep does not call OpenCV once per threshold (the official loop does): the
distinct masks are cropped to their foreground rows/columns, stacked vertically on one canvas
with a zero row between tiles, and traced by ONE ``findContours`` call. Tiles never touch, so
every tile gets exactly the contours it would get alone, and a raster scan finishes a tile
before it starts the next, so the relative order of a tile's contours (which decides V1 ties)
is OpenCV's order for that mask alone. Bounding rectangles and shoelace areas are computed for
all contours at once in integer numpy arithmetic (exactly ``cv2.boundingRect`` and, doubled,
``cv2.contourArea``, whose vertices are integers).
"""
from __future__ import annotations

import threading
from typing import Sequence

import cv2
import numpy as np

from wsol_jax.eval import components
from wsol_jax.eval.box_sets import ThresholdBoxes

_NO_CONTOUR_WSOL = (0, 0, 0, 0)
_NO_CONTOUR_TSCAM = (0, 0, 1, 1)
_MAX_CANVAS_PIXELS = 1 << 23  # 8 MiB canvas; a 224x224 sweep of 100 thresholds needs < 5 MiB


def cam_thresholds(delta: float = 0.01) -> np.ndarray:
  """Score-map thresholds ``np.arange(0, 1, delta)`` (float64, 1 excluded) -> (K,)."""
  return np.arange(0, 1, delta)


def quantize(scoremap: np.ndarray, nan_to_zero: bool = False) -> np.ndarray:
  """``uint8(255·S)`` computed in the map's own float dtype (truncation) -> (H, W) uint8.

  wsolevaluation feeds float64 maps and TS-CAM float32 maps; pass the dtype the reference
  used for bit parity. With ``nan_to_zero`` non-finite values (TS-CAM's min-max of a constant
  map gives NaN) become 0, the value x86 numpy casts them to (wsolevaluation rejects NaN maps).
  """
  s = np.asarray(scoremap)
  if not np.issubdtype(s.dtype, np.floating):
    s = s.astype(np.float64)
  scaled = s * 255
  if nan_to_zero and not np.isfinite(scaled).all():
    scaled = np.where(np.isfinite(scaled), scaled, 0)
  return scaled.astype(np.uint8)


def integer_thresholds(u_max: int, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
  """``int(τ·max U)`` for every τ, in float64 as the official code -> (K,) int64."""
  taus = np.asarray(thresholds, dtype=np.float64)
  return np.trunc(taus * np.float64(u_max)).astype(np.int64)


def _contour_stats(contours: Sequence[np.ndarray], need_area: bool
                   ) -> tuple[np.ndarray, np.ndarray | None]:
  """Bounding rectangles (n, 4) ``[x, y, x_last, y_last]`` and doubled |area| of contours."""
  lens = np.fromiter(map(len, contours), dtype=np.int64, count=len(contours))
  pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
  starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
  x, y = pts[:, 0], pts[:, 1]
  rects = np.stack([np.minimum.reduceat(x, starts), np.minimum.reduceat(y, starts),
                    np.maximum.reduceat(x, starts), np.maximum.reduceat(y, starts)], axis=1)
  if not need_area:
    return rects, None
  nxt = np.arange(1, len(pts) + 1)
  nxt[starts + lens - 1] = starts  # closing edge of each polygon
  cross = x * y[nxt] - x[nxt] * y
  return rects, np.abs(np.add.reduceat(cross, starts))


def _first_max_per_group(group: np.ndarray, value: np.ndarray) -> np.ndarray:
  """Index of the first maximum of ``value`` within each group (groups in increasing order)."""
  order = np.lexsort((np.arange(len(group)), -value, group))
  g = group[order]
  return order[np.concatenate([[True], g[1:] != g[:-1]])]


_CANVAS = threading.local()


def _canvas(height: int, width: int) -> np.ndarray:
  """A per-thread reusable (height, width) uint8 buffer with unspecified contents."""
  buf = getattr(_CANVAS, "buf", None)
  if buf is None or buf.size < height * width:
    buf = _CANVAS.buf = np.empty(max(height * width, 1 << 20), np.uint8)
  return buf[:height * width].reshape(height, width)


def _trace_tiles(u: np.ndarray, t: np.ndarray, r0: np.ndarray, r1: np.ndarray, c0: np.ndarray,
                 c1: np.ndarray, multi_contour: bool) -> tuple[np.ndarray, np.ndarray]:
  """Traces the masks ``U > t_i`` cropped to rows r0..r1 / cols c0..c1 with one call.

  Returns:
    Per kept contour: the tile index (n,) in increasing order (OpenCV order within a tile)
    and its bounding rectangle (n, 4) ``[x, y, x_last, y_last]`` in map coordinates.
  """
  tile_h, tile_w = r1 - r0 + 1, c1 - c0 + 1
  tile_top = np.concatenate([[0], np.cumsum(tile_h + 1)[:-1]])  # one zero row between tiles
  canvas = _canvas(int(tile_top[-1] + tile_h[-1] + 1), int(tile_w.max()))
  for ti, top, h, w, y0, x0 in zip(t.tolist(), tile_top.tolist(), tile_h.tolist(),
                                   tile_w.tolist(), r0.tolist(), c0.tolist()):
    # cv2.threshold writes 0/1 into the canvas view (2.5x faster than numpy's >).
    cv2.threshold(u[y0:y0 + h, x0:x0 + w], ti, 1, cv2.THRESH_BINARY,
                  dst=canvas[top:top + h, :w])
    canvas[top:top + h, w:] = 0
    canvas[top + h] = 0
  contours = cv2.findContours(canvas, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
  rects, area2 = _contour_stats(contours, need_area=not multi_contour)
  tile = np.searchsorted(tile_top, rects[:, 1], side="right") - 1
  keep = (np.argsort(tile, kind="stable") if multi_contour
          else _first_max_per_group(tile, area2))
  tile = tile[keep]
  offset = np.stack([c0[tile], r0[tile] - tile_top[tile]] * 2, axis=1)
  return tile, rects[keep] + offset


def contour_boxes(u: np.ndarray, int_thresholds: Sequence[int] | np.ndarray, *,
                  multi_contour: bool, clip: bool = True,
                  no_contour_box: Sequence[int] = _NO_CONTOUR_WSOL) -> ThresholdBoxes:
  """Boxes of ``U > T`` for every integer threshold, as per-threshold ``findContours`` would.

  The distinct non-empty masks are traced together by ``_trace_tiles``.

  Args:
    u: (H, W) uint8 quantised score map.
    int_thresholds: (K,) integer thresholds ``T_k``; foreground is ``U > T_k``.
    multi_contour: keep every contour (V2) instead of the largest-area one (V1).
    clip: clip ``x+w``/``y+h`` to ``W-1``/``H-1`` (wsolevaluation) or not (TS-CAM).
    no_contour_box: box reported for an empty foreground.

  Returns:
    ThresholdBoxes with the boxes of the distinct masks.
  """
  u = np.ascontiguousarray(u, dtype=np.uint8)
  height, width = u.shape
  t = np.clip(np.asarray(int_thresholds, dtype=np.int64), -1, 255)
  hist = cv2.calcHist([u], [0], None, [256], [0, 256]).ravel().astype(np.int64)
  above = np.concatenate([[u.size], u.size - np.cumsum(hist)])  # above[t + 1] = #(U > t)
  # Foregrounds are nested, so masks with the same pixel count are the same mask.
  keys, first, mask_index = np.unique(above[t + 1], return_index=True, return_inverse=True)
  mask_t = t[first]
  n_masks = len(keys)
  counts = np.ones(n_masks, np.int64)
  nonempty = np.flatnonzero(keys > 0)
  if len(nonempty) == 0:
    return ThresholdBoxes(np.repeat(np.asarray([no_contour_box], np.int64), n_masks, axis=0),
                          counts, mask_index.astype(np.int64))

  # Foreground rows/columns of each mask from prefix/suffix maxima of the row/column maxima.
  tiles_t = mask_t[nonempty]
  row_max, col_max = u.max(axis=1), u.max(axis=0)
  r0 = np.searchsorted(np.maximum.accumulate(row_max), tiles_t, side="right")
  r1 = height - 1 - np.searchsorted(np.maximum.accumulate(row_max[::-1]), tiles_t, side="right")
  c0 = np.searchsorted(np.maximum.accumulate(col_max), tiles_t, side="right")
  c1 = width - 1 - np.searchsorted(np.maximum.accumulate(col_max[::-1]), tiles_t, side="right")
  # Trace in chunks of at most _MAX_CANVAS_PIXELS canvas pixels (bounded memory).
  chunk = np.cumsum((r1 - r0 + 2) * (c1 - c0 + 1)) // _MAX_CANVAS_PIXELS
  tiles, rects = [], []
  for c in np.unique(chunk):
    sel = np.flatnonzero(chunk == c)
    tile, rect = _trace_tiles(u, tiles_t[sel], r0[sel], r1[sel], c0[sel], c1[sel],
                              multi_contour)
    tiles.append(sel[tile])
    rects.append(rect)
  tile, rects = np.concatenate(tiles), np.concatenate(rects)
  counts[nonempty] = np.bincount(tile, minlength=len(nonempty))
  is_empty = np.repeat(keys == 0, counts)
  boxes = np.empty((int(counts.sum()), 4), np.int64)
  boxes[~is_empty] = np.concatenate([rects[:, :2], rects[:, 2:] + 1], axis=1)
  if clip:
    boxes[:, 2] = np.minimum(boxes[:, 2], width - 1)
    boxes[:, 3] = np.minimum(boxes[:, 3], height - 1)
  boxes[is_empty] = no_contour_box
  return ThresholdBoxes(boxes, counts, mask_index.astype(np.int64))


def threshold_boxes(scoremap: np.ndarray, thresholds: Sequence[float] | np.ndarray, *,
                    multi_contour: bool = False, method: str = "contours") -> ThresholdBoxes:
  """wsolevaluation ``compute_bboxes_from_scoremaps`` for one map.

  Args:
    scoremap: (H, W) float map in [0, 1] (quantised in its own dtype; the reference feeds
      float64).
    thresholds: (K,) score-map thresholds τ (e.g. ``cam_thresholds(0.01)``).
    multi_contour: V2 (all contours) instead of V1 (largest contour).
    method: ``"contours"`` (OpenCV, boxes in OpenCV's order) or ``"components"`` (V2 only:
      ``components.component_boxes``, the same boxes per threshold in another order).

  Returns:
    ThresholdBoxes; ``per_threshold()`` gives the official list of (n_k, 4) boxes.
  """
  u = quantize(scoremap)
  t = integer_thresholds(int(u.max()) if u.size else 0, thresholds)
  if method == "components":
    if not multi_contour:
      raise ValueError("method='components' gives V2 boxes only")
    return components.component_boxes(u, t)
  if method != "contours":
    raise ValueError(f"unknown method {method!r}")
  return contour_boxes(u, t, multi_contour=multi_contour, clip=True)


def tscam_boxes(scoremap: np.ndarray, cam_thrs: Sequence[float] | float) -> np.ndarray:
  """TS-CAM ``get_bboxes``: largest contour of ``U > int(θ·max U)``, unclipped.

  Args:
    scoremap: (H, W) resized, min-max normalised class map (TS-CAM passes float32).
    cam_thrs: one CAM_THR θ or a sequence of T of them.

  Returns:
    (4,) int64 ``[x, y, x+w, y+h]`` for a scalar θ, else (T, 4); ``[0, 0, 1, 1]`` when the
    foreground is empty.
  """
  scalar = np.ndim(cam_thrs) == 0
  u = quantize(scoremap, nan_to_zero=True)
  tb = contour_boxes(u, integer_thresholds(int(u.max()), np.atleast_1d(cam_thrs)),
                     multi_contour=False, clip=False, no_contour_box=_NO_CONTOUR_TSCAM)
  boxes = tb.boxes[tb.offsets[tb.mask_index]]
  return boxes[0] if scalar else boxes


def agcam_boxes(scoremap: np.ndarray, threshold: float = 0.5) -> np.ndarray:
  """AG-CAM ``getBoudingBox_multi``: a box per external contour of ``S > threshold``.

  Args:
    scoremap: (H, W) min-max normalised map.
    threshold: strict float threshold (AG-CAM's ``--threshold``, default 0.5).

  Returns:
    (N, 4) int64 unclipped ``[x, y, x+w, y+h]`` in OpenCV's contour order (N = 0 when the
    foreground is empty).
  """
  mask = (np.asarray(scoremap) > threshold).astype(np.uint8)
  contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[-2]
  if not contours:
    return np.zeros((0, 4), np.int64)
  rects, _ = _contour_stats(contours, need_area=False)
  return np.concatenate([rects[:, :2], rects[:, 2:] + 1], axis=1)
