"""Declared memory of the whole-frame jobs follows the frame size (a cluster enforces it)."""

from tilestack.plan import frame_job_mem_mb

# peaks measured by benchmarks/scale.py (VmHWM of each job's log, MiB)
MEASURED_24MP_PEAK = 2093  # finish, 50 x 6248x4176 mono (align 2047, prepare 1617)


def test_small_frames_keep_the_configured_budget():
    assert frame_job_mem_mb(2048, 2048, 2000) == 2000
    assert frame_job_mem_mb(1920, 1080, 3000) == 3000


def test_large_frames_declare_at_least_their_measured_peak():
    declared = frame_job_mem_mb(6248, 4176, 2000)
    assert declared >= MEASURED_24MP_PEAK * 1.05
    assert declared <= 2560  # and no more than the 2.5 GB goal of a 24 MP job


def test_grows_with_the_pixel_count():
    sizes = [(4096, 4096), (6248, 4176), (8256, 5504), (11648, 8736)]
    values = [frame_job_mem_mb(w, h, 2000) for w, h in sizes]
    assert values == sorted(values) and len(set(values)) == len(values)
