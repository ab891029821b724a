"""Kill-safe resume: SIGKILL the whole workflow at three points, rerun, get the same bits.

One run of the small night is killed (process group, SIGKILL: no cleanup handlers run) when
the first batch is registered, again when the first band is reconstructed, and again when the
stack is being assembled (each time as soon as that output appears, not after a delay);
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# (stage, outputs whose first appearance triggers the kill (globs below results/), an output
#  that must still be missing when the kill lands). The kill follows a file, not a delay:
# the pending output comes from a job that can only start after the trigger's job finished,
# and a job needs far longer to start Python than the 10 ms between two looks.
# (The test night is two batches and two bands of rows: when the first batch's table
# appears the other align job is still at work, likewise the second band's job; the stack is
# joined by its own `assemble` job.)
KILL_POINTS = [
    ("registration", ("registration/batches/*.csv",), "registration/transforms.csv"),
    ("reconstruction", ("reconstruction/L/band_*.npz",), "stack/L.fits"),
    ("stacking", ("stack/L.fits",), "final/preview.png"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return wfrun.session_base(tmp_path_factory)


def run_and_kill(wd: Path, triggers: tuple[str, ...], timeout: float = 300) -> dict:
    """Start the workflow in its own process group; SIGKILL the group as soon as a file
    matching one of ``triggers`` (globs below results/) exists. Returns what happened."""
    results = wd / "results"
    proc = subprocess.Popen(
        wfrun.snakemake_cmd(wd, "--cores", "2", "--rerun-incomplete"),
        cwd=wd,
        env=wfrun.run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []

    def watch() -> None:
        assert proc.stderr is not None
        lines.extend(proc.stderr)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    t0 = time.monotonic()
    seen: list[Path] = []
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        seen = [p for pat in triggers for p in results.glob(pat) if not p.name.startswith(".")]
        if seen:
            break
        time.sleep(0.01)
    killed = False
    if seen and proc.poll() is None:
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
    return {"killed": killed, "seen": seen, "rc": proc.returncode, "log": "".join(lines)}


def test_kill_at_three_points_then_resume(base):
    ref, ref_seconds = wfrun.reference_run(base)
    wd = wfrun.make_workdir(base, "resume")
    results = wd / "results"
    t0 = time.monotonic()
    for stage, triggers, pending in KILL_POINTS:
        info = run_and_kill(wd, triggers)
        assert info["seen"], f"{stage}: {triggers} never appeared\n{info['log'][-3000:]}"
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


def test_leftovers_finds_atomic_temporaries_and_staged_files(tmp_path):
    """What a kill can leave behind: an atomic write's temporary and a staged finish output."""
    from tilestack.io.atomic import atomic_path
    from tilestack.workflow.finish import StagedOutputs

    final = tmp_path / "final" / "L.fits"
    final.parent.mkdir()
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"x")
        part = tmp  # the temporary a SIGKILL right now would leave
        assert wfrun.leftovers(tmp_path) == [part]
    staged = Path(StagedOutputs.staged(str(tmp_path / "validation" / "validation.json")))
    staged.parent.mkdir()
    staged.write_text("{}")
    assert wfrun.leftovers(tmp_path) == [staged]
    (tmp_path / "validation" / "validation.json").write_text("{}")  # published files are fine
    assert wfrun.leftovers(tmp_path) == [staged]
