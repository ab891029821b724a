"""Frame quality metrics: robust statistics, global (per frame) and local (per tile) metrics."""

from tilestack.metrics.global_metrics import frame_global_metrics, global_weights
from tilestack.robust import mad, robust_z, sigma_clipped_median

__all__ = ["frame_global_metrics", "global_weights", "mad", "robust_z", "sigma_clipped_median"]
