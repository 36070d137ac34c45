"""Exact wsolevaluation V2 boxes without contour tracing: connected components, one sweep.

``cv2.findContours(U > T, RETR_TREE, ...)`` follows Suzuki–Abe with 8-connected foreground and
4-connected background on the image padded with 0, so its contours are in 1:1 correspondence
with

* the 8-connected foreground components (outer borders): ``boundingRect`` is the component's
  bounding box ``[x0, y0, x1, y1]`` (inclusive), V2 box ``[x0, y0, min(x1+1, W-1),
  min(y1+1, H-1)]``;
* the 4-connected background components that do not touch the image border (holes): the hole
  border runs through the foreground pixels 4-adjacent to the hole, so ``boundingRect`` is the
  hole's bounding box grown by one pixel on every side, V2 box ``[hx0-1, hy0-1,
  min(hx1+2, W-1), min(hy1+2, H-1)]``.

Checked against OpenCV 5.0 on every binary mask of shape 4x4, 2x8, 8x2, 3x5, 5x3, 3x4, 4x3,
1x12 and 12x1 and on 230k random masks (noise, checkerboards, nested rings with islands and
1-pixel rings, diagonal lines, dense maps with 1-pixel holes, non-square, border-touching)
with ~1M contours: no exception (``tests/test_eval_components.py`` keeps a share of it).

The masks ``U > T`` are nested, so one pass per map serves every threshold:

* quantisation (``uint8(255·S)`` in float64, as the official code) also buckets the pixels
  by value into linked lists;
* outer boxes: a union-find sweep adds the foreground pixels in decreasing U (8-neighbour
  unions; one union per run of in-set neighbours of the ring, from a lookup table; a box per
  root). It also tracks the Euler number (a 256-entry table of the neighbourhood pattern),
  which gives the number of holes at every level;
* hole boxes, only if some needed level has a hole: ``esc`` = grey-level hole filling of U (the
  lowest T at which a pixel's background reaches the border; Vincent's hybrid reconstruction).
  A pixel is in a hole at T iff ``U <= T < esc``; a union-find over just those pixels, in
  increasing U (4-neighbour unions), gives the holes, and a hole leaves whole at ``T = esc``.

At every needed level the best IoU over the current boxes and the GT boxes is read off a
per-root IoU cache (recomputed only for roots whose box changed). The IoU is the official
``inter / (area_a + area_b - inter)`` in float64 (0 on a non-positive denominator), so the
per-threshold best IoUs are bit-identical to the official loop; only the order of boxes within
a threshold differs from OpenCV's. V1 (the largest ``cv2.contourArea``) is not available here:
the polygon area of a traced contour has no exact component-level equivalent.

The kernels are ``numba.njit(cache=True)``: the first use compiles them (tens of seconds) and
stores the machine code next to this file (or in ``NUMBA_CACHE_DIR``); later processes load it
in about a second.
"""
from __future__ import annotations

from typing import Sequence

import numba
import numpy as np

from wsol_jax.eval.box_sets import ThresholdBoxes

_NO_CONTOUR = (0, 0, 0, 0)
# The 8-neighbourhood as a ring (dy, dx): consecutive entries are 4-adjacent to each other.
_RING_DY = (-1, -1, -1, 0, 1, 1, 1, 0)
_RING_DX = (-1, 0, 1, 1, 1, 0, -1, -1)
_NUM_LEVELS = 257  # thresholds T in [-1, 255] at index T + 1


def _ring_table(eight: bool) -> np.ndarray:
  """Neighbours to union with, for each in-set pattern of the 8-neighbourhood ring.

  Neighbours that are in the set and adjacent to each other are already in one component
  (every in-set adjacent pair was united when the later pixel was added), so one neighbour per
  run of the ring suffices. With 4-connectivity only the orthogonal neighbours are union
  candidates, but in-set diagonals still link them (consecutive ring entries are 4-adjacent).

  Returns:
    (256, 5) int64: row m (bit j set = ring entry j in the set) holds the number n of
    representatives, then n ring indices.
  """
  table = np.zeros((256, 5), np.int64)
  for m in range(256):
    inset = [(m >> j) & 1 == 1 for j in range(8)]
    label = list(range(8))
    for j in range(8):  # merge consecutive in-set ring entries
      k = (j + 1) % 8
      if inset[j] and inset[k]:
        old, new = label[k], label[j]
        label = [new if lab == old else lab for lab in label]
    reps, seen = [], set()
    for j in range(8):
      if inset[j] and (eight or j % 2 == 1) and label[j] not in seen:
        seen.add(label[j])
        reps.append(j)
    table[m, 0] = len(reps)
    table[m, 1:1 + len(reps)] = reps
  return table


