"""Host-side WSOL evaluation metrics (numpy + OpenCV; the perturbation test runs in JAX).

Modules: ``boxes`` (box mining with OpenCV contour semantics), ``iou`` (+1-convention IoU),
``box_accuracy`` (MaxBoxAcc / MaxBoxAccV2), ``localization`` (TS-CAM and SCM Top-k / GT-known
Loc), ``pxap`` (PxAP), ``pixel_metrics`` (AG-CAM pixel metrics), ``perturbation``
(MoRF / LeRF / ABPC) and ``baselines`` (center-Gaussian map). The port of the official
per-threshold loop that the box miner is checked against lives in ``tests/reference_boxes.py``.
"""
from wsol_jax.eval.baselines import center_gaussian, center_gaussian_batch
from wsol_jax.eval.box_accuracy import (BoxAccuracy, BoxAccuracyResult, best_iou_per_threshold,
                                        check_scoremaps)
from wsol_jax.eval.boxes import (ThresholdBoxes, agcam_boxes, cam_thresholds, contour_boxes,
                                 integer_thresholds, quantize, threshold_boxes, tscam_boxes)
from wsol_jax.eval.iou import check_boxes, max_iou, pairwise_iou, valid_gt
from wsol_jax.eval.localization import (ScmLocalization, ScmResult, TsCamLocalization,
                                        TsCamResult, classification_correct, top_k_indices)
from wsol_jax.eval.pixel_metrics import (AgCamPixelMetrics, AgCamPixelResult,
                                         agcam_image_metrics, boxes_to_mask, mask_metrics)
from wsol_jax.eval.pxap import PxAP, pxap_from_histograms

_LAZY_JAX = ("AGCAM_FRACTIONS", "PerturbationResult", "PerturbationTest", "make_curve_fn")


def __getattr__(name: str):
  """Imports the JAX-based perturbation test only when it is used."""
  if name in _LAZY_JAX:
    from wsol_jax.eval import perturbation  # pylint: disable=import-outside-toplevel
    return getattr(perturbation, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
