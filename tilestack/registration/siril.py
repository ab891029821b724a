"""The Siril engine: registration and classical stacking through ``siril-cli`` scripts.

Siril 1.0.x does not store its registration matrices in the ``.seq`` file; it prints them in
its log, one ``Transformation Matrix:`` block per frame, mapping frame → reference in Siril's
y-up pixel frame, where ``y_siril = H − 1 − y`` for our 0-based, y-down, pixel-centre ``y``
(x is unchanged). With ``F = [[1, 0, 0], [0, −1, H − 1], [0, 0, 1]]`` (its own inverse) our
matrix is ``M = F · H_siril · F``. The log prints 5 decimals, i.e. ≈ 0.01 px over 1000 px.

All of Siril's files (converted sequence, registered frames, log) stay in ``workdir``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from tilestack.errors import TilestackError
from tilestack.io.transforms_table import CONTRACT, matrix_row

SIRIL = "siril-cli"
COLUMNS = [*CONTRACT, "reason"]


def siril_available() -> bool:
    """True when ``siril-cli`` is on PATH."""
    return shutil.which(SIRIL) is not None


def _require() -> str:
    exe = shutil.which(SIRIL)
    if exe is None:
        raise TilestackError(
            "siril-cli not found on PATH: install Siril (Debian: apt-get install siril) "
            "or use engine: tilestack"
        )
    return exe


def run_siril(script: str, workdir: Path, name: str = "tilestack", timeout: float = 3600) -> str:
    """Run a Siril script in ``workdir``; returns the log text (also saved as ``{name}.log``)."""
    exe = _require()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ssf = workdir / f"{name}.ssf"
    ssf.write_text(script)
    env = dict(os.environ, HOME=str(workdir))  # Siril writes its config under $HOME
    proc = subprocess.run(
        [exe, "-s", str(ssf), "-d", str(workdir)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    log = proc.stdout + proc.stderr
    (workdir / f"{name}.log").write_text(log)
    failed = "Script execution failed" in log or proc.returncode != 0
    if failed:
        errs = [ln for ln in log.splitlines() if ln.startswith("log:") and "rror" in ln]
        detail = errs[-1][4:].strip() if errs else f"exit code {proc.returncode}"
        raise TilestackError(f"siril-cli failed on {ssf}: {detail} (see {name}.log)")
    return log


def _link_inputs(paths: list[Path], folder: Path, prefix: str = "f") -> None:
    """Name inputs ``{prefix}_{i:05d}{ext}`` so Siril's alphabetical order is ours."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i, p in enumerate(paths):
        p = Path(p).resolve()
        if not p.exists():
            raise TilestackError(f"{p}: input frame does not exist")
        suffix = "".join(p.suffixes[-2:]) if p.suffix.lower() == ".fz" else p.suffix
        (folder / f"{prefix}_{i:05d}{suffix}").symlink_to(p)


def parse_registration_log(log: str) -> tuple[dict[int, dict], int | None, int | None]:
    """Per-image (1-based) matrices and inlier counts, the reference image and image height."""
    frames: dict[int, dict] = {}
    current: int | None = None
    reference = None
    height = None
    last_read = None
    lines = log.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        m = re.search(r"Reading FITS: file \D*?(\d+)\.fits?\b.*?(\d+)x(\d+) pixels", ln)
        if m:
            last_read = int(m.group(1))
            height = int(m.group(3))
        if "Reference Image:" in ln:
            reference = last_read
        m = re.search(r"in image (\d+)\b", ln)
        if m:
            current = int(m.group(1))
            frames.setdefault(current, {})
        m = re.search(r"Image (\d+) skipped", ln)
        if m:
            k = int(m.group(1))
            frames.setdefault(k, {})["reason"] = ln.replace("log:", "").strip()
        if ln.strip() == "Transformation Matrix:" and current is not None:
            rows = [[float(v) for v in lines[i + r].split()] for r in (1, 2, 3)]
            frames[current]["H"] = np.array(rows, dtype=np.float64)
            i += 3
        m = re.search(r"Pair matches after fitting:\s*(\d+)", ln)
        if m and current is not None:
            frames[current]["n_inliers"] = int(m.group(1))
        i += 1
    return frames, reference, height


def siril_to_ours(h_siril: np.ndarray, height: int) -> np.ndarray:
    """Siril's y-up frame→reference matrix to ours (y-down, 0-based pixel centres)."""
    f = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, height - 1.0], [0.0, 0.0, 1.0]])
    m = f @ np.asarray(h_siril, dtype=np.float64) @ f
    return m / m[2, 2]


def _convert_script(threads: int, debayer: bool) -> list[str]:
    """The script's start: version, threads, and the lights converted into process/f_*."""
    return [
        "requires 0.99.10",
        f"setcpu {max(1, int(threads))}",
        "cd lights",
        _convert_cmd(debayer),
        "cd ../process",
    ]