def _euler_table() -> np.ndarray:
  """(256,) change of 4x the Euler number (8-connected foreground, 4-connected background)
  when a pixel with in-set ring pattern m joins the set.

  Gray's bit-quad formula ``E = (n(Q1) - n(Q3) - 2 n(QD)) / 4`` summed over the four 2x2 quads
  that contain the pixel. The Euler number is (#components - #holes), so the number of holes
  (= hole contours of ``findContours``) is known at every level for the price of a lookup.
  """
  def quad(q: np.ndarray) -> int:
    n = int(q.sum())
    return 1 if n == 1 else -1 if n == 3 else -2 if n == 2 and q[0, 0] == q[1, 1] else 0
  table = np.zeros(256, np.int64)
  for m in range(256):
    g = np.zeros((3, 3), np.int64)
    for j in range(8):
      g[1 + _RING_DY[j], 1 + _RING_DX[j]] = (m >> j) & 1
    for qy in (0, 1):
      for qx in (0, 1):
        without = g[qy:qy + 2, qx:qx + 2].copy()
        with_p = without.copy()
        with_p[1 - qy, 1 - qx] = 1
        table[m] += quad(with_p) - quad(without)
  return table


# Per ring pattern: [0] unions with 8-connectivity, [1] with 4-connectivity (``_ring_table``),
# [2, :, 0] the Euler-number change (``_euler_table``).
_TABLES = np.stack([_ring_table(True), _ring_table(False), np.zeros((256, 5), np.int64)])
_TABLES[2, :, 0] = _euler_table()


@numba.njit(cache=True, nogil=True, inline="always")
def _ring_mask_u(parent: np.ndarray, p: np.uint64, wp: np.uint64) -> int:
  """Bit j set when ring neighbour j of padded index p is in the set (parent >= 0).

  Unsigned indices: numba emits no negative-index wraparound code for them.
  """
  one = np.uint64(1)
  return ((((parent[p - wp - one] >> 31) & 1) ^ 1)
          | ((((parent[p - wp] >> 31) & 1) ^ 1) << 1)
          | ((((parent[p - wp + one] >> 31) & 1) ^ 1) << 2)
          | ((((parent[p + one] >> 31) & 1) ^ 1) << 3)
          | ((((parent[p + wp + one] >> 31) & 1) ^ 1) << 4)
          | ((((parent[p + wp] >> 31) & 1) ^ 1) << 5)
          | ((((parent[p + wp - one] >> 31) & 1) ^ 1) << 6)
          | ((((parent[p - one] >> 31) & 1) ^ 1) << 7))


@numba.njit(cache=True, nogil=True, inline="always")
def _find_u(parent: np.ndarray, i: np.uint64) -> np.uint64:
  """Root of ``i`` (unsigned index) with path halving."""
  while True:
    a = np.uint64(parent[i])
    if a == i:
      return i
    b = np.uint64(parent[a])
    if b == a:
      return a
    parent[i] = np.int32(b)
    i = b


@numba.njit(cache=True, nogil=True)
def _box_iou(x0: int, y0: int, x1: int, y1: int, gt: np.ndarray) -> float:
  """Max IoU (official +1 convention, float64) of one box against the GT rows with x0 >= 0."""
  best = -1.0
  area_a = (x1 - x0 + 1) * (y1 - y0 + 1)
  for g in range(gt.shape[0]):
    gx0, gy0, gx1, gy1 = gt[g, 0], gt[g, 1], gt[g, 2], gt[g, 3]
    if gx0 < 0:
      continue
    iw = min(x1, gx1) - max(x0, gx0) + 1
    ih = min(y1, gy1) - max(y0, gy0) + 1
    inter = max(0, iw) * max(0, ih)
    denominator = area_a + (gx1 - gx0 + 1) * (gy1 - gy0 + 1) - inter
    iou = inter / denominator if denominator > 0 else 0.0
    if iou > best:
      best = iou
  return best


# Per-node record (int32): size, x0, y0, x1, y1 (padded coordinates), position in the active
# list (-1: inactive), stale flag (box changed since its IoU was computed).
_SIZE, _X0, _Y0, _X1, _Y1, _POS, _STALE = range(7)
_NODE_FIELDS = 8  # 32 bytes: one node per half cache line


@numba.njit(cache=True, nogil=True, inline="always")
def _mark_stale(node: np.ndarray, stale: np.ndarray, n_stale: int, r: int) -> int:
  if node[r, _STALE] == 0:
    node[r, _STALE] = 1
    stale[n_stale] = r
    n_stale += 1
  return n_stale


@numba.njit(cache=True, nogil=True, inline="always")
def _grow(node: np.ndarray, r: int, x0: int, y0: int, x1: int, y1: int) -> bool:
  """Grows root r's box by [x0, y0, x1, y1]; True if it changed."""
  changed = False
  if x0 < node[r, _X0]:
    node[r, _X0] = x0
    changed = True
  if y0 < node[r, _Y0]:
    node[r, _Y0] = y0
    changed = True
  if x1 > node[r, _X1]:
    node[r, _X1] = x1
    changed = True
  if y1 > node[r, _Y1]:
    node[r, _Y1] = y1
    changed = True
  return changed


@numba.njit(cache=True, nogil=True, inline="always")
def _new_root(node: np.ndarray, parent: np.ndarray, p: int, x: int, y: int) -> None:
  parent[p] = p
  node[p, _SIZE] = 1
  node[p, _X0] = x
  node[p, _Y0] = y
  node[p, _X1] = x
  node[p, _Y1] = y
  node[p, _STALE] = 0


