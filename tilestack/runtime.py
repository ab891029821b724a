"""Process-level helpers for workflow scripts: thread limits, progress logs and clean error exits."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tilestack.errors import TilestackError, disk_error

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


# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
    """Let glibc keep freed frame-sized buffers for reuse instead of unmapping them.

    By default glibc serves every allocation above a few MB with a fresh ``mmap`` and returns
    it to the system on ``free``; a job that forms a dozen frame-sized temporaries per frame
    then pays a page fault for every 4 kB of each of them, again for every frame (measured on
    the metrics of a 2048² plane: 11 500 faults and up to 0.3 s of system time per plane, none
    after this call). Buffers up to 32 MB now come from the heap and freed memory stays
    there, so peak memory is unchanged and repeated temporaries cost nothing. Larger buffers
    (a 24 MP frame is 100 MB, above the largest threshold glibc accepts) come from the heap
    too, as ``mmap`` is not used at all (align on 24 MP mono: system time 95 -> 14 s per
    30 frames, peak 1.8 -> 2.0 GB). Returns False (and changes nothing) where the C library
    is not glibc.
    """
    name = ctypes.util.find_library("c")
    if not name or sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    ok &= mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ok &= mallopt(_M_TOP_PAD, TOP_PAD)
    ok &= mallopt(_M_MMAP_MAX, 0)  # glibc still falls back to mmap when the heap cannot grow
    return bool(ok)


def run_script(main: Callable[[], None]) -> None:
    """Run a workflow script's ``main``; expected failures exit with one line, no traceback.

    Expected: a :class:`TilestackError`, or a disk that is full, over quota or read-only
    wherever the job was writing (its outputs are written atomically, so none is left).
    """
    keep_freed_memory()
    try:
        main()
    except TilestackError as err:
        print(f"tilestack: error: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        full = disk_error(err)
        if full is None:
            raise
        print(f"tilestack: error: {full}", file=sys.stderr)
        sys.exit(1)


class Progress:
    """Progress lines (items done, rate, ETA) appended to a rule's log file."""

    def __init__(self, log_path, total: int, unit: str = "frames", what: str = ""):
        self.path = Path(log_path) if log_path else None
        self.total = max(0, int(total))
        self.unit = unit
        self.what = what
        self.done = 0
        self.t0 = time.perf_counter()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"start {what}: {self.total} {unit}")

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.path is None:
            print(line, flush=True)
            return
        try:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")
        except OSError as err:
            raise (disk_error(err, self.path) or err) from err

    def step(self, n: int = 1, note: str = "") -> None:
        self.done += n
        dt = time.perf_counter() - self.t0
        rate = self.done / dt if dt > 0 else float("inf")
        left = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
        extra = f" ({note})" if note else ""
        self.log(
            f"{self.unit} {self.done}/{self.total} done, {rate:.2f} {self.unit}/s, "
            f"ETA {left:.0f} s{extra}"
        )

    def finish(self, message: str = "") -> None:
        dt = time.perf_counter() - self.t0
        peak = peak_memory_mb()
        mem = f", peak memory {peak:.0f} MB" if peak is not None else ""
        self.log(f"finished {self.what} in {dt:.1f} s{mem}{(': ' + message) if message else ''}")


def peak_memory_mb() -> float | None:
    """This process's peak resident memory (VmHWM, MB); None where /proc is not available.

    Unlike ``ru_maxrss``, VmHWM belongs to this process image only (not inherited across the
    exec of a job's interpreter), so it is the job's own peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def logged(main, log_path):
    """Wrap a script's ``main`` so a failure is also written to the rule's log file.

    Expected failures (TilestackError, a full disk) get their one line, anything else its
    traceback; the exception is re-raised for :func:`tilestack.runtime.run_script` to report.
    A log that cannot be written (the disk is full) is left as it is.
    """

    def wrapped():
        try:
            main()
        except BaseException as err:
            if log_path:
                expected = err if isinstance(err, TilestackError) else disk_error(err)
                text = f"tilestack: error: {expected}\n" if expected else traceback.format_exc()
                try:
                    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                    with open(log_path, "a") as fh:
                        fh.write(text)
                except OSError:
                    pass
            raise

    return wrapped
