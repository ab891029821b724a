"""Workflow scripts keep freed frame-sized buffers (runtime.keep_freed_memory)."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "1":
    from tilestack.runtime import keep_freed_memory
    assert keep_freed_memory()
side = int(sys.argv[2])
a = np.ones((side, side), np.float32)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    b = a * 2.0
    c = b + a
    del b, c
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


def _faults(tuned: bool, side: int = 2048) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "1" if tuned else "0", str(side)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator only")
def test_frame_sized_temporaries_stop_faulting_once_freed_memory_is_kept():
    # 40 temporaries of 16 MB: ~4000 page faults each when glibc unmaps them on free
    untuned, tuned = _faults(False), _faults(True)
    assert untuned > 10_000
    assert tuned < untuned / 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator only")
def test_buffers_above_the_mmap_threshold_are_kept_too():
    # 64 MB temporaries (a 4096² plane; 24 MP frames are 100 MB): above the largest mmap
    # threshold glibc accepts, so only disabling mmap keeps them
    untuned, tuned = _faults(False, 4096), _faults(True, 4096)
    assert untuned > 10_000
    assert tuned < untuned / 5
