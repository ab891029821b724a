"""Bundle a finished run into one byte-reproducible .tar.gz (workflow rule ``archive``).

Why: a stack is only worth keeping with what made it. The archive holds the workflow source
and version, the effective config, a manifest with sha256 checksums of the inputs and of every
archived product, the software environment, the Snakemake HTML report and the products
themselves. Members are sorted, owners and times fixed and the gzip header carries no time or
name, so archiving the same run twice gives the same bytes (``sha256sum`` can compare them).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

import yaml

from tilestack import __version__

# Fixed member time (2000-01-01T00:00:00Z) unless SOURCE_DATE_EPOCH says otherwise.
DEFAULT_EPOCH = 946684800
# Workflow source that describes the run (relative to the workflow's base directory).
SOURCE_DIRS = ("rules", "scripts", "config", "envs", "profiles", "report", "tilestack")
SOURCE_FILES = ("Snakefile", "pyproject.toml", "README.md")
SOURCE_SUFFIXES = {".py", ".smk", ".yaml", ".yml", ".rst", ".md", ".toml", ".json", ".txt"}
# Products copied into the archive (relative to the results folder); everything else under
# the results folder is listed in the manifest only if it matches PRODUCT_GLOBS too.
PRODUCT_GLOBS = (
    "scan/*.csv",
    "scan/*.json",
    "registration/*.csv",
    "registration/*.json",
    "tiles/*.json",
    "metrics/global_*.csv",
    "clustering/*.csv",
    "stack/*.fits",
    "classical/*.fits",
    "global_only/*.fits",
    "final/*",
    "validation/*",
    "logs/*.log",
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return int(value) if value.isdigit() else DEFAULT_EPOCH


def workflow_sources(basedir: Path) -> list[Path]:
    """Workflow files (relative paths), sorted; caches and bytecode left out."""
    out = [Path(f) for f in SOURCE_FILES if (basedir / f).is_file()]
    for d in SOURCE_DIRS:
        root = basedir / d
        if not root.is_dir():
            continue
        for p in root.rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in SOURCE_SUFFIXES:
                out.append(p.relative_to(basedir))
    return sorted(set(out), key=lambda p: p.as_posix())


def git_version(basedir: Path) -> dict:
    """Commit and dirty flag of the workflow checkout, when it is a git repository."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "-C", str(basedir), *args],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def environment_text() -> str:
    """Python, platform and every installed distribution with its version (pip-freeze style)."""
    dists = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name:
            dists[name.lower()] = f"{name}=={d.version}"
    lines = [
        f"# python {platform.python_version()} ({platform.python_implementation()})",
        f"# platform {platform.platform()}",
        *(dists[k] for k in sorted(dists)),
    ]
    return "\n".join(lines) + "\n"


def product_files(results: Path, exclude: set[Path]) -> list[Path]:
    """Products of the run to archive (relative to ``results``), sorted."""
    found = set()
    for pattern in PRODUCT_GLOBS:
        for p in results.glob(pattern):
            if p.is_file() and not p.name.endswith(".part") and not p.name.startswith("."):
                found.add(p.resolve())
    found -= {e.resolve() for e in exclude}
    return sorted((p.relative_to(results.resolve()) for p in found), key=lambda p: p.as_posix())


