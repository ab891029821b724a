"""Registration: stars, triangle matching, robust fitting, fallbacks and warping.

Main entry points: :func:`detect_stars` (from :mod:`tilestack.stars`), :class:`Transform`,
:class:`Registrator`,
:func:`register_frame` / :func:`result_row` (workflow batches) and :func:`choose_reference`.
"""

import importlib

# Names are imported from their submodule on first use (PEP 562): the parse-time planner, which
# only asks `registration.siril` whether siril-cli exists, does not pay for the matcher, RANSAC
# and the warp kernels. Star detection lives below registration (tilestack.stars).
_WHERE = {
    "AccuracyTooLow": "errors",
    "NoPatternFound": "errors",
    "RansacFailed": "errors",
    "RegistrationError": "errors",
    "SizeMismatch": "errors",
    "TooFewStars": "errors",
    "PRESETS": "pipeline",
    "Options": "pipeline",
    "RegistrationResult": "pipeline",
    "Registrator": "pipeline",
    "image_fallback": "pipeline",
    "reference_result": "pipeline",
    "register_frame": "pipeline",
    "register_stars": "pipeline",
    "result_row": "pipeline",
    "Quality": "quality",
    "choose_reference": "reference",
    "background_mesh": "tilestack.stars",
    "detect_stars": "tilestack.stars",
    "MODELS": "transforms",
    "Transform": "transforms",
    "estimate": "transforms",
    "transform_error": "transforms",
}


def __getattr__(name: str):
    if name in _WHERE:
        where = _WHERE[name]
        module = where if "." in where else f"{__name__}.{where}"
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


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