@numba.njit(cache=True, nogil=True, inline="always")
def _activate(node: np.ndarray, act: np.ndarray, n_act: int, r: int) -> int:
  node[r, _POS] = n_act
  act[n_act] = r
  return n_act + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _deactivate(node: np.ndarray, act: np.ndarray, act_iou: np.ndarray, n_act: int, r: int
                ) -> int:
  """Swap-removes root r from the active list (and its cached IoU)."""
  i = node[r, _POS]
  last = act[n_act - 1]
  act[i] = last
  act_iou[i] = act_iou[n_act - 1]
  node[last, _POS] = i
  node[r, _POS] = -1
  return n_act - 1


@numba.njit(cache=True, nogil=True)
def _append(buf: np.ndarray, n: int, level: int, x0: int, y0: int, x1: int, y1: int
            ) -> np.ndarray:
  """Appends ``[level, x0, y0, x1, y1]`` at row n of a growable (N, 5) buffer."""
  if n == buf.shape[0]:
    grown = np.empty((2 * n + 64, 5), np.int64)
    grown[:n] = buf[:n]
    buf = grown
  buf[n, 0] = level
  buf[n, 1] = x0
  buf[n, 2] = y0
  buf[n, 3] = x1
  buf[n, 4] = y1
  return buf


@numba.njit(cache=True, nogil=True)
def _level_best(node: np.ndarray, parent: np.ndarray, act: np.ndarray, act_iou: np.ndarray,
                n_act: int, stale: np.ndarray, n_stale: int, gt: np.ndarray, hole: bool,
                width: int, height: int) -> float:
  """Refreshes the IoUs of stale active roots; max IoU over the active roots (-1 if none)."""
  grow = 1 if hole else 0  # hole box: the hole's box grown by one pixel (padded coordinates)
  for i in range(n_stale):
    r = stale[i]
    node[r, _STALE] = 0
    j = node[r, _POS]
    if parent[r] != r or j < 0:
      continue
    act_iou[j] = _box_iou(node[r, _X0] - 1 - grow, node[r, _Y0] - 1 - grow,
                          min(node[r, _X1] + grow, width - 1),
                          min(node[r, _Y1] + grow, height - 1), gt)
  best = -1.0
  for j in range(n_act):
    if act_iou[j] > best:
      best = act_iou[j]
  return best


@numba.njit(cache=True, nogil=True)
def _record_level(rec: np.ndarray, n_rec: int, level: int, node: np.ndarray, act: np.ndarray,
                  n_act: int, hole: bool, width: int, height: int) -> tuple[np.ndarray, int]:
  grow = 1 if hole else 0
  for j in range(n_act):
    r = act[j]
    rec = _append(rec, n_rec, level, node[r, _X0] - 1 - grow, node[r, _Y0] - 1 - grow,
                  min(node[r, _X1] + grow, width - 1), min(node[r, _Y1] + grow, height - 1))
    n_rec += 1
  return rec, n_rec


@numba.njit(cache=True, nogil=True)
def _quantize(s: np.ndarray, up: np.ndarray, hist: np.ndarray, head: np.ndarray,
              link: np.ndarray) -> tuple[int, float, float, bool]:
  """``U = uint8(255·S)`` (float64 product, truncation) into the padded ``up``, bucketed.

  Also fills the histogram and, per value v, a linked list of its pixels (instead of a
  counting sort): ``head[v]`` is the first pixel as padded coordinates ``y << 16 | x`` (-1:
  none) and ``link[p]`` the one after padded index p. The padding of ``up`` is 255 (see
  ``_escape_levels``). Values outside [0, 1] or NaN (which the caller rejects) are clamped so
  that nothing is undefined.

  Returns:
    max U, min S, max S, whether S has a NaN.
  """
  height, width = s.shape
  wp = width + 2
  up[:wp] = 255
  up[(height + 1) * wp:(height + 2) * wp] = 255
  hist[:] = 0
  head[:] = -1
  lo, hi, nan = np.inf, -np.inf, False
  for y in range(height):
    row = (y + 1) * wp
    up[row] = 255
    up[row + wp - 1] = 255
    for x in range(width):
      v = s[y, x]
      if v < lo:
        lo = v
      if v > hi:
        hi = v
      if v != v:
        nan = True
      w = v * 255.0
      q = int(w) if 0.0 <= w < 256.0 else 0
      p = row + x + 1
      up[p] = q
      hist[q] += 1
      link[p] = head[q]
      head[q] = (y + 1) << 16 | (x + 1)
  u_max = 255
  while u_max > 0 and hist[u_max] == 0:
    u_max -= 1
  return u_max, lo, hi, nan


