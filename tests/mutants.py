"""Planted bugs that the test suite must catch (mutation check; not collected by pytest).

Each mutant is one textual replacement in a temporary copy of the repository. The script
copies the working tree (git's tracked and untracked-but-not-ignored files, plus the
``__pycache__`` folders so numba's cached kernels are reused), applies one mutant, runs the
tests named for it against that copy and prints a table: mutant -> killed (the tests that
failed) or survived. A mutant whose text is no longer in the source is reported ``stale``
(update its text after a refactor). The unmutated copy is run first over the union of the
tests (``baseline``): it must pass, or the table means nothing. ``--head`` copies the last
commit instead (``git archive``), leaving out uncommitted work in the checkout.

    .venv/bin/python tests/mutants.py                 # every mutant, about 6 min on 2 cores
    .venv/bin/python tests/mutants.py local-weights-sign flat-multiplied   # chosen ones
    .venv/bin/python tests/mutants.py --list

The copy is imported through ``PYTHONPATH`` (it precedes the editable install of the venv),
so the workflow runs that the tests start use the mutated package too.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MONO_RUN = "tests/workflow/test_workflow.py::test_mono_run_matches_the_truth"


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "local-weights-sign",
        "§8 local weights: the three terms of log L negated (clouded, soft tiles weigh more)",
        "tilestack/metrics/snr_weights.py",
        'log_l = -(2.0 + float(sharpen)) * shrunk["dF"] + 2.0 * shrunk["dT"] + shrunk["dE"]',
        'log_l = (2.0 + float(sharpen)) * shrunk["dF"] - 2.0 * shrunk["dT"] - shrunk["dE"]',
        ("tests/unit/test_revision2.py",),
    ),
    Mutant(
        "align-inverse-warp",
        "align job: every frame warped with the inverse of its transform",
        "tilestack/workflow/align.py",
        "planes = warp_planes(image, valid, row_matrix(row), settings)",
        "planes = warp_planes(image, valid, np.linalg.inv(row_matrix(row)), settings)",
        (MONO_RUN,),
    ),
    Mutant(
        "bayer-xoffset",
        "Bayer phase off by one: XBAYROFF read one column off",
        "tilestack/cfa.py",
        "p = shift_pattern(validate_pattern(pattern), int(yoff) % 2, int(xoff) % 2)",
        "p = shift_pattern(validate_pattern(pattern), int(yoff) % 2, (int(xoff) + 1) % 2)",
        ("tests/unit/test_cfa.py",),
    ),
    Mutant(
        "flat-multiplied",
        "calibration: lights multiplied by the master flat instead of divided (fused kernel)",
        "tilestack/calibration.py",
        "out = out / f",
        "out = out * f",
        ("tests/unit/test_calibration.py",),
    ),
    Mutant(
        "no-rejection-workflow",
        "band jobs: §9 rejection switched off whatever the config says",
        "tilestack/stacking.py",
        'rejection=bool(rc["rejection"]),',
        "rejection=False,",
        (MONO_RUN,),
    ),
    Mutant(
        "scale-inverted",
        "§5 photometric scale s inverted (frames pushed away from the reference's flux)",
        "tilestack/normalization.py",
        "return float(np.exp(weighted_median(lr, 1.0 / var))), int(lr.size)",
        "return float(np.exp(-weighted_median(lr, 1.0 / var))), int(lr.size)",
        ("tests/unit/test_revision2.py",),
    ),
    Mutant(
        "weights-wrong-tile",
        "per-tile weights written to the mirrored tile (tile T-1-t gets tile t's weight)",
        "tilestack/tiles.py",
        "m[idx[keep], tiles] = np.asarray(table[column], dtype=np.float64)[keep]",
        "m[idx[keep], n_tiles - 1 - tiles] = np.asarray(table[column], dtype=np.float64)[keep]",
        ("tests/unit/test_revision2.py",),
    ),
    Mutant(
        "verdict-snr-threshold",
        "verdict: faint-star SNR ratio compared the wrong way round (<= instead of >=)",
        "tilestack/validation/verdict.py",
        "snr_ratio is not None and snr_ratio >= s_ok - _EPS,",
        "snr_ratio is not None and snr_ratio <= s_ok - _EPS,",
        ("tests/unit/test_validation.py",),
    ),
]


def tree_files(root: Path) -> list[Path]:
    """Files of the working tree git knows of (tracked, or untracked and not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [Path(p) for p in out.split("\0") if p]


def copy_tree(root: Path, dest: Path, head: bool = False) -> None:
    """The working tree (or, with ``head``, the last commit) of ``root`` into ``dest``."""
    if head:
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=root, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return  # file times are the commit's: numba compiles its kernels once, in the baseline
    for rel in tree_files(root):
        src = root / rel
        if not src.is_file():
            continue  # deleted in the working tree
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)  # keeps mtimes: numba's cache stays valid
    for cache in (root / "tilestack").rglob("__pycache__"):
        shutil.copytree(cache, dest / cache.relative_to(root), dirs_exist_ok=True)


