"""Registration: stars, triangle matching, robust fitting, fallbacks and warping.

Main entry points: :func:`detect_stars`, :class:`Transform`, :class:`Registrator`,
:func:`register_frame` / :func:`result_row` (workflow batches) and :func:`choose_reference`.
"""

from .errors import (
    AccuracyTooLow,
    NoPatternFound,
    RansacFailed,
    RegistrationError,
    SizeMismatch,
    TooFewStars,
)
from .pipeline import (
    PRESETS,
    Options,
    RegistrationResult,
    Registrator,
    image_fallback,
    reference_result,
    register_frame,
    register_stars,
    result_row,
)
from .quality import Quality
from .reference import choose_reference
from .stars import background_mesh, detect_stars
from .transforms import MODELS, Transform, estimate, transform_error

__all__ = [
    "MODELS",
    "PRESETS",
    "AccuracyTooLow",
    "NoPatternFound",
    "Options",
    "Quality",
    "RansacFailed",
    "RegistrationError",
    "RegistrationResult",
    "Registrator",
    "SizeMismatch",
    "TooFewStars",
    "Transform",
    "background_mesh",
    "choose_reference",
    "detect_stars",
    "estimate",
    "image_fallback",
    "reference_result",
    "register_frame",
    "register_stars",
    "result_row",
    "transform_error",
]