@numba.njit(cache=True, nogil=True)
def _pad(u: np.ndarray, up: np.ndarray, hist: np.ndarray, head: np.ndarray, link: np.ndarray
         ) -> None:
  """``_quantize`` for an already quantised uint8 U."""
  height, width = u.shape
  wp = width + 2
  up[:wp] = 255
  up[(height + 1) * wp:(height + 2) * wp] = 255
  hist[:] = 0
  head[:] = -1
  for y in range(height):
    row = (y + 1) * wp
    up[row] = 255
    up[row + wp - 1] = 255
    for x in range(width):
      q = u[y, x]
      p = row + x + 1
      up[p] = q
      hist[q] += 1
      link[p] = head[q]
      head[q] = (y + 1) << 16 | (x + 1)


@numba.njit(cache=True, nogil=True)
def _foreground(height: int, width: int, head: np.ndarray, link: np.ndarray, need: np.ndarray,
                t_min: int, gt: np.ndarray, tables: np.ndarray, parent: np.ndarray,
                node: np.ndarray, act: np.ndarray, act_iou: np.ndarray, stale: np.ndarray,
                level_best: np.ndarray, has_holes: np.ndarray, record: bool, rec: np.ndarray,
                n_rec: int) -> tuple[np.ndarray, int]:
  """Outer boxes: 8-connected components of ``U > T`` for T decreasing from 255 to t_min.

  Writes ``level_best[T + 1]`` (best IoU of the outer boxes, or of ``[0, 0, 0, 0]`` when the
  foreground is empty) and ``has_holes[T + 1]`` (from the Euler number) at every needed level;
  with ``record`` appends the boxes to ``rec``.
  """
  wp = width + 2
  n_pad = (height + 2) * wp
  ring = np.empty(8, np.int64)
  for j in range(8):
    ring[j] = _RING_DY[j] * wp + _RING_DX[j]
  table8 = tables[0]
  euler = tables[2, :, 0]
  euler4 = 0  # 4x the Euler number of the foreground
  # Per pattern: the number of neighbours to union with and their (wrapped uint64) offsets.
  count = np.empty(256, np.int64)
  offs = np.empty((256, 4), np.uint64)
  for m in range(256):
    count[m] = table8[m, 0]
    for j in range(4):
      offs[m, j] = ring[table8[m, j + 1]] if j < count[m] else 0
  uwp = np.uint64(wp)
  parent[:n_pad] = -1
  n_act = np.int64(0)  # np.int64(): no literal types, so one compilation per callee
  n_stale = np.int64(0)
  best = -1.0
  changed = True
  if need[256]:  # T = 255: empty foreground
    level_best[256] = _box_iou(np.int64(0), np.int64(0), np.int64(0), np.int64(0), gt)
    if record:
      zero = np.int64(0)
      rec = _append(rec, n_rec, np.int64(255), zero, zero, zero, zero)
      n_rec += 1
  for v in range(255, t_min, -1):
    yx = head[v]
    changed |= yx >= 0
    while yx >= 0:
      y = yx >> 16
      x = yx & 0xffff
      p = np.uint64(y) * uwp + np.uint64(x)
      yx = link[p]
      m = _ring_mask_u(parent, p, uwp)
      euler4 += euler[m]
      n_reps = count[m]
      if n_reps == 0:  # a new component
        q = np.int64(p)
        _new_root(node, parent, q, x, y)
        n_act = _activate(node, act, n_act, q)
        n_stale = _mark_stale(node, stale, n_stale, q)
        continue
      r = _find_u(parent, p + offs[m, 0])  # p joins its first neighbouring component
      parent[p] = np.int32(r)
      node[r, _SIZE] += 1
      if _grow(node, r, x, y, x, y):
        n_stale = _mark_stale(node, stale, n_stale, np.int64(r))
      for j in range(1, n_reps):  # and merges the others into it
        s = _find_u(parent, p + offs[m, j])
        if s == r:
          continue
        if node[r, _SIZE] < node[s, _SIZE]:
          r, s = s, r
        parent[s] = np.int32(r)
        node[r, _SIZE] += node[s, _SIZE]
        if _grow(node, r, node[s, _X0], node[s, _Y0], node[s, _X1], node[s, _Y1]):
          n_stale = _mark_stale(node, stale, n_stale, np.int64(r))
        n_act = _deactivate(node, act, act_iou, n_act, np.int64(s))
    level = v - 1  # the foreground is now U >= v, i.e. U > v - 1
    if not need[level + 1]:
      continue
    if changed:
      best = _level_best(node, parent, act, act_iou, n_act, stale, n_stale, gt,
                         np.bool_(False), width, height)
      n_stale = np.int64(0)
      if n_act == 0:
        best = _box_iou(np.int64(0), np.int64(0), np.int64(0), np.int64(0), gt)
      changed = False
    level_best[level + 1] = best
    has_holes[level + 1] = 4 * n_act > euler4  # holes = components - Euler number
    if record:
      rec, n_rec = _record_level(rec, n_rec, level, node, act, n_act, np.bool_(False), width,
                                 height)
      if n_act == 0:
        zero = np.int64(0)
        rec = _append(rec, n_rec, level, zero, zero, zero, zero)
        n_rec += 1
  return rec, n_rec


