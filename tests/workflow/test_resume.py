"""Kill-safe resume: SIGKILL the whole workflow at three points, rerun, get the same bits.

One run of the small night is killed (process group, SIGKILL: no cleanup handlers run) while
registration runs, again while reconstruction runs, and again while the stack is assembled;
after each kill ``snakemake --unlock`` and a plain rerun continue from what is complete
(``rerun-incomplete`` comes from the default profile and is passed explicitly too). The final
products must equal an uninterrupted run bit for bit, and no partial file may survive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import wfrun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

# (stage, rule whose start triggers the kill, seconds to wait after it started,
#  an output that must still be missing when the kill lands)
# (The test night is two bands of rows, so the stack is joined by its own `assemble` job.)
KILL_POINTS = [
    ("registration", "align", 0.8, "registration/transforms.csv"),
    ("reconstruction", "reconstruct", 0.8, "stack/L.fits"),
    ("stacking", "assemble", 0.4, "final/preview.png"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return wfrun.session_base(tmp_path_factory)


def run_and_kill(wd: Path, rule: str, delay: float, timeout: float = 300) -> dict:
    """Start the workflow in its own process group; SIGKILL the group ``delay`` seconds after
    Snakemake reports that a job of ``rule`` started. Returns what happened."""
    proc = subprocess.Popen(
        wfrun.snakemake_cmd(wd, "--cores", "2", "--rerun-incomplete"),
        cwd=wd,
        env=wfrun.run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen = threading.Event()
    lines: list[str] = []

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            s = line.strip()
            if s in (f"rule {rule}:", f"localrule {rule}:"):
                seen.set()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    t0 = time.monotonic()
    while not seen.is_set() and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.02)
    killed = False
    if seen.is_set():
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
    proc.wait(timeout=60)
    # Every process of the group must be gone (jobs run as children of Snakemake).
    for _ in range(100):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("processes of the killed workflow survived SIGKILL of the group")
    t.join(timeout=5)
    return {"killed": killed, "seen": seen.is_set(), "rc": proc.returncode, "log": "".join(lines)}


def test_kill_at_three_points_then_resume(base):
    ref, ref_seconds = wfrun.reference_run(base)
    wd = wfrun.make_workdir(base, "resume")
    results = wd / "results"
    t0 = time.monotonic()
    for stage, rule, delay, pending in KILL_POINTS:
        info = run_and_kill(wd, rule, delay)
        assert info["seen"], f"{stage}: no '{rule}' job started\n{info['log'][-3000:]}"
        assert info["killed"], f"{stage}: the run ended before the kill\n{info['log'][-3000:]}"
        assert info["rc"] == -signal.SIGKILL
        assert not (results / pending).exists(), (
            f"kill during {stage} landed too late: {pending} already exists"
        )
        # The lock of the killed run stays behind; --unlock is the documented first step.
        wfrun.snakemake(wd, "--unlock")
    wfrun.snakemake(wd, "--cores", "2", "--rerun-incomplete")
    elapsed = time.monotonic() - t0

    products = wfrun.assert_same_results(ref / "results", results)
    assert wfrun.leftovers(results) == [], "partial files survived the kills"
    # Snakemake agrees that nothing is left to do and nothing is marked incomplete.
    dry = wfrun.snakemake(wd, "-n", "--cores", "2")
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    print(
        f"\nresume: 3 kills + final rerun {elapsed:.1f} s "
        f"(uninterrupted run {ref_seconds:.1f} s); identical: {[str(p) for p in products]}"
    )
