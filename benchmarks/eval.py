"""MaxBoxAccV2 on synthetic score maps: wsolevaluation's per-image/per-threshold loop vs ours.

  python benchmarks/eval.py [--num-maps 1000] [--delta 0.01] [--threads N] [--chunk 50]

Both implementations see the same float64 maps and GT boxes. The baseline is
``wsol_jax.eval.reference.ReferenceBoxEvaluator`` (a line-by-line port of the official
``BoxEvaluator.accumulate``: one ``cv2.threshold`` + ``findContours`` per map and threshold);
ours is ``wsol_jax.eval.BoxAccuracy(multi_contour=True)``. Chunks of maps alternate between
the two so that a changing machine load hits both alike. The script asserts that the
per-threshold counts, the per-map best IoUs and MaxBoxAccV2 are identical and prints the
speed ratio of this run.

Synthetic maps follow the recipe of the golden set (shared/golden/v1 metrics.npz): mixtures
of 1-4 axis-aligned Gaussians, min-max normalised (70%) or scaled to a max below 1, 25% with
additive U(0, 0.02) noise before normalisation (the noise creates thousands of tiny contours at
the lowest thresholds); plus CAM-like maps: a random 14x14 map (1-3 bumps + N(0, 0.15) noise)
upsampled with cv2 INTER_CUBIC and min-max normalised, as wsolevaluation's inference does.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import cv2
import numpy as np

from wsol_jax.eval import box_accuracy, boxes, iou, reference

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
  args = parser.parse_args()

  maps, gts, kinds = make_maps(args.num_maps, args.size, args.seed)
  thresholds = boxes.cam_thresholds(args.delta)
  ious = (30, 50, 70)
  ref = reference.ReferenceBoxEvaluator(thresholds, ious, multi_contour_eval=True)
  ours = box_accuracy.BoxAccuracy(thresholds, iou_thresholds=ious, multi_contour=True,
                                  num_threads=args.threads)
  t_ref, t_ours = np.zeros(len(KINDS)), np.zeros(len(KINDS))  # wall-clock seconds per kind
  cpu_ref = cpu_ours = 0.0  # CPU seconds of this process (less sensitive to other load)
  ref_best, ours_best = [], []
  load0 = os.getloadavg()[0]
  for start in range(0, len(maps), args.chunk):
    stop = min(start + args.chunk, len(maps))
    chunk_kinds = np.bincount(kinds[start:stop], minlength=len(KINDS))
    c0, t0 = time.process_time(), time.perf_counter()
    ref_best += [ref.accumulate(maps[i], iou.valid_gt(gts[i])) for i in range(start, stop)]
    c1, t1 = time.process_time(), time.perf_counter()
    ours_best.append(ours.update(maps[start:stop], gts[start:stop]))
    c2, t2 = time.process_time(), time.perf_counter()
    cpu_ref += c1 - c0
    cpu_ours += c2 - c1
    # Chunks are single-kind except at kind boundaries; split the time by map count there.
    t_ref += (t1 - t0) * chunk_kinds / (stop - start)
    t_ours += (t2 - t1) * chunk_kinds / (stop - start)
  load1 = os.getloadavg()[0]

  result = ours.compute()
  ref_acc = ref.compute()
  ref_counts = np.stack([ref.num_correct[t] for t in ious]).astype(np.int64)
  np.testing.assert_array_equal(np.concatenate(ours_best), np.array(ref_best))
  np.testing.assert_array_equal(result.num_correct, ref_counts)
  np.testing.assert_array_equal(result.max_box_acc, ref_acc)
  ref_v2 = float(np.mean(ref_acc))
  assert result.max_box_acc_v2 == ref_v2

  n_kind = np.bincount(kinds, minlength=len(KINDS))
  print(f"MaxBoxAccV2 benchmark: {len(maps)} maps {args.size}x{args.size}, "
        f"{len(thresholds)} thresholds (delta {args.delta}), IoU {ious}, V2 boxes")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"ours with {ours.num_threads} thread(s), load average {load0:.2f} -> {load1:.2f}, "
        f"opencv {cv2.__version__}, numpy {np.__version__}")
  print()
  print(f"| {'maps':<16} | {'n':>5} | {'official loop ms/map':>20} | {'ours ms/map':>11} | "
        f"{'speed-up':>8} |")
  print(f"|{'-' * 18}|{'-' * 7}|{'-' * 22}|{'-' * 13}|{'-' * 10}|")
  for k, name in enumerate(KINDS):
    if n_kind[k]:
      print(f"| {name:<16} | {n_kind[k]:>5} | {1e3 * t_ref[k] / n_kind[k]:>20.2f} | "
            f"{1e3 * t_ours[k] / n_kind[k]:>11.2f} | {t_ref[k] / t_ours[k]:>7.2f}x |")
  print(f"| {'all':<16} | {len(maps):>5} | {1e3 * t_ref.sum() / len(maps):>20.2f} | "
        f"{1e3 * t_ours.sum() / len(maps):>11.2f} | {t_ref.sum() / t_ours.sum():>7.2f}x |")
  print()
  print(f"MaxBoxAcc@30/50/70 official {ref_acc} ours {result.max_box_acc.tolist()}")
  print(f"MaxBoxAccV2 official {ref_v2:.6f} ours {result.max_box_acc_v2:.6f}: identical; "
        f"per-threshold counts and all {len(maps) * len(thresholds)} best IoUs identical")
  print(f"speed ratio (official / ours, this run): {t_ref.sum() / t_ours.sum():.2f}x wall-clock "
        f"({t_ref.sum():.1f} s vs {t_ours.sum():.1f} s), {cpu_ref / cpu_ours:.2f}x CPU time "
        f"({cpu_ref:.1f} s vs {cpu_ours:.1f} s)")


if __name__ == "__main__":
  main()