@numba.njit(cache=True, nogil=True)
def _escape_levels(height: int, width: int, up: np.ndarray, esc: np.ndarray, stack: np.ndarray,
                   queued: np.ndarray, holes: np.ndarray, need: np.ndarray) -> int:
  """Grey-level hole filling: the level at which each pixel's background reaches the border.

  ``esc[p]`` is the min over 4-paths from p to the image border of the max U on the path, i.e.
  the reconstruction by erosion of U from its border values; a background pixel (U <= T) is in
  a hole at T exactly when T < esc[p]. Computed with Vincent's hybrid algorithm (a raster and
  an anti-raster scan, then a queue for what the scans miss; the queue is a stack here: the
  propagation converges to the same fixpoint in any order). The padding of ``up`` and ``esc``
  is 255, so it never lowers a neighbour and is never queued.

  Returns:
    The number n of pixels in a hole at some needed level T (U <= T < esc), listed in
    ``holes[:n]`` as padded coordinates ``y << 16 | x``. The other pixels are never in a hole
    at a needed level, so they never connect hole pixels there.
  """
  wp = width + 2
  n_pad = (height + 2) * wp
  esc[:n_pad] = 255
  for y in (1, height):
    esc[y * wp + 1:y * wp + 1 + width] = up[y * wp + 1:y * wp + 1 + width]
  for y in range(1, height + 1):
    esc[y * wp + 1] = up[y * wp + 1]
    esc[y * wp + width] = up[y * wp + width]
  uwp = np.uint64(wp)
  one = np.uint64(1)
  for y in range(2, height):  # raster scan over the interior: N and W neighbours
    row = np.uint64(y * wp)
    left = esc[row + one]
    for x in range(2, width):
      p = row + np.uint64(x)
      e = max(min(left, esc[p - uwp]), up[p])
      left = e
      esc[p] = e
  # Anti-raster scan (S and E neighbours). It also seeds a stack with the pixels that can
  # still lower their (final) E or S neighbour, branch-free (noise makes the test
  # unpredictable); N and W are lowered by the scan itself.
  n_stack = 0
  queued[:n_pad] = 0
  for y in range(height - 1, 1, -1):
    row = np.uint64(y * wp)
    right = esc[row + np.uint64(width)]
    for x in range(width - 1, 1, -1):
      p = row + np.uint64(x)
      south = esc[p + uwp]
      e = max(min(esc[p], right, south), up[p])
      lower = ((right > e) & (right > up[p + one])) | ((south > e) & (south > up[p + uwp]))
      right = e
      esc[p] = e
      stack[n_stack] = p
      queued[p] = lower
      n_stack += lower
  while n_stack > 0:  # propagation; a pixel is on the stack at most once at a time
    n_stack -= 1
    p = np.uint64(stack[n_stack])
    queued[p] = 0
    e = esc[p]
    for q in (p - uwp, p - one, p + one, p + uwp):
      if esc[q] > e and esc[q] != up[q]:
        esc[q] = max(e, up[q])
        if queued[q] == 0:
          stack[n_stack] = q
          n_stack += 1
          queued[q] = 1
  next_need = np.empty(257, np.int64)  # the smallest needed T >= v
  next_need[256] = 256
  for v in range(255, -1, -1):
    next_need[v] = v if need[v + 1] else next_need[v + 1]
  n_holes = 0
  for y in range(2, height):
    row = y * wp
    for x in range(2, width):
      p = row + x
      holes[n_holes] = y << 16 | x
      n_holes += next_need[up[p]] < esc[p]
  return n_holes


