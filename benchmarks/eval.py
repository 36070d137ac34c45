"""MaxBoxAccV2 on synthetic score maps: wsolevaluation's per-image/per-threshold loop vs ours.

  python benchmarks/eval.py [--num-maps 1000] [--delta 0.01] [--threads N] [--chunk 50]
                            [--no-contours]

All implementations see the same float64 maps and GT boxes:

* official: ``tests/reference_boxes.py: ReferenceBoxEvaluator`` (a line-by-line port of the
  official ``BoxEvaluator.accumulate``: one ``cv2.threshold`` + ``findContours`` per map and
  threshold);
* components: ``wsol_jax.eval.BoxAccuracy(multi_contour=True)``, whose default V2 method is the
  numba connected-component sweep (``wsol_jax.eval.components``);
* contours: ``BoxAccuracy(multi_contour=True, method="contours")``, one ``findContours`` per map
  on a canvas of all distinct masks (skip with ``--no-contours``).

The numba kernel is called once before timing (compilation, or loading it from numba's
on-disk cache, is reported separately and not counted). Chunks of maps rotate between the
implementations (the order rotates too) so that a changing machine load hits all alike; wall
clock and this process's CPU time are both reported. The script asserts that the per-threshold
counts, the per-map best IoUs and MaxBoxAccV2 are identical to the official loop.

Synthetic maps follow the recipe of the golden set (shared/golden/v1 metrics.npz): mixtures
of 1-4 axis-aligned Gaussians, min-max normalised (70%) or scaled to a max below 1, 25% with
additive U(0, 0.02) noise before normalisation (the noise creates thousands of tiny contours at
the lowest thresholds); plus CAM-like maps: a random 14x14 map (1-3 bumps + N(0, 0.15) noise)
upsampled with cv2 INTER_CUBIC and min-max normalised, as wsolevaluation's inference does.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

import cv2
import numba
import numpy as np

from wsol_jax.eval import box_accuracy, boxes, iou

# The official loop's port is a test helper (tests/reference_boxes.py), not library code.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import reference_boxes as reference  # noqa: E402

KINDS = ("gaussian", "gaussian+noise", "cam-like")


def gaussian_map(rng: np.random.RandomState, size: int, noisy: bool) -> tuple[np.ndarray,
                                                                             np.ndarray]:
  """Mixture-of-Gaussians map (size, size) float64 and its (3, 4) -1-padded GT boxes."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  m = np.zeros((size, size))
  gt = -np.ones((3, 4), np.int64)
  for j in range(rng.randint(1, 5)):
    cx, cy = rng.uniform(0, size, 2)
    sx, sy = rng.uniform(0.02, 0.27, 2) * size
    m += rng.uniform(0.3, 1) * np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
    if j < 3:
      x0, y0 = int(np.clip(cx - 1.5 * sx, 0, size - 1)), int(np.clip(cy - 1.5 * sy, 0, size - 1))
      gt[j] = [x0, y0, int(np.clip(cx + 1.5 * sx, x0, size - 1)),
               int(np.clip(cy + 1.5 * sy, y0, size - 1))]
  if noisy:
    m += rng.uniform(0, 0.02, m.shape) * m.max()
  m = (m - m.min()) / (m.max() - m.min())
  if rng.rand() < 0.3:
    m *= rng.uniform(0.5, 0.99)  # not min-max normalised: max below 1
  return m, gt


def cam_like_map(rng: np.random.RandomState, size: int, low: int = 14) -> tuple[np.ndarray,
                                                                                np.ndarray]:
  """Upsampled low-resolution random map (size, size) float64 and its (3, 4) GT boxes."""
  yy, xx = np.mgrid[0:low, 0:low].astype(np.float64)
  m = 0.15 * rng.randn(low, low)
  gt = -np.ones((3, 4), np.int64)
  scale = size / low
  for j in range(rng.randint(1, 4)):
    cx, cy = rng.uniform(0, low, 2)
    sx, sy = rng.uniform(0.8, 4, 2)
    m += rng.uniform(0.5, 1.5) * np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
    x0 = int(np.clip((cx - 1.5 * sx) * scale, 0, size - 1))
    y0 = int(np.clip((cy - 1.5 * sy) * scale, 0, size - 1))
    gt[j] = [x0, y0, int(np.clip((cx + 1.5 * sx) * scale, x0, size - 1)),
             int(np.clip((cy + 1.5 * sy) * scale, y0, size - 1))]
  m = cv2.resize(m, (size, size), interpolation=cv2.INTER_CUBIC)
  return (m - m.min()) / (m.max() - m.min()), gt


