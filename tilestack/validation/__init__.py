"""Validation of a run (METHODOLOGY §13): measurements, seam statistic, verdict and plots.

``measure`` and ``seams`` only need numpy/scipy/OpenCV; ``plots`` imports matplotlib and is
therefore not imported here.
"""

from tilestack.validation.measure import (
    aperture_photometry,
    background_rms,
    compare_stacks,
    faint_star_snr,
    measure_fwhm,
    measure_stars,
    median_fwhm,
    photometry_slope,
)
from tilestack.validation.seams import seam_score, seam_score_without_truth, smooth_reference
from tilestack.validation.verdict import (
    StackFigures,
    build_validation,
    thresholds_from_config,
    usable_tile_fraction,
    verdict,
    weight_variance,
)

__all__ = [
    "StackFigures",
    "aperture_photometry",
    "background_rms",
    "build_validation",
    "compare_stacks",
    "faint_star_snr",
    "measure_fwhm",
    "measure_stars",
    "median_fwhm",
    "photometry_slope",
    "seam_score",
    "seam_score_without_truth",
    "smooth_reference",
    "thresholds_from_config",
    "usable_tile_fraction",
    "verdict",
    "weight_variance",
]
