"""Visualisation of localization maps on images (host side: numpy + OpenCV).

``show_cam_on_image`` follows pytorch-grad-cam's function of the same name: the map
through OpenCV's jet colormap, alpha-blended with the image and rescaled by the
blend's max. Boxes come from ``wsol_jax.eval.boxes`` (wsolevaluation's V1 box: the
largest contour of ``uint8(255·m) > int(τ·max)``).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from wsol_jax.eval import boxes as boxes_lib
from wsol_jax.maps import postprocess


def show_cam_on_image(image: np.ndarray, mask: np.ndarray, image_weight: float = 0.5,
                      colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
  """Heatmap overlay: (H, W, 3) uint8 RGB image, (H, W) map in [0, 1] -> (H, W, 3) uint8 RGB.

  ``image_weight`` is the image's share of the blend (pytorch-grad-cam's default 0.5).
  """
  image = np.asarray(image)
  mask = np.asarray(mask)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
  if mask.shape != image.shape[:2]:
    raise ValueError(f"mask {mask.shape} does not match the image size {image.shape[:2]}")
  if not 0 <= image_weight <= 1:
    raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
  heat = cv2.applyColorMap(np.uint8(255 * np.clip(mask, 0, 1)), colormap)
  heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
  blend = (1 - image_weight) * heat + image_weight * (image.astype(np.float32) / 255)
  return np.uint8(255 * blend / max(float(blend.max()), 1e-12))


def largest_contour_box(mask: np.ndarray, threshold: float = 0.2) -> np.ndarray:
  """wsolevaluation V1 box of a [0, 1] map at score threshold ``threshold`` -> (4,) [x0, y0, x1, y1].

  ``[0, 0, 0, 0]`` when nothing is above the threshold.
  """
  return boxes_lib.threshold_boxes(np.asarray(mask), [threshold]).per_threshold()[0][0]


def draw_boxes(image: np.ndarray, boxes: np.ndarray | Sequence[Sequence[int]],
               color: tuple[int, int, int] = (0, 255, 0), thickness: int | None = None) -> np.ndarray:
  """Draws [x0, y0, x1, y1] boxes on a copy of an (H, W, 3) uint8 image."""
  out = np.ascontiguousarray(image).copy()
  if thickness is None:
    thickness = max(1, round(min(out.shape[:2]) / 150))
  for x0, y0, x1, y1 in np.asarray(boxes, np.int64).reshape(-1, 4):
    cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), color, thickness)
  return out


def overlay(image: np.ndarray, raw: np.ndarray, method: str, threshold: float = 0.2,
            image_weight: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Raw (h, w) map -> overlay on the (H, W, 3) uint8 image at its own size.

  Args:
    image: the original image, (H, W, 3) uint8 RGB.
    raw: the raw map on the feature grid.
    method: the official interpolation, ``'bilinear'`` or ``'bicubic'``.
    threshold: score threshold of the box.
    image_weight: the image's share of the blend.

  Returns:
    (overlay (H, W, 3) uint8 with the box drawn, map (H, W) float64 in [0, 1], box (4,)).
  """
  mask = postprocess.resize_and_normalize_host(raw, image.shape[:2], method)
  box = largest_contour_box(mask, threshold)
  return draw_boxes(show_cam_on_image(image, mask, image_weight), box[None]), mask, box