@numba.njit(cache=True, nogil=True)
def _holes(height: int, width: int, up: np.ndarray, esc: np.ndarray, holes: np.ndarray,
           n_holes: int, need: np.ndarray, t_max: int, gt: np.ndarray, parent: np.ndarray,
           node: np.ndarray, act: np.ndarray, act_iou: np.ndarray, stale: np.ndarray,
           order: np.ndarray, nxt: np.ndarray, tables: np.ndarray, level_best: np.ndarray,
           record: bool, rec: np.ndarray, n_rec: int) -> tuple[np.ndarray, int]:
  """Hole boxes: 4-connected components of the pixels with U <= T < esc.

  A background component is a hole at T iff its pixels have esc > T (esc is constant on a
  background component), so the holes at T are the components of those pixels, and a hole
  component leaves, whole, at T = esc. ``holes[:n_holes]`` are the pixels that matter
  (``_escape_levels``). Writes ``level_best[T + 1]`` (-1 when there is no hole)
  at every needed level; with ``record`` appends the boxes to ``rec``.
  """
  wp = width + 2
  n_pad = (height + 2) * wp
  table4 = tables[1]
  ring = np.empty(8, np.int64)
  for j in range(8):
    ring[j] = _RING_DY[j] * wp + _RING_DX[j]
  start = np.zeros(257, np.int64)  # counting sort of the hole pixels by value
  for i in range(n_holes):
    yx = holes[i]
    start[up[(yx >> 16) * wp + (yx & 0xffff)] + 1] += 1
  for v in range(256):
    start[v + 1] += start[v]
  fill = start[:256].copy()
  for i in range(n_holes):
    yx = holes[i]
    v = up[(yx >> 16) * wp + (yx & 0xffff)]
    order[fill[v]] = yx
    fill[v] += 1
  exit_head = np.full(256, -1, np.int32)  # roots by the level at which they leave
  parent[:n_pad] = -1
  n_act = np.int64(0)  # np.int64(): no literal types, so one compilation per callee
  n_stale = np.int64(0)
  best = -1.0
  changed = True
  uwp = np.uint64(wp)
  count = np.empty(256, np.int64)  # as in _foreground, for 4-connectivity
  offs = np.empty((256, 4), np.uint64)
  for m in range(256):
    count[m] = table4[m, 0]
    for j in range(4):
      offs[m, j] = ring[table4[m, j + 1]] if j < count[m] else 0
  for level in range(t_max + 1):
    for i in range(start[level], start[level + 1]):
      yx = order[i]
      y = yx >> 16
      x = yx & 0xffff
      p = np.uint64(y) * uwp + np.uint64(x)
      changed = True
      m = _ring_mask_u(parent, p, uwp)
      n_reps = count[m]
      if n_reps == 0:  # a new hole
        q = np.int64(p)
        _new_root(node, parent, q, x, y)
        n_act = _activate(node, act, n_act, q)
        n_stale = _mark_stale(node, stale, n_stale, q)
        nxt[q] = exit_head[esc[q]]
        exit_head[esc[q]] = q
        continue
      r = _find_u(parent, p + offs[m, 0])
      parent[p] = np.int32(r)
      node[r, _SIZE] += 1
      if _grow(node, r, x, y, x, y):
        n_stale = _mark_stale(node, stale, n_stale, np.int64(r))
      for j in range(1, n_reps):
        s = _find_u(parent, p + offs[m, j])
        if s == r:
          continue
        if node[r, _SIZE] < node[s, _SIZE]:
          r, s = s, r
        parent[s] = np.int32(r)
        node[r, _SIZE] += node[s, _SIZE]
        if _grow(node, r, node[s, _X0], node[s, _Y0], node[s, _X1], node[s, _Y1]):
          n_stale = _mark_stale(node, stale, n_stale, np.int64(r))
        n_act = _deactivate(node, act, act_iou, n_act, np.int64(s))
    h = np.int64(exit_head[level])
    while h >= 0:  # components that reach the border at this level
      if parent[h] == h and node[h, _POS] >= 0:
        n_act = _deactivate(node, act, act_iou, n_act, h)
        changed = True
      h = np.int64(nxt[h])
    if not need[level + 1]:
      continue
    if changed:
      best = _level_best(node, parent, act, act_iou, n_act, stale, n_stale, gt,
                         np.bool_(True), width, height)
      n_stale = np.int64(0)
      changed = False
    level_best[level + 1] = best
    if record:
      rec, n_rec = _record_level(rec, n_rec, level, node, act, n_act, np.bool_(True), width,
                                 height)
  return rec, n_rec


@numba.njit(cache=True, nogil=True)
def _sweep_map(height: int, width: int, up: np.ndarray, head: np.ndarray, t: np.ndarray,
               gt: np.ndarray, out: np.ndarray, ws: np.ndarray, node: np.ndarray,
               act_iou: np.ndarray, esc: np.ndarray, flags: np.ndarray, tables: np.ndarray,
               record: bool, rec: np.ndarray) -> tuple[np.ndarray, int]:
  """Best V2 IoU at every threshold of one padded map (optionally the boxes of every level).

  Args:
    height, width: map size (H, W).
    up: ((H+2)(W+2),) uint8 padded U and head: (256,) int32 heads of the per-value pixel
      lists (see ``_quantize`` / ``_pad``; the links are ``ws[6]``).
    t: (K,) int64 integer thresholds, clipped to [-1, 255]; foreground is ``U > t``.
    gt: (G, 4) int64 GT boxes, rows with x0 < 0 are padding (at least one valid row).
    out: (K,) float64 output: best IoU per threshold.
    ws, node, act_iou, esc, flags: workspaces (see ``_workspace``).
    tables: ``_TABLES``.
    record: also record the boxes of every threshold level into ``rec``.
    rec: (N, 5) int64 growable buffer of ``[T, x0, y0, x1, y1]`` rows (record only).

  Returns:
    The (possibly reallocated) record buffer and its number of rows.
  """
  need = np.zeros(_NUM_LEVELS, np.bool_)  # the levels T asked for, at T + 1
  t_min, t_max = np.int64(255), np.int64(-1)
  for k in range(t.shape[0]):
    need[t[k] + 1] = True
    t_min = min(t_min, t[k])
    t_max = max(t_max, t[k])
  parent, act, stale, order, scratch = ws[0], ws[1], ws[2], ws[3], ws[4]
  fg_best = np.full(_NUM_LEVELS, -1.0)
  has_holes = np.zeros(_NUM_LEVELS, np.bool_)
  rec, n_rec = _foreground(height, width, head, ws[6], need, t_min, gt, tables, parent, node,
                           act, act_iou, stale, fg_best, has_holes, record, rec, np.int64(0))
  hole_best = np.full(_NUM_LEVELS, -1.0)
  # Only the needed levels with holes matter (none: no hole work at all).
  t_max_holes = np.int64(-1)
  for level in range(-1, 256):
    if has_holes[level + 1]:
      t_max_holes = level
  if t_max_holes >= 0:
    n_holes = _escape_levels(height, width, up, esc, order, flags, scratch, has_holes)
    rec, n_rec = _holes(height, width, up, esc, scratch, n_holes, has_holes, t_max_holes, gt,
                        parent, node, act, act_iou, stale, order, ws[5], tables, hole_best,
                        record, rec, n_rec)
  for k in range(t.shape[0]):
    out[k] = max(fg_best[t[k] + 1], hole_best[t[k] + 1])
  return rec, n_rec