def _convert_cmd(debayer: bool) -> str:
    return "convert f -out=../process" + (" -debayer" if debayer else "")


def register_with_siril(
    light_paths: list[str | Path],
    workdir: str | Path,
    reference: int | str | None = None,
    *,
    frame_names: list[str] | None = None,
    debayer: bool = False,
    threads: int = 1,
) -> pd.DataFrame:
    """Register lights with Siril's global star alignment; the transforms contract table.

    ``reference``: index into ``light_paths`` or a frame name (default: Siril's choice, its
    first image). ``frame_names`` default to the file names. Siril runs one thread while
    registering so its per-frame log blocks do not interleave.
    """
    _require()
    paths = [Path(p) for p in light_paths]
    if not paths:
        raise TilestackError("register_with_siril: no light frames given")
    names = list(frame_names) if frame_names is not None else [p.name for p in paths]
    workdir = Path(workdir).resolve()
    _link_inputs(paths, workdir / "lights")
    shutil.rmtree(workdir / "process", ignore_errors=True)
    ref_idx = None
    if reference is not None:
        ref_idx = names.index(reference) if isinstance(reference, str) else int(reference)
    script = [*_convert_script(threads, debayer), "setcpu 1"]
    if ref_idx is not None:
        script.append(f"setref f_ {ref_idx + 1}")
    script.append("register f_")
    log = run_siril("\n".join(script) + "\n", workdir, name="register")
    frames, ref_img, height = parse_registration_log(log)
    if ref_idx is not None:
        ref_img = ref_idx + 1
    if ref_img is None or height is None:
        raise TilestackError(f"{workdir / 'register.log'}: no reference image found in Siril's log")
    rows = []
    for k, name in enumerate(names, start=1):
        info = frames.get(k, {})
        row = {"frame": name, "is_reference": k == ref_img, "rms_px": np.nan}
        if k == ref_img:
            m, status, reason, n_in = np.eye(3), "ok", "", np.nan
        elif "H" in info:
            m = siril_to_ours(info["H"], height)
            status, reason, n_in = "ok", "", info.get("n_inliers", np.nan)
        else:
            m, status = np.full((3, 3), np.nan), "unregistered"
            reason = info.get("reason", "Siril reported no transformation")
            n_in = np.nan
        row.update(status=status, method="siril", n_inliers=n_in, reason=reason)
        row.update(matrix_row(m))
        rows.append(row)
    df = pd.DataFrame(rows)[COLUMNS]
    df["n_inliers"] = df["n_inliers"].astype("Int64")
    return df


def stack_with_siril(
    light_paths_or_registered: list[str | Path],
    workdir: str | Path,
    out_path: str | Path,
    *,
    register: bool = True,
    reference: int | None = None,
    rejection: str = "rej 3 3",
    norm: str = "addscale",
    debayer: bool = False,
    threads: int = 2,
    adu_scale: float | None = 65535.0,
) -> Path:
    """Siril's classical stack (``stack … rej 3 3 -norm=addscale``); returns ``out_path``.

    With ``register=True`` the inputs are raw lights (convert, register, stack the registered
    sequence); otherwise they are already on one grid and are stacked directly. Siril writes
    32-bit results scaled to [0, 1] for 16-bit inputs; ``adu_scale`` multiplies them back
    (None keeps Siril's file as is).
    """
    _require()
    paths = [Path(p) for p in light_paths_or_registered]
    if not paths:
        raise TilestackError("stack_with_siril: no frames given")
    workdir = Path(workdir).resolve()
    out_path = Path(out_path)
    _link_inputs(paths, workdir / "lights")
    shutil.rmtree(workdir / "process", ignore_errors=True)
    script = _convert_script(threads, debayer)
    seq = "f_"
    if register:
        if reference is not None:
            script.append(f"setref f_ {int(reference) + 1}")
        script.append("register f_")
        seq = "r_f_"
    script.append(f"stack {seq} {rejection} -norm={norm} -out=../stacked")
    run_siril("\n".join(script) + "\n", workdir, name="stack")
    produced = next(
        (workdir / f"stacked{e}" for e in (".fit", ".fits") if (workdir / f"stacked{e}").exists()),
        None,
    )
    if produced is None:
        raise TilestackError(f"{workdir / 'stack.log'}: Siril produced no stacked image")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with fits.open(produced) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float32)
        header = hdul[0].header.copy()
    if adu_scale is not None:
        data = data * np.float32(adu_scale)
    tmp = out_path.with_name(out_path.name + ".tmp")
    fits.PrimaryHDU(data=data, header=header).writeto(
        tmp, overwrite=True, output_verify="silentfix"
    )
    os.replace(tmp, out_path)
    return out_path