def apply(copy: Path, m: Mutant) -> bool:
    """Apply ``m`` to the copy; False when its text is not found exactly once."""
    path = copy / m.path
    text = path.read_text()
    if text.count(m.old) != 1:
        return False
    path.write_text(text.replace(m.old, m.new))
    return True


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, list[str], str]:
    """pytest of ``tests`` in the copy: (return code, failed test ids, first error line)."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONHASHSEED="0")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(
            cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, ["(timeout)"], ""
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    first = re.search(r"^E +(\S.*)$", proc.stdout, flags=re.M)
    why = first.group(1)[:90] if first else proc.stdout[-3000:]
    return proc.returncode, failed, why


def check_import(copy: Path) -> None:
    """The copy, not the checkout, must be what ``import tilestack`` finds."""
    env = dict(os.environ, PYTHONPATH=str(copy))
    where = subprocess.run(
        [sys.executable, "-c", "import tilestack; print(tilestack.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not where.startswith(str(copy)):
        sys.exit(f"mutants: the copy is not imported (tilestack from {where})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument(
        "--head", action="store_true", help="mutate the last commit, not the working tree"
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    args = ap.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:24s} {m.path}: {m.what}")
        return 0
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        sys.exit(f"mutants: unknown mutant(s): {', '.join(sorted(unknown))}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tilestack-mutants-") as tmp:
        pristine = Path(tmp) / "pristine"
        copy_tree(ROOT, pristine, head=args.head)
        check_import(pristine)
        if not args.no_baseline:
            union = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            t0 = time.monotonic()
            rc, failed, why = run_tests(pristine, union, args.timeout)
            state = "passed" if rc == 0 else "FAILED"
            rows.append(("baseline", state, failed, "", time.monotonic() - t0))
            if rc != 0:
                print(why)
                print(
                    "mutants: the unmutated copy fails its tests; fix that first", file=sys.stderr
                )
                return 2
        for m in chosen:
            work = Path(tmp) / m.name
            shutil.copytree(pristine, work, symlinks=True)
            t0 = time.monotonic()
            if not apply(work, m):
                rows.append((m.name, "stale", [], "", 0.0))
            else:
                rc, failed, why = run_tests(work, m.tests, args.timeout)
                state = "killed" if rc != 0 else "SURVIVED"
                if rc not in (0, 1):  # errors, interrupted or timed out: look at the output
                    state = f"killed (pytest rc {rc})"
                rows.append((m.name, state, failed, why if rc else "", time.monotonic() - t0))
            shutil.rmtree(work, ignore_errors=True)
            print(f"{rows[-1][0]}: {rows[-1][1]}", file=sys.stderr, flush=True)
    print("| mutant | result | failing tests | first failure | seconds |")
    print("|---|---|---|---|---|")
    for name, state, failed, why, secs in rows:
        shown = ", ".join(f"`{f.removeprefix('tests/')}`" for f in failed[:2])
        if len(failed) > 2:
            shown += f" (+{len(failed) - 2})"
        why = why.replace("|", "/").replace("`", "'")
        print(f"| {name} | {state} | {shown} | {why} | {secs:.0f} |")
    bad = [r for r in rows if r[1] in ("SURVIVED", "stale")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