def _workspace(height: int, width: int) -> tuple[np.ndarray, ...]:
  """ws (7, n) int32, node (n, 8) int32, act_iou (n,) float64, esc and flags (n,) uint8,
  tables."""
  n_pad = (height + 2) * (width + 2)
  return (np.empty((7, n_pad), np.int32), np.empty((n_pad, _NODE_FIELDS), np.int32),
          np.empty(n_pad, np.float64), np.empty(n_pad, np.uint8), np.empty(n_pad, np.uint8),
          _TABLES)


@numba.njit(cache=True, nogil=True, inline="always")
def _int_threshold(tau: float, u_max: int) -> int:
  """``int(τ·max U)`` in float64 (truncation), clipped to [-1, 255]."""
  x = tau * np.float64(u_max)
  if not x >= -1.0:  # also NaN
    return -1
  if x >= 255.0:
    return 255
  return int(x)


@numba.njit(cache=True, nogil=True)
def _evaluate_batch(maps: np.ndarray, taus: np.ndarray, gt: np.ndarray, out: np.ndarray,
                    stats: np.ndarray, tables: np.ndarray) -> None:
  """Quantise and evaluate float64 maps (B, H, W) against gt (B, G, 4) -> out (B, K).

  ``stats[b]`` receives (min S, max S, has NaN) for the caller's validity check.
  """
  height, width = maps.shape[1], maps.shape[2]
  n_pad = (height + 2) * (width + 2)
  ws = np.empty((7, n_pad), np.int32)
  node = np.empty((n_pad, _NODE_FIELDS), np.int32)
  act_iou = np.empty(n_pad, np.float64)
  esc = np.empty(n_pad, np.uint8)
  flags = np.empty(n_pad, np.uint8)
  up = np.empty(n_pad, np.uint8)
  hist = np.empty(256, np.int64)
  head = np.empty(256, np.int32)
  t = np.empty(taus.shape[0], np.int64)
  rec = np.empty((0, 5), np.int64)
  record = maps.shape[0] < 0  # False, but not a literal: shares _sweep_map's compilation
  for b in range(maps.shape[0]):
    u_max, lo, hi, nan = _quantize(maps[b], up, hist, head, ws[6])
    stats[b, 0] = lo
    stats[b, 1] = hi
    stats[b, 2] = 1.0 if nan else 0.0
    for k in range(taus.shape[0]):
      t[k] = _int_threshold(taus[k], u_max)
    _sweep_map(height, width, up, head, t, gt[b], out[b], ws, node, act_iou, esc, flags,
               tables, record, rec)


@numba.njit(cache=True, nogil=True)
def _sweep_batch(u: np.ndarray, t: np.ndarray, gt: np.ndarray, out: np.ndarray,
                 tables: np.ndarray) -> None:
  """Evaluates uint8 maps u (B, H, W) at integer thresholds t (B, K) -> out (B, K)."""
  height, width = u.shape[1], u.shape[2]
  n_pad = (height + 2) * (width + 2)
  ws = np.empty((7, n_pad), np.int32)
  node = np.empty((n_pad, _NODE_FIELDS), np.int32)
  act_iou = np.empty(n_pad, np.float64)
  esc = np.empty(n_pad, np.uint8)
  flags = np.empty(n_pad, np.uint8)
  up = np.empty(n_pad, np.uint8)
  hist = np.empty(256, np.int64)
  head = np.empty(256, np.int32)
  rec = np.empty((0, 5), np.int64)
  record = u.shape[0] < 0  # False, but not a literal: shares _sweep_map's compilation
  for b in range(u.shape[0]):
    _pad(u[b], up, hist, head, ws[6])
    _sweep_map(height, width, up, head, t[b], gt[b], out[b], ws, node, act_iou, esc, flags,
               tables, record, rec)


def _clip_thresholds(int_thresholds: Sequence[int] | np.ndarray) -> np.ndarray:
  return np.clip(np.asarray(int_thresholds, dtype=np.int64), -1, 255)


def check_size(height: int, width: int) -> None:
  """Raises ValueError for maps beyond the packed coordinates (H < 32765, W < 65533)."""
  if height + 2 >= 1 << 15 or width + 2 >= 1 << 16:
    raise ValueError(f"map {height}x{width} is too large for the component path; use "
                     "method='contours'")


