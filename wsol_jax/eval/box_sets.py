"""The boxes of a threshold sweep, one set per distinct foreground mask (``ThresholdBoxes``).

Its own module because both box miners build it: OpenCV's contours (``boxes``) and the
connected-component sweep (``components``), which ``boxes`` calls.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ThresholdBoxes:
  """Boxes of a threshold sweep, stored once per distinct foreground mask.

  Attributes:
    boxes: (N, 4) int64 ``[x0, y0, x1, y1]`` of the distinct masks, concatenated mask by mask
      (within a mask in OpenCV's contour order).
    counts: (D,) int64 number of boxes of each distinct mask (>= 1; an empty mask has the
      single no-contour box).
    mask_index: (K,) int64 distinct-mask index of each threshold.
  """

  boxes: np.ndarray
  counts: np.ndarray
  mask_index: np.ndarray

  @property
  def offsets(self) -> np.ndarray:
    """(D,) start row of each distinct mask in ``boxes``."""
    return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

  def per_threshold(self) -> list[np.ndarray]:
    """Boxes of every threshold, as K arrays (n_k, 4)."""
    offsets = self.offsets
    return [self.boxes[offsets[d]:offsets[d] + self.counts[d]] for d in self.mask_index]

  def flat(self) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of all thresholds concatenated in threshold order -> ((sum n_k, 4), (K,) counts)."""
    counts = self.counts[self.mask_index]
    starts = self.offsets[self.mask_index]
    ends = np.cumsum(counts)
    rows = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - counts - starts, counts)
    return self.boxes[rows], counts
