"""Line-by-line port of wsolevaluation's per-image, per-threshold box evaluation loop.

This is the parity baseline for tests and ``benchmarks/eval.py`` (clovaai/wsolevaluation
@ 96f4b88, ``evaluation.py``: ``compute_bboxes_from_scoremaps``, ``calculate_multiple_iou``,
``BoxEvaluator.accumulate`` / ``compute``), with ``np.float`` read as float64 and GT boxes
passed in directly instead of read from metadata files. Use ``BoxAccuracy`` for real work.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def check_box_convention(boxes: np.ndarray, convention: str) -> None:
  """Official box validity check (RuntimeError on a bad box)."""
  if (boxes < 0).any():
    raise RuntimeError("Box coordinates must be non-negative.")
  if len(boxes.shape) == 1:
    boxes = np.expand_dims(boxes, 0)
  elif len(boxes.shape) != 2:
    raise RuntimeError("Box array must have dimension (4) or (num_boxes, 4).")
  if boxes.shape[1] != 4:
    raise RuntimeError("Box array must have dimension (4) or (num_boxes, 4).")
  if convention == 'x0y0x1y1':
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
  elif convention == 'xywh':
    widths = boxes[:, 2]
    heights = boxes[:, 3]
  else:
    raise ValueError(f"Unknown convention {convention}.")
  if (widths < 0).any() or (heights < 0).any():
    raise RuntimeError(f"Boxes do not follow the {convention} convention.")


def calculate_multiple_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
  """Official (num_a, num_b) IoU matrix with inclusive (+1) pixel ends."""
  num_a = box_a.shape[0]
  num_b = box_b.shape[0]
  check_box_convention(box_a, 'x0y0x1y1')
  check_box_convention(box_b, 'x0y0x1y1')
  box_a = np.tile(box_a, num_b)
  box_a = np.expand_dims(box_a, axis=1).reshape((num_a, num_b, -1))
  box_b = np.tile(box_b, num_a)
  box_b = np.expand_dims(box_b, axis=1).reshape((num_b, num_a, -1))
  box_b = np.transpose(box_b, (1, 0, 2))
  min_x = np.maximum(box_a[:, :, 0], box_b[:, :, 0])
  min_y = np.maximum(box_a[:, :, 1], box_b[:, :, 1])
  max_x = np.minimum(box_a[:, :, 2], box_b[:, :, 2])
  max_y = np.minimum(box_a[:, :, 3], box_b[:, :, 3])
  area_intersect = (np.maximum(0, max_x - min_x + 1) * np.maximum(0, max_y - min_y + 1))
  area_a = ((box_a[:, :, 2] - box_a[:, :, 0] + 1) * (box_a[:, :, 3] - box_a[:, :, 1] + 1))
  area_b = ((box_b[:, :, 2] - box_b[:, :, 0] + 1) * (box_b[:, :, 3] - box_b[:, :, 1] + 1))
  denominator = area_a + area_b - area_intersect
  degenerate_indices = np.where(denominator <= 0)
  denominator[degenerate_indices] = 1
  ious = area_intersect / denominator
  ious[degenerate_indices] = 0
  return ious


def check_scoremap_validity(scoremap: np.ndarray) -> None:
  """Official score-map check (``np.float`` read as float64)."""
  if not isinstance(scoremap, np.ndarray):
    raise TypeError(f"Scoremap must be a numpy array; it is {type(scoremap)}.")
  if scoremap.dtype != np.float64:
    raise TypeError(f"Scoremap must be of np.float type; it is of {scoremap.dtype} type.")
  if len(scoremap.shape) != 2:
    raise ValueError(f"Scoremap must be a 2D array; it is {len(scoremap.shape)}D.")
  if np.isnan(scoremap).any():
    raise ValueError("Scoremap must not contain nans.")
  if (scoremap > 1).any() or (scoremap < 0).any():
    raise ValueError("Scoremap must be in range [0, 1]."
                     f"scoremap.min()={scoremap.min()}, scoremap.max()={scoremap.max()}.")


def compute_bboxes_from_scoremaps(scoremap: np.ndarray, scoremap_threshold_list: Sequence[float],
                                  multi_contour_eval: bool = False
                                  ) -> tuple[list[np.ndarray], list[int]]:
  """Official box mining: one threshold + ``findContours`` call per threshold."""
  check_scoremap_validity(scoremap)
  height, width = scoremap.shape
  scoremap_image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)

  def scoremap2bbox(threshold):
    _, thr_gray_heatmap = cv2.threshold(
        src=scoremap_image, thresh=int(threshold * np.max(scoremap_image)), maxval=255,
        type=cv2.THRESH_BINARY)
    contours = cv2.findContours(image=thr_gray_heatmap, mode=cv2.RETR_TREE,
                                method=cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
      return np.asarray([[0, 0, 0, 0]]), 1
    if not multi_contour_eval:
      contours = [max(contours, key=cv2.contourArea)]
    estimated_boxes = []
    for contour in contours:
      x, y, w, h = cv2.boundingRect(contour)
      x0, y0, x1, y1 = x, y, x + w, y + h
      x1 = min(x1, width - 1)
      y1 = min(y1, height - 1)
      estimated_boxes.append([x0, y0, x1, y1])
    return np.asarray(estimated_boxes), len(contours)

  estimated_boxes_at_each_thr, number_of_box_list = [], []
  for threshold in scoremap_threshold_list:
    boxes, number_of_box = scoremap2bbox(threshold)
    estimated_boxes_at_each_thr.append(boxes)
    number_of_box_list.append(number_of_box)
  return estimated_boxes_at_each_thr, number_of_box_list


class ReferenceBoxEvaluator:
  """Official ``BoxEvaluator`` accumulate/compute with in-memory GT boxes."""

  def __init__(self, cam_threshold_list: Sequence[float],
               iou_threshold_list: Sequence[int] = (30, 50, 70),
               multi_contour_eval: bool = True):
    self.cam_threshold_list = list(cam_threshold_list)
    self.iou_threshold_list = list(iou_threshold_list)
    self.multi_contour_eval = multi_contour_eval
    self.num_correct = {t: np.zeros(len(self.cam_threshold_list))
                        for t in self.iou_threshold_list}
    self.cnt = 0

  def accumulate(self, scoremap: np.ndarray, gt_bboxes: np.ndarray) -> list[float]:
    """Adds one (H, W) float64 map with its (G, 4) GT boxes; returns its best IoUs (K,)."""
    boxes_at_thresholds, number_of_box_list = compute_bboxes_from_scoremaps(
        scoremap=scoremap, scoremap_threshold_list=self.cam_threshold_list,
        multi_contour_eval=self.multi_contour_eval)
    boxes_at_thresholds = np.concatenate(boxes_at_thresholds, axis=0)
    multiple_iou = calculate_multiple_iou(np.array(boxes_at_thresholds),
                                                  np.array(gt_bboxes))
    idx = 0
    sliced_multiple_iou = []
    for nr_box in number_of_box_list:
      sliced_multiple_iou.append(max(multiple_iou.max(1)[idx:idx + nr_box]))
      idx += nr_box
    for threshold in self.iou_threshold_list:
      correct_threshold_indices = np.where(
          np.asarray(sliced_multiple_iou) >= (threshold / 100))[0]
      self.num_correct[threshold][correct_threshold_indices] += 1
    self.cnt += 1
    return sliced_multiple_iou

  def compute(self) -> list[float]:
    """MaxBoxAcc per IoU threshold (percent)."""
    return [float((self.num_correct[t] * 100. / float(self.cnt)).max())
            for t in self.iou_threshold_list]