def evaluate_maps(scoremaps: np.ndarray, thresholds: Sequence[float] | np.ndarray,
                  gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Best V2 IoU per map and threshold, straight from float64 score maps.

  Quantises (``uint8(255·S)``), derives ``T_k = int(τ_k·max U)`` and sweeps, all in one pass
  per map. The maps are not validated here: the caller checks ``stats`` (and the GT boxes).

  Args:
    scoremaps: (B, H, W) float64 maps.
    thresholds: (K,) score-map thresholds τ.
    gt_boxes: (B, G, 4) int GT boxes with ``-1``-padded rows.

  Returns:
    (B, K) float64 best IoUs and (B, 3) float64 stats (min, max, has NaN) of every map.
  """
  maps = np.ascontiguousarray(scoremaps, dtype=np.float64)
  check_size(*maps.shape[1:])
  taus = np.ascontiguousarray(thresholds, dtype=np.float64).reshape(-1)
  gt = np.ascontiguousarray(gt_boxes, dtype=np.int64)
  out = np.empty((len(maps), len(taus)), np.float64)
  stats = np.empty((len(maps), 3), np.float64)
  if len(maps):
    _evaluate_batch(maps, taus, gt, out, stats, _TABLES)
  return out, stats


def best_ious(u: np.ndarray, int_thresholds: Sequence[int] | np.ndarray,
              gt_boxes: np.ndarray) -> np.ndarray:
  """Best V2 IoU per threshold of one map, as the official loop.

  Args:
    u: (H, W) uint8 quantised map.
    int_thresholds: (K,) integer thresholds ``T_k`` (foreground ``U > T_k``).
    gt_boxes: (G, 4) int GT boxes, ``-1``-padded rows allowed; must be valid (see
      ``iou.valid_gt``) with at least one real box.

  Returns:
    (K,) float64 best IoUs.
  """
  return best_ious_batch(np.asarray(u)[None], np.asarray(int_thresholds)[None],
                         np.asarray(gt_boxes)[None])[0]


def best_ious_batch(u: np.ndarray, int_thresholds: np.ndarray, gt_boxes: np.ndarray
                    ) -> np.ndarray:
  """Best V2 IoU per map and threshold.

  Args:
    u: (B, H, W) uint8 quantised maps.
    int_thresholds: (B, K) integer thresholds of each map.
    gt_boxes: (B, G, 4) int GT boxes with ``-1``-padded rows; every map needs a real box and
      real boxes must be valid (checked by the caller; see ``iou.valid_gt``).

  Returns:
    (B, K) float64 best IoUs, bit-identical to the official accumulate loop.
  """
  u = np.ascontiguousarray(u, dtype=np.uint8)
  check_size(*u.shape[1:])
  t = np.ascontiguousarray(_clip_thresholds(int_thresholds))
  gt = np.ascontiguousarray(gt_boxes, dtype=np.int64)
  out = np.empty(t.shape, np.float64)
  if len(u):
    _sweep_batch(u, t, gt, out, _TABLES)
  return out


def component_boxes(u: np.ndarray, int_thresholds: Sequence[int] | np.ndarray,
                    gt_boxes: np.ndarray | None = None):
  """V2 boxes of ``U > T`` for every integer threshold, from connected components.

  Args:
    u: (H, W) uint8 quantised map.
    int_thresholds: (K,) integer thresholds ``T_k``.
    gt_boxes: optional (G, 4) GT boxes; when given, the best IoUs are returned too.

  Returns:
    ``ThresholdBoxes`` (within a mask: outer boxes, then hole boxes, in no particular
    order; the same multiset as OpenCV's), and, with ``gt_boxes``, the (K,) best IoUs.
  """
  u = np.ascontiguousarray(u, dtype=np.uint8)
  check_size(*u.shape)
  t = _clip_thresholds(int_thresholds)
  gt = (np.asarray([[0, 0, 0, 0]], np.int64) if gt_boxes is None
        else np.ascontiguousarray(np.asarray(gt_boxes, np.int64).reshape(-1, 4)))
  out = np.empty(len(t), np.float64)
  ws, node, act_iou, esc, flags, tables = _workspace(*u.shape)
  up = np.empty(len(act_iou), np.uint8)
  hist = np.empty(256, np.int64)
  head = np.empty(256, np.int32)
  _pad(u, up, hist, head, ws[6])
  rec, n_rec = _sweep_map(u.shape[0], u.shape[1], up, head, t, gt, out, ws, node, act_iou, esc,
                          flags, tables, True, np.empty((256, 5), np.int64))
  rec = rec[:n_rec]
  above = np.concatenate([[u.size], u.size - np.cumsum(hist)])  # above[T + 1] = #(U > T)
  _, first, mask_index = np.unique(above[t + 1], return_index=True, return_inverse=True)
  groups = []
  for level in t[first]:
    sel = rec[rec[:, 0] == level, 1:]
    groups.append(sel if len(sel) else np.asarray([_NO_CONTOUR], np.int64))
  tb = ThresholdBoxes(np.concatenate(groups).astype(np.int64),
                                np.asarray([len(g) for g in groups], np.int64),
                                mask_index.astype(np.int64))
  return tb if gt_boxes is None else (tb, out)
