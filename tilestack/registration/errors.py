"""Registration errors: each says which step failed, so a frame's reason is one readable line."""

from tilestack.errors import TilestackError


class RegistrationError(TilestackError):
    """Base class for a frame that could not be registered."""


class TooFewStars(RegistrationError):
    """Too few stars were detected to form a pattern."""


class NoPatternFound(RegistrationError):
    """Triangle matching found no consistent set of star correspondences."""


class RansacFailed(RegistrationError):
    """Robust fitting found no model with enough inliers, or an implausible one."""


class AccuracyTooLow(RegistrationError):
    """A model was found but fails the acceptance rules (inliers, quadrants, RMS)."""


class SizeMismatch(RegistrationError):
    """Frame and reference images do not have the same shape."""
