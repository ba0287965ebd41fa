"""Pure scoring functions: arrays in, numbers out. A leaf package.

Orientation agreement (:func:`angular_error_deg`, :func:`match_peaks`,
:func:`peak_voxel_metrics`), FOD agreement (:func:`acc`, :func:`jsd`,
:func:`dispersion_error`), tractography scores (:func:`tractometer`,
:func:`streamline_field_angle`) and their statistics (:data:`TASKS`,
:func:`score_table`). Definitions: shared/domain.md and docs/metrics.md.
"""

from metrics.errors import MetricInputError  # noqa: I001  (first: the modules import it)
from metrics.angles import angular_error_deg
from metrics.fod import (
    acc,
    dispersion_error,
    jsd,
    odi_from_sh,
    orientation_tensor,
    sh_order_from_ncoeffs,
    sphere_weights,
)
from metrics.peaks import (
    PeakMatch,
    match_peaks,
    nufo_confusion_matrix,
    peak_detection_summary,
    peak_voxel_metrics,
)
from metrics.stats import (
    STATISTICS,
    TASKS,
    bootstrap_ci,
    score_table,
    score_table_by_condition,
)
from metrics.tractography import (
    BundleDefinition,
    BundleScore,
    TractometerResult,
    streamline_field_angle,
    streamline_voxel_mask,
    tractometer,
)

__all__ = [
    "MetricInputError",
    "angular_error_deg",
    "match_peaks",
    "PeakMatch",
    "peak_voxel_metrics",
    "peak_detection_summary",
    "nufo_confusion_matrix",
    "acc",
    "jsd",
    "sphere_weights",
    "odi_from_sh",
    "orientation_tensor",
    "dispersion_error",
    "sh_order_from_ncoeffs",
    "TASKS",
    "STATISTICS",
    "score_table",
    "score_table_by_condition",
    "bootstrap_ci",
    "tractometer",
    "TractometerResult",
    "BundleDefinition",
    "BundleScore",
    "streamline_field_angle",
    "streamline_voxel_mask",
]