def input_rows(frames_csv: Path) -> list[dict]:
    """Light frames with their checksums, from the run's own manifest (scan/frames.csv)."""
    if not frames_csv.is_file():
        return []
    with open(frames_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        path = r.get("path", "")
        size = Path(path).stat().st_size if path and Path(path).is_file() else ""
        out.append({"role": "input", "path": path, "bytes": size, "sha256": r.get("checksum", "")})
    return out


def calibration_rows(calibration: dict[str, list[str]]) -> list[dict]:
    out = []
    for kind in sorted(calibration):
        for path in sorted(calibration[kind]):
            p = Path(path)
            out.append(
                {
                    "role": f"input:{kind}",
                    "path": path,
                    "bytes": p.stat().st_size,
                    "sha256": sha256_file(p),
                }
            )
    return out


def manifest_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["role", "path", "bytes", "sha256"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def config_yaml(config: dict) -> str:

    return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=True)


def make_report(workdir: Path, snakefile: Path, config: dict, dest: Path, log) -> bool:
    """Render ``snakemake --report`` for this run into ``dest``; False when it fails.

    Runs a second Snakemake on the same working directory without locking (the calling run
    holds the lock) and with the effective config written out, so the report describes
    exactly this run.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(config_yaml(config))
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(snakefile),
            "--directory",
            str(workdir),
            "--configfile",
            str(cfg),
            "--nolock",
            "--report",
            str(dest),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        log.write(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}\n")
    return res.returncode == 0 and dest.is_file()


def _tarinfo(name: str, size: int, mtime: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(dest: Path, members: dict[str, bytes | Path], mtime: int) -> None:
    """Write ``members`` (archive name -> bytes or file) as a reproducible .tar.gz.

    Sorted names, fixed owner/mode/time, GNU tar headers (no pax time records) and a gzip
    header without name or time. Written beside ``dest`` and renamed, so a killed job leaves
    no half archive.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                    for name in sorted(members):
                        src = members[name]
                        if isinstance(src, Path):
                            info = _tarinfo(name, src.stat().st_size, mtime)
                            with open(src, "rb") as fh:
                                tar.addfile(info, fh)
                        else:
                            info = _tarinfo(name, len(src), mtime)
                            tar.addfile(info, io.BytesIO(src))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_archive(
    *,
    dest: Path,
    results: Path,
    basedir: Path,
    workdir: Path,
    config: dict,
    calibration: dict[str, list[str]],
    with_report: bool,
    log,
    exclude: tuple[Path, ...] = (),
) -> dict:
    """Collect everything and write the archive; returns the summary stored in it."""
    top = dest.name.removesuffix(".tar.gz")
    members: dict[str, bytes | Path] = {}

    sources = workflow_sources(basedir)
    for rel in sources:
        members[f"{top}/workflow/{rel.as_posix()}"] = basedir / rel

    products = product_files(results, exclude={dest, *exclude})
    for rel in products:
        members[f"{top}/results/{rel.as_posix()}"] = results / rel

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.html"
        has_report = with_report and make_report(
            workdir, basedir / "Snakefile", config, report, log
        )
        if has_report:
            members[f"{top}/report.html"] = report.read_bytes()

        output_rows = [
            {
                "role": "output",
                "path": f"results/{rel.as_posix()}",
                "bytes": (results / rel).stat().st_size,
                "sha256": sha256_file(results / rel),
            }
            for rel in products
        ]
        rows = input_rows(results / "scan" / "frames.csv") + calibration_rows(calibration)
        members[f"{top}/manifest.csv"] = manifest_csv(rows + output_rows).encode()
        members[f"{top}/config.yaml"] = config_yaml(config).encode()
        members[f"{top}/environment.txt"] = environment_text().encode()
        summary = {
            "tilestack_version": __version__,
            "git": git_version(basedir),
            "n_inputs": len(rows),
            "n_outputs": len(output_rows),
            "n_workflow_files": len(sources),
            "report": has_report,
            "python": platform.python_version(),
        }
        members[f"{top}/VERSION.json"] = (
            json.dumps(summary, indent=2, sort_keys=True) + "\n"
        ).encode()
        write_archive(dest, members, source_epoch())
    return summary


def archive(job) -> None:
    """Rule ``archive`` (``scripts/archive.py``); ``job`` is Snakemake's script object (or anything
    with its attributes: input, output, params, wildcards, threads, log, config)."""
    with open(job.log[0], "w") as log:
        summary = build_archive(
            dest=Path(job.output[0]),
            results=Path(job.output[0]).parent.parent,  # the file is {results}/archive/*.tar.gz
            basedir=Path(job.params.basedir),
            workdir=Path.cwd(),
            config=dict(job.config),
            calibration={k: list(v) for k, v in dict(job.params.calibration).items()},
            with_report=bool(job.params.with_report),
            log=log,
            exclude=(Path(job.log[0]),),
        )
        log.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
