"""V2 boxes from connected components: topology rule vs OpenCV, parity with the official loop."""
import itertools

import cv2
import numpy as np
import pytest

from wsol_jax.eval import box_accuracy, boxes, components, iou
import reference_boxes as reference


def _sorted_rows(a):
  return sorted(map(tuple, np.asarray(a).reshape(-1, 4).tolist()))


def _cv_rects(mask):
  """Inclusive bounding rectangles of all RETR_TREE contours of a 0/1 mask."""
  contours = cv2.findContours(mask.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
  return sorted((x, y, x + w - 1, y + h - 1) for x, y, w, h in map(cv2.boundingRect, contours))


def _component_rects(mask):
  """The claimed rule: 8-connected foreground boxes + enclosed 4-connected background boxes
  grown by one pixel (connected components by OpenCV, independent of ``components``)."""
  height, width = mask.shape
  out = []
  n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
  out += [(x, y, x + w - 1, y + h - 1) for x, y, w, h in stats[1:n, :4].tolist()]
  padded = np.zeros((height + 2, width + 2), np.uint8)
  padded[1:-1, 1:-1] = mask == 0
  padded[0, :] = padded[-1, :] = padded[:, 0] = padded[:, -1] = 1
  n, labels, stats, _ = cv2.connectedComponentsWithStats(padded, connectivity=4)
  out += [(x - 2, y - 2, x + w - 1, y + h - 1) for i, (x, y, w, h) in
          enumerate(stats[:n, :4].tolist()) if i > 0 and i != labels[0, 0]]
  return sorted(out)


def _masks(rng, n):
  """Binary masks: noise of any density, checkerboards, nested rings (islands in holes, 1-px
  rings), diagonal lines (diagonal-only contacts), blurred blobs; sizes 1..40, non-square."""
  for i in range(n):
    h, w = rng.integers(1, 41, 2)
    yy, xx = np.mgrid[0:h, 0:w]
    kind = i % 5
    if kind == 0:
      m = rng.random((h, w)) < rng.uniform(0.1, 0.97)
    elif kind == 1:
      s = rng.integers(1, 3)
      m = (((yy // s) + (xx // s)) % 2 == 1) ^ (rng.random((h, w)) < 0.1)
    elif kind == 2:
      cy, cx = rng.integers(0, h), rng.integers(0, w)
      r = np.maximum(abs(yy - cy), abs(xx - cx)) if rng.random() < 0.5 else np.hypot(yy - cy,
                                                                                    xx - cx)
      m = (r.astype(int) // rng.integers(1, 3)) % rng.integers(2, 5) == 0
    elif kind == 3:
      m = rng.random((h, w)) < 0.1
      for _ in range(rng.integers(1, 5)):
        d = rng.choice([-1, 1])
        m |= (yy - rng.integers(0, h)) == d * (xx - rng.integers(0, w))
    else:
      blur = cv2.GaussianBlur(rng.random((h, w)), (0, 0), rng.uniform(0.5, 3))
      m = blur > np.quantile(blur, rng.uniform(0.2, 0.8))
    yield m.astype(np.uint8)


def test_euler_table_counts_the_hole_contours():
  """Adding pixels in any order, the summed table entries are 4 (#components - #holes)."""
  table = components._TABLES[2, :, 0]
  rng = np.random.default_rng(5)
  for m in _masks(rng, 300):
    h, w = m.shape
    inset = np.zeros((h + 2, w + 2), np.int64)
    euler4 = 0
    for idx in rng.permutation(h * w):
      y, x = divmod(int(idx), w)
      if m[y, x]:
        pattern = sum(int(inset[1 + y + dy, 1 + x + dx]) << j for j, (dy, dx) in
                      enumerate(zip(components._RING_DY, components._RING_DX)))
        euler4 += table[pattern]
        inset[1 + y, 1 + x] = 1
    n_contours = len(_cv_rects(m))
    n_components = cv2.connectedComponents(m, connectivity=8)[0] - 1
    assert euler4 == 4 * (n_components - (n_contours - n_components))


def _component_boxes_of_mask(mask):
  """Unclipped inclusive rectangles as ``components`` sees them, from one threshold."""
  tb = components.component_boxes(mask.astype(np.uint8), [0])
  got = tb.per_threshold()[0]
  if mask.sum() == 0:
    assert got.tolist() == [[0, 0, 0, 0]]
    return []
  return got


def test_topology_rule_matches_findcontours_on_random_masks():
  rng = np.random.default_rng(0)
  n_contours = 0
  for m in _masks(rng, 1500):
    rule = _component_rects(m)
    assert _cv_rects(m) == rule, m
    n_contours += len(rule)
  assert n_contours > 20000


@pytest.mark.parametrize("shape", [(3, 4), (4, 3), (2, 6), (1, 9)])
def test_topology_rule_matches_findcontours_on_all_small_masks(shape):
  n = shape[0] * shape[1]
  for bits in itertools.product((0, 1), repeat=n):
    m = np.array(bits, np.uint8).reshape(shape)
    assert _cv_rects(m) == _component_rects(m), m


def test_component_boxes_of_masks_are_the_clipped_opencv_boxes():
  rng = np.random.default_rng(1)
  for m in itertools.islice(_masks(rng, 400), 400):
    h, w = m.shape
    ref = reference.compute_bboxes_from_scoremaps(m.astype(np.float64), [0.5], True)[0][0]
    got = _component_boxes_of_mask(m)
    if m.sum() == 0:
      assert ref.tolist() == [[0, 0, 0, 0]]
      continue
    assert _sorted_rows(got) == _sorted_rows(ref)
    rule = np.array(_component_rects(m))
    rule[:, 2:] = np.minimum(rule[:, 2:] + 1, [w - 1, h - 1])
    assert _sorted_rows(got) == _sorted_rows(rule)


def test_hole_rule_special_cases():
  # Nested holes with an island, a 1-pixel ring, and a hole touching the border only
  # diagonally (4-connectivity: it is enclosed).
  m = np.zeros((12, 16), np.uint8)
  m[1:11, 1:11] = 1
  m[3:9, 3:9] = 0
  m[4:8, 4:8] = 1  # an island in the hole
  m[5:7, 5:7] = 0  # a hole in the island
  m[0:3, 13:16] = 1
  m[1, 14] = 0  # a 1-pixel hole in a 1-pixel-wide ring at the border
  m[11, 12] = m[10, 13] = 1  # a diagonal pair
  got = _sorted_rows(components.component_boxes(m, [0]).per_threshold()[0])
  ref = _sorted_rows(reference.compute_bboxes_from_scoremaps(m.astype(np.float64), [0.5],
                                                            True)[0][0])
  assert got == ref
  assert got == sorted([(1, 1, 11, 11), (2, 2, 10, 10),  # outer square and its hole
                        (4, 4, 8, 8), (4, 4, 8, 8),  # island and its hole
                        (13, 0, 15, 3), (13, 0, 15, 3),  # small ring and its 1-px hole
                        (12, 10, 14, 11)])  # diagonal pair
  d = np.ones((5, 5), np.uint8)
  d[1, 1] = 0
  d[0, 0] = 0  # (1, 1) meets the border pixel (0, 0) only diagonally: still a hole
  assert _cv_rects(d) == _component_rects(d) == [(0, 0, 2, 2), (0, 0, 4, 4)]
  assert _sorted_rows(components.component_boxes(d, [0]).per_threshold()[0]) == [
      (0, 0, 3, 3), (0, 0, 4, 4)]


def _maps(rng, n, shape=None):
  """Float64 maps in [0, 1] of many kinds and shapes (incl. 1-pixel wide, non-square)."""
  kinds = ("smooth", "noisy", "plateaus", "rings", "checker", "border", "dots", "cam", "binary",
           "constant")
  for i in range(n):
    kind = kinds[i % len(kinds)]
    h, w = (shape if shape is not None else rng.integers(1, 48, 2) if i % 7
            else rng.integers(1, 4, 2) * rng.integers(1, 20, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "smooth":
      m = np.zeros((h, w))
      for _ in range(rng.integers(1, 5)):
        cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, 10)
        m += rng.uniform(0.2, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
      if rng.random() < 0.5:
        m += rng.uniform(0, 0.03, m.shape) * m.max()
    elif kind == "noisy":
      m = rng.random((h, w)) ** rng.uniform(0.3, 4)
    elif kind == "plateaus":
      b = rng.integers(1, 6)
      m = np.kron(rng.integers(0, 5, (h // b + 1, w // b + 1)), np.ones((b, b)))[:h, :w]
      m = m * (rng.random((h, w)) < 0.85)
    elif kind == "rings":
      cy, cx = rng.uniform(0, h), rng.uniform(0, w)
      r = np.hypot(yy - cy, xx - cx)
      m = (np.cos(r / rng.uniform(0.7, 3)) + 1) * np.exp(-r / rng.uniform(5, 40))
    elif kind == "checker":
      s = rng.integers(1, 4)
      m = (((yy // s) + (xx // s)) % 2) * rng.uniform(0.3, 1) + rng.random((h, w)) * 0.2
    elif kind == "border":
      m = rng.random((h, w)) * 0.3
      m[[0, -1], :] = rng.uniform(0.5, 1)
      m[:, [0, -1]] = rng.uniform(0.5, 1)
      m[rng.integers(0, h), :] = 1
    elif kind == "dots":
      m = (rng.random((h, w)) < 0.1) * rng.integers(1, 4, (h, w))
    elif kind == "cam":
      low = rng.normal(0, 1, (rng.integers(2, 8), rng.integers(2, 8)))
      m = cv2.resize(low, (int(w), int(h)), interpolation=cv2.INTER_CUBIC)
    elif kind == "binary":
      m = rng.random((h, w)) < rng.uniform(0.2, 0.9)
    else:
      m = np.full((h, w), rng.choice([0, 0.002, 0.5, 1]))
    m = np.asarray(m, np.float64)
    m -= m.min()
    if m.max() > 0:
      m /= m.max()
    if rng.random() < 0.3:
      m *= rng.uniform(0.05, 1)  # max below 1: integer thresholds relative to max U
    yield kind, m


def _gt(rng, h, w):
  """(3, 4) GT boxes: 1-3 real ones (some touching the border or 1 pixel), -1 padded."""
  gt = -np.ones((3, 4), np.int64)
  for j in range(rng.integers(1, 4)):
    x0, y0 = rng.integers(0, w), rng.integers(0, h)
    gt[j] = [x0, y0, rng.integers(x0, w), rng.integers(y0, h)]
  return gt


def _thresholds(rng, i):
  options = [boxes.cam_thresholds(0.01), boxes.cam_thresholds(0.05), np.arange(0, 1, 0.25),
             np.sort(rng.random(20)), rng.random(15),  # unsorted
             np.repeat(rng.random(6), 3),  # repeated thresholds
             np.array([-0.2, 0.0, 0.3, 0.999, 1.0, 1.5])]  # out-of-range taus
  return options[i % len(options)]


def test_random_maps_match_the_official_loop_boxes_and_ious():
  rng = np.random.default_rng(2)
  n_boxes = 0
  for i, (kind, m) in enumerate(_maps(rng, 400)):
    thresholds = _thresholds(rng, i)
    gt = _gt(rng, *m.shape)
    ref_boxes, ref_counts = reference.compute_bboxes_from_scoremaps(m, thresholds, True)
    tb = boxes.threshold_boxes(m, thresholds, multi_contour=True, method="components")
    per = tb.per_threshold()
    assert [len(b) for b in per] == ref_counts, kind
    for got, ref in zip(per, ref_boxes):
      assert _sorted_rows(got) == _sorted_rows(ref), kind
    n_boxes += sum(ref_counts)
    ref_best = reference.ReferenceBoxEvaluator(thresholds).accumulate(m, iou.valid_gt(gt))
    fast = box_accuracy.best_iou_per_threshold(m, gt, thresholds, multi_contour=True)
    np.testing.assert_array_equal(fast, ref_best, err_msg=kind)  # bit-identical float64
    np.testing.assert_array_equal(
        box_accuracy.best_iou_per_threshold(m, gt, thresholds, multi_contour=True,
                                            method="contours"), fast)
    u = boxes.quantize(m)
    t = boxes.integer_thresholds(int(u.max()), thresholds)
    tb2, best2 = components.component_boxes(u, t, gt)
    np.testing.assert_array_equal(best2, fast)
    np.testing.assert_array_equal(tb2.boxes, tb.boxes)
  assert n_boxes > 20000


def test_batch_update_matches_reference_evaluator_and_contours_path():
  rng = np.random.default_rng(3)
  thresholds = boxes.cam_thresholds(0.02)
  for h, w in [(32, 32), (17, 45), (1, 30), (40, 1)]:
    maps = np.stack([m for _, m in _maps(rng, 60, (h, w))])
    gt = np.stack([_gt(rng, h, w) for _ in range(len(maps))])
    ref = reference.ReferenceBoxEvaluator(thresholds, (30, 50, 70), multi_contour_eval=True)
    ref_best = np.array([ref.accumulate(m, iou.valid_gt(g)) for m, g in zip(maps, gt)])
    for method, threads in (("components", 1), ("components", 3), ("contours", 1)):
      acc = box_accuracy.BoxAccuracy(thresholds, multi_contour=True, method=method,
                                     num_threads=threads)
      best = np.concatenate([acc.update(maps[i:i + 25], gt[i:i + 25])
                             for i in range(0, len(maps), 25)])
      np.testing.assert_array_equal(best, ref_best)
      np.testing.assert_array_equal(acc.compute().max_box_acc, ref.compute())


@pytest.fixture(scope="module")
def golden(golden_dir):
  g = dict(np.load(golden_dir / "metrics.npz"))
  g["maps"] = g["scoremaps_q1024"].astype(np.float64) / 1024
  return g


def test_golden_v2_with_components(golden):
  thresholds = golden["cam_thresholds"]
  acc = box_accuracy.BoxAccuracy(iou_thresholds=tuple(golden["iou_thresholds"].tolist()),
                                 multi_contour=True, method="components")
  assert acc.method == "components"
  best = acc.update(golden["maps"], golden["gt_boxes"])
  np.testing.assert_array_equal(best, golden["v2_best_iou"])
  result = acc.compute()
  np.testing.assert_array_equal(result.num_correct, golden["v2_num_correct"])
  np.testing.assert_array_equal(result.max_box_acc, golden["v2_max_box_acc"])
  assert result.max_box_acc_v2 == golden["v2_maxboxaccv2"]
  for m, g, b in zip(golden["maps"], golden["gt_boxes"], golden["v2_best_iou"]):
    np.testing.assert_array_equal(
        box_accuracy.best_iou_per_threshold(m, g, thresholds, multi_contour=True), b)


def test_golden_v2_boxes_as_sets_per_threshold(golden):
  sel = golden["v2_boxes_sel_idx"]
  counts, flat = [], []
  for m in golden["maps"]:
    per = boxes.threshold_boxes(m, golden["cam_thresholds"], multi_contour=True,
                                method="components").per_threshold()
    counts.append([len(b) for b in per])
    flat += [per[s] for s in sel]
  np.testing.assert_array_equal(counts, golden["v2_num_boxes"])
  golden_flat = golden["v2_boxes_sel_flat"]
  start = 0
  for got in flat:
    assert _sorted_rows(got) == _sorted_rows(golden_flat[start:start + len(got)])
    start += len(got)
  assert start == len(golden_flat)


def test_edge_cases():
  zero_gt = np.array([[0, 0, 1, 1], [-1, -1, -1, -1]])
  thr = [0.0, 0.5, 0.99]
  # All-zero map: no contour -> [0, 0, 0, 0] (IoU 1/4 with a 2x2 GT at the origin).
  np.testing.assert_array_equal(
      box_accuracy.best_iou_per_threshold(np.zeros((6, 5)), zero_gt, thr, multi_contour=True),
      [0.25] * 3)
  np.testing.assert_array_equal(
      box_accuracy.best_iou_per_threshold(np.zeros((6, 5)), [[2, 2, 3, 3]], thr,
                                          multi_contour=True), [0.0] * 3)
  # Constant map: the whole clipped image at every threshold.
  np.testing.assert_array_equal(
      box_accuracy.best_iou_per_threshold(np.full((6, 5), 0.7), [[0, 0, 4, 5]], thr,
                                          multi_contour=True), [1.0] * 3)
  # 1x1 maps and tau >= 1 (empty foreground).
  for value in (0.0, 0.3, 1.0):
    m = np.full((1, 1), value)
    for t in ([0.0], [1.0], [0.2, 1.2, -0.5]):
      ref = reference.ReferenceBoxEvaluator(t).accumulate(m, np.array([[0, 0, 0, 0]]))
      np.testing.assert_array_equal(
          box_accuracy.best_iou_per_threshold(m, [[0, 0, 0, 0]], t, multi_contour=True), ref)
  # Delta = 0.001 (1000 thresholds, <= 256 distinct masks).
  rng = np.random.default_rng(4)
  m = rng.random((13, 17)) ** 2
  m /= m.max()
  thr = boxes.cam_thresholds(0.001)
  gt = np.array([[2, 3, 9, 11], [0, 0, 0, 0]])
  ref = reference.ReferenceBoxEvaluator(thr).accumulate(m, gt)
  np.testing.assert_array_equal(
      box_accuracy.best_iou_per_threshold(m, gt, thr, multi_contour=True), ref)


def test_method_selection_and_errors():
  assert box_accuracy.BoxAccuracy().method == "components"
  assert box_accuracy.BoxAccuracy(multi_contour=False).method == "contours"
  assert box_accuracy.BoxAccuracy(method="contours").method == "contours"
  with pytest.raises(ValueError, match="V2"):
    box_accuracy.BoxAccuracy(multi_contour=False, method="components")
  with pytest.raises(ValueError, match="unknown method"):
    box_accuracy.BoxAccuracy(method="pixels")
  with pytest.raises(ValueError, match="V2"):
    boxes.threshold_boxes(np.zeros((3, 3)), [0.5], method="components")
  acc = box_accuracy.BoxAccuracy()
  gt_ok, gt_none = [[0, 0, 1, 1]], [[-1, -1, -1, -1]]
  with pytest.raises(ValueError, match="no ground-truth"):
    acc.update(np.zeros((2, 4, 4)), np.array([gt_ok, gt_none]))
  with pytest.raises(RuntimeError):
    acc.update(np.zeros((2, 4, 4)), np.array([gt_ok, [[2, 0, 1, 1]]]))
  with pytest.raises(RuntimeError):  # the first failing image decides the error
    acc.update(np.zeros((2, 4, 4)), np.array([[[0, -2, 1, 1]], gt_none]))
  with pytest.raises(ValueError, match="no ground-truth"):
    box_accuracy.best_iou_per_threshold(np.zeros((4, 4)), gt_none, [0.5], multi_contour=True)
  with pytest.raises(ValueError, match="too large"):
    components.best_ious(np.zeros((1, 70000), np.uint8), [0], np.array([[0, 0, 0, 0]]))