def make_maps(num_maps: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(N, size, size) maps, (N, 3, 4) GT boxes and (N,) kind index (3/8 gaussian, 1/8 noisy,
  1/2 cam-like), grouped by kind."""
  rng = np.random.RandomState(seed)
  counts = [num_maps * 3 // 8, num_maps // 8]
  counts.append(num_maps - sum(counts))
  maps, gts, kinds = [], [], []
  for kind, n in enumerate(counts):
    for _ in range(n):
      m, gt = (cam_like_map(rng, size) if kind == 2 else gaussian_map(rng, size, kind == 1))
      maps.append(m)
      gts.append(gt)
      kinds.append(kind)
  return np.stack(maps), np.stack(gts), np.array(kinds)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-maps", type=int, default=1000)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--delta", type=float, default=0.01)
  parser.add_argument("--threads", type=int, default=1, help="worker threads of ours")
  parser.add_argument("--chunk", type=int, default=50, help="maps per alternating chunk")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-contours", action="store_true", help="skip the OpenCV path of ours")
  args = parser.parse_args()

  maps, gts, kinds = make_maps(args.num_maps, args.size, args.seed)
  thresholds = boxes.cam_thresholds(args.delta)
  ious = (30, 50, 70)
  t0 = time.perf_counter()
  box_accuracy.BoxAccuracy(thresholds, iou_thresholds=ious).update(maps[:1], gts[:1])
  warmup = time.perf_counter() - t0  # numba: compile, or load the cached machine code

  ref = reference.ReferenceBoxEvaluator(thresholds, ious, multi_contour_eval=True)
  impls = {"official": None,
           "components": box_accuracy.BoxAccuracy(thresholds, iou_thresholds=ious,
                                                  multi_contour=True, num_threads=args.threads)}
  if not args.no_contours:
    impls["contours"] = box_accuracy.BoxAccuracy(thresholds, iou_thresholds=ious,
                                                 multi_contour=True, method="contours",
                                                 num_threads=args.threads)
  names = list(impls)
  wall = {n: np.zeros(len(KINDS)) for n in names}  # seconds per kind
  cpu = {n: np.zeros(len(KINDS)) for n in names}  # CPU seconds of this process per kind
  best = {n: [] for n in names}
  load0 = os.getloadavg()[0]
  for c, start in enumerate(range(0, len(maps), args.chunk)):
    stop = min(start + args.chunk, len(maps))
    share = np.bincount(kinds[start:stop], minlength=len(KINDS)) / (stop - start)
    for name in names[c % len(names):] + names[:c % len(names)]:  # rotating order
      c0, t0 = time.process_time(), time.perf_counter()
      if name == "official":
        out = np.array([ref.accumulate(maps[i], iou.valid_gt(gts[i]))
                        for i in range(start, stop)])
      else:
        out = impls[name].update(maps[start:stop], gts[start:stop])
      c1, t1 = time.process_time(), time.perf_counter()
      best[name].append(out)
      # Chunks are single-kind except at kind boundaries; split the time by map count there.
      wall[name] += (t1 - t0) * share
      cpu[name] += (c1 - c0) * share
  load1 = os.getloadavg()[0]

  ref_acc = ref.compute()
  ref_v2 = float(np.mean(ref_acc))
  ref_counts = np.stack([ref.num_correct[t] for t in ious]).astype(np.int64)
  ref_best = np.concatenate(best["official"])
  for name in names[1:]:
    result = impls[name].compute()
    np.testing.assert_array_equal(np.concatenate(best[name]), ref_best)
    np.testing.assert_array_equal(result.num_correct, ref_counts)
    np.testing.assert_array_equal(result.max_box_acc, ref_acc)
    assert result.max_box_acc_v2 == ref_v2

  n_kind = np.bincount(kinds, minlength=len(KINDS))
  print(f"MaxBoxAccV2 benchmark: {len(maps)} maps {args.size}x{args.size}, "
        f"{len(thresholds)} thresholds (delta {args.delta}), IoU {ious}, V2 boxes")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"ours with {args.threads} thread(s), load average {load0:.2f} -> {load1:.2f}, "
        f"opencv {cv2.__version__}, numpy {np.__version__}, numba {numba.__version__}")
  print(f"numba warm-up (compile or load from cache, not timed below): {warmup:.2f} s")
  print()
  cols = " | ".join(f"{n + ' ms/map':>{max(len(n) + 7, 10)}}" for n in names)
  print(f"| {'maps':<16} | {'n':>5} | {cols} | {'components speed-up':>19} | "
        f"{'(CPU time)':>10} |")
  print("|" + "|".join("-" * (w + 2) for w in
                       [16, 5] + [max(len(n) + 7, 10) for n in names] + [19, 10]) + "|")
  rows = [(name, n_kind[k], {n: wall[n][k] for n in names}, {n: cpu[n][k] for n in names})
          for k, name in enumerate(KINDS) if n_kind[k]]
  rows.append(("all", len(maps), {n: wall[n].sum() for n in names},
               {n: cpu[n].sum() for n in names}))
  for label, count, w, c in rows:
    cells = " | ".join(f"{1e3 * w[n] / count:>{max(len(n) + 7, 10)}.2f}" for n in names)
    print(f"| {label:<16} | {count:>5} | {cells} | "
          f"{w['official'] / w['components']:>18.2f}x | "
          f"{c['official'] / c['components']:>9.2f}x |")
  print()
  print(f"MaxBoxAcc@30/50/70 official {ref_acc}; MaxBoxAccV2 official {ref_v2:.6f}: "
        f"{' and '.join(names[1:])} identical (per-threshold counts and all "
        f"{len(maps) * len(thresholds)} best IoUs)")
  for name in names[1:]:
    print(f"speed ratio official / {name} (this run): "
          f"{wall['official'].sum() / wall[name].sum():.2f}x wall-clock "
          f"({wall['official'].sum():.1f} s vs {wall[name].sum():.1f} s), "
          f"{cpu['official'].sum() / cpu[name].sum():.2f}x CPU time "
          f"({cpu['official'].sum():.1f} s vs {cpu[name].sum():.1f} s)")


if __name__ == "__main__":
  main()
