"""The cluster path for real: a one-node SLURM on localhost runs the small night through
``profiles/slurm`` and must give the same stack, bit for bit, as the local run.

The cluster comes from Debian's packages (slurmctld, slurmd, slurm-client, munge) through
tests/cluster/slurm_local.sh and is stopped again afterwards if this test started it. The
test skips, saying why, only where those packages are missing or it cannot run as root;
with TILESTACK_REQUIRE_SLURM=1 (set by .ci/run) it fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest
import wfrun

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(900)]

SCRIPT = wfrun.ROOT / "tests" / "cluster" / "slurm_local.sh"
PROFILE = wfrun.ROOT / "profiles" / "slurm"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def _unavailable() -> str | None:
    missing = [d for d in DAEMONS if _which(d) is None]
    if missing:
        return (
            f"SLURM packages not installed (missing {', '.join(missing)}): "
            "apt-get install slurmctld slurmd slurm-client munge"
        )
    if os.geteuid() != 0:
        return "the one-node SLURM cluster needs root to start munged and slurmd"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("TILESTACK_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM test required but unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    reason = _unavailable()
    if reason:
        _skip_or_fail(reason)
    running = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True)
    started_here = running.returncode != 0
    if started_here:
        res = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
        if res.returncode != 0:
            _skip_or_fail(f"slurm_local.sh start failed: {res.stderr.strip()[-800:]}")
    yield
    if started_here:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


def test_slurm_run_matches_local(cluster, tmp_path_factory):
    base = wfrun.session_base(tmp_path_factory)
    ref, local_seconds = wfrun.reference_run(base)
    wd = wfrun.make_workdir(base, "slurm")

    t0 = time.monotonic()
    # --cores = the node's CPUs: caps the grouped tail of the DAG to what one node has.
    cores = str(os.cpu_count() or 1)
    res = wfrun.snakemake(wd, "--workflow-profile", str(PROFILE), "--cores", cores, timeout=840)
    slurm_seconds = time.monotonic() - t0
    log = res.stdout + res.stderr

    n_submitted = len(re.findall(r"has been submitted with SLURM jobid \d+", log))
    assert n_submitted > 0, f"no job went through SLURM\n{log[-4000:]}"
    products = wfrun.assert_same_results(ref / "results", wd / "results")
    assert wfrun.leftovers(wd / "results") == []
    print(
        f"\nSLURM: {n_submitted} jobs, {slurm_seconds:.1f} s; local run {local_seconds:.1f} s; "
        f"identical: {[str(p) for p in products]}"
    )
