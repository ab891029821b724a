"""Process-level helpers for workflow scripts: thread limits and clean error exits."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "OPENCV_FOR_THREADS_NUM",  # OpenCV's parallel_for pool, read when cv2 is imported
)


def set_threads(n: int) -> None:
    """Limit numba, OpenCV and BLAS to ``n`` threads so a job honours its allocation.

    Snakemake sets the BLAS variables from ``threads:`` but not numba's; OpenCV has its own
    pool. Call this before heavy work in every script. Neither numba nor OpenCV is imported
    here (together ~0.5 s of a job's start-up): both read their thread count from the
    environment when a script first imports them; a library already imported is set directly.
    """
    n = max(1, int(n))
    for var in _THREAD_VARS:
        os.environ[var] = str(n)
    if "numba" in sys.modules:
        try:
            numba = sys.modules["numba"]
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        except Exception:  # pool already smaller
            pass
    if "cv2" in sys.modules:
        try:
            sys.modules["cv2"].setNumThreads(n)
        except Exception:
            pass


def run_script(main: Callable[[], None]) -> None:
    """Run a workflow script's ``main``; expected failures exit with one line, no traceback."""
    from tilestack.errors import TilestackError

    try:
        main()
    except TilestackError as err:
        print(f"tilestack: error: {err}", file=sys.stderr)
        sys.exit(1)
