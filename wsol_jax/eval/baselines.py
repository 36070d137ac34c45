"""Sanity-baseline score maps (wsolevaluation's center-Gaussian baseline).

The baseline ignores the image: an isotropic Gaussian centred in the map. Under MaxBoxAcc it
yields the best centred box over the threshold sweep, so a WSOL method should beat it.
"""
from __future__ import annotations

import numpy as np

DEFAULT_SIGMA_FRACTION = 0.25


def center_gaussian(height: int, width: int,
                    sigma_fraction: float = DEFAULT_SIGMA_FRACTION) -> np.ndarray:
  """Isotropic Gaussian centred at the map centre, min-max normalised to [0, 1].

  Args:
    height: map height H.
    width: map width W.
    sigma_fraction: standard deviation as a fraction of the shorter side,
      ``σ = sigma_fraction·min(H, W)``. With the default 0.25 the level set at τ = 0.01 has
      a radius of about 3σ (past the map edge), so the τ sweep covers centred boxes from a few
      pixels up to the whole map.

  Returns:
    (H, W) float64 map with min 0 and max 1 (all zeros for a 1×1 map), pixel centres at
    integer coordinates and the Gaussian centred at ((W-1)/2, (H-1)/2).
  """
  if sigma_fraction <= 0:
    raise ValueError(f"sigma_fraction must be positive, got {sigma_fraction}")
  sigma = sigma_fraction * min(height, width)
  y = (np.arange(height) - (height - 1) / 2) / sigma
  x = (np.arange(width) - (width - 1) / 2) / sigma
  g = np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
  if g.max() == g.min():  # 1x1 map: wsolevaluation normalises a constant map to zeros
    return np.zeros_like(g)
  return (g - g.min()) / (g.max() - g.min())


def center_gaussian_batch(batch: int, height: int, width: int,
                          sigma_fraction: float = DEFAULT_SIGMA_FRACTION) -> np.ndarray:
  """The same map repeated for a batch -> (B, H, W) float64."""
  return np.broadcast_to(center_gaussian(height, width, sigma_fraction),
                         (batch, height, width)).copy()
