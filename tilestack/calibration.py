"""Calibration masters and light calibration (METHODOLOGY §2).

``light = (raw - bias - dark) / flat``, all linear. Masters are sigma-clipped means across
frames (per pixel, robust centre and scale), streamed in row bands so memory holds only
``n_frames x band_rows`` pixels. The dark is stored bias-subtracted so it can be scaled to any
exposure (dark current is proportional to exposure); the flat is normalised to median 1 on each
CFA phase separately so it corrects vignetting without shifting colour balance. Hot and cold
pixels are *flagged* (weight 0 downstream), never painted over.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from numba import njit
from scipy.ndimage import median_filter

from tilestack import cfa
from tilestack.errors import CalibrationError, InputError
from tilestack.io.frames import (
    read_frame,
    read_frame_info,
    read_header,
    read_image,
    read_rows,
    write_fits,
)
from tilestack.robust import MAD_TO_SIGMA, sigma_clipped_mean
from tilestack.stars import exact_median

KINDS = ("bias", "dark", "flat")
MIN_FLAT = 0.1  # flat values below this (10 % of the phase median) cannot be corrected
EXPOSURE_TOLERANCE = 0.05


@dataclass
class Master:
    """A combined calibration frame and what is needed to apply it correctly."""

    kind: str
    data: np.ndarray
    exposure: float | None = None
    bayer: str | None = None
    n_frames: int = 0
    bias_subtracted: bool = False
    sigma: float = 3.0
    sources: list[str] = field(default_factory=list)

    def header(self) -> dict:
        hdr = {
            "IMAGETYP": f"MASTER {self.kind.upper()}",
            "TSKIND": (self.kind, "tilestack master kind"),
            "NCOMBINE": (int(self.n_frames), "frames combined (sigma-clipped mean)"),
            "TSSIGMA": (float(self.sigma), "clipping threshold [robust sigma]"),
            "TSBIASUB": (bool(self.bias_subtracted), "bias already subtracted"),
        }
        if self.exposure is not None:
            hdr["EXPTIME"] = (float(self.exposure), "[s] exposure the master represents")
        if self.bayer:
            hdr["BAYERPAT"] = (self.bayer, "Bayer cell, numpy order")
            hdr["ROWORDER"] = "TOP-DOWN"
        return hdr

    def write(self, path) -> Path:
        """Atomic float32 FITS with the metadata :func:`load_master` needs."""
        return write_fits(path, self.data, header=self.header())


def load_master(path) -> Master:
    hdr = read_header(path)
    kind = str(hdr.get("TSKIND", "")).lower()
    if kind not in KINDS:
        raise CalibrationError(f"not a tilestack master: {Path(path).name} (no TSKIND)")
    exp = hdr.get("EXPTIME")
    info = read_frame_info(path)
    return Master(
        kind=kind,
        data=read_image(path),
        exposure=float(exp) if exp is not None else None,
        bayer=info.bayer,
        n_frames=int(hdr.get("NCOMBINE", 0)),
        bias_subtracted=bool(hdr.get("TSBIASUB", False)),
        sigma=float(hdr.get("TSSIGMA", 3.0)),
    )


# --------------------------------------------------------------------------- combination


def _band_rows(n: int, width: int, memory_mb: float) -> int:
    # float32 stack plus ~5 temporaries of the same size during clipping
    per_row = max(1, n) * width * 4 * 6
    return max(1, int(memory_mb * 1e6 // per_row))


def combine_files(
    paths: Sequence,
    sigma: float = 3.0,
    prepare=None,
    memory_mb: float = 1000.0,
) -> np.ndarray:
    """Sigma-clipped mean of many frames, reading them band by band.

    ``prepare(i, rows, y0, y1)`` may transform frame ``i``'s rows (subtract bias, scale) before
    combining. Memory stays at about ``memory_mb``. FITS rows are read in place; camera RAW
    files (no row access) are decoded once into temporary memory-mapped arrays.
    """
    infos = [read_frame_info(p) for p in paths]
    h, w = infos[0].height, infos[0].width
    step = _band_rows(len(paths), w, memory_mb)
    out = np.empty((h, w), np.float32)
    with tempfile.TemporaryDirectory(prefix="tilestack-raw-") as tmp:
        readers = [
            _row_reader(p, info, Path(tmp), i, single=step >= h)
            for i, (p, info) in enumerate(zip(paths, infos, strict=True))
        ]
        for y0 in range(0, h, step):
            y1 = min(h, y0 + step)
            block = np.empty((len(paths), y1 - y0, w), np.float32)
            for i, read in enumerate(readers):
                rows = read(y0, y1)
                block[i] = prepare(i, rows, y0, y1) if prepare else rows
            out[y0:y1], _ = sigma_clipped_mean(block, sigma)
    return out


def _row_reader(path, info, tmp: Path, i: int, single: bool):
    if info.format != "raw" or single:
        return lambda y0, y1: read_rows(path, y0, y1)
    cache = tmp / f"{i:05d}.npy"
    np.save(cache, read_image(path))
    data = np.load(cache, mmap_mode="r")
    return lambda y0, y1: np.array(data[y0:y1], dtype=np.float32)


def _check_consistent(paths, kind: str):
    if not paths:
        raise CalibrationError(f"no {kind} frames given")
    try:
        infos = [read_frame_info(p) for p in paths]
    except InputError as err:
        raise CalibrationError(f"{kind} frames: {err}") from err
    sizes = {(i.width, i.height) for i in infos}
    if len(sizes) > 1:
        ref = (infos[0].width, infos[0].height)
        odd = [i.path.name for i in infos if (i.width, i.height) != ref]
        raise CalibrationError(
            f"mixed {kind} frame sizes: expected {ref[0]}x{ref[1]}: {', '.join(odd)}"
        )
    return infos


def _median_exposure(infos) -> float | None:
    exps = [i.exposure for i in infos if i.exposure is not None]
    return float(np.median(exps)) if exps else None


def _check_shape(master: Master | None, shape, what: str) -> None:
    if master is not None and master.data.shape != tuple(shape):
        mh, mw = master.data.shape
        raise CalibrationError(
            f"master {master.kind} is {mw}x{mh} but the {what} are {shape[1]}x{shape[0]}"
        )


def dark_factor(dark: Master, exposure: float | None, what: str = "frame") -> float:
    """Factor that scales ``dark`` to a frame of ``exposure`` seconds.

    A bias-subtracted master dark is pure dark current, which grows linearly with exposure. A
    dark that still holds the bias can only be used at its own exposure (±5 %): factor 1.
    """
    if dark.bias_subtracted:
        if exposure is None or dark.exposure is None or dark.exposure <= 0:
            return 1.0
        return float(exposure) / float(dark.exposure)
    if exposure is not None and dark.exposure is not None:
        if abs(exposure - dark.exposure) > EXPOSURE_TOLERANCE * dark.exposure:
            raise CalibrationError(
                f"dark scaling needs a master bias: darks are {dark.exposure:g} s, "
                f"the {what} {exposure:g} s"
            )
    return 1.0


def dark_for_exposure(dark: Master, exposure: float | None, what: str = "frame") -> np.ndarray:
    """The dark signal to subtract from a frame of ``exposure`` seconds (see :func:`dark_factor`)."""
    f = dark_factor(dark, exposure, what)
    return dark.data if f == 1.0 else dark.data * np.float32(f)


def _dark_matches(dark: Master | None, exposure: float | None) -> bool:
    """A dark that still holds the bias can stand in for the bias at its own exposure."""
    if dark is None or dark.bias_subtracted:
        return False
    if exposure is None or dark.exposure is None:
        return True
    return abs(exposure - dark.exposure) <= EXPOSURE_TOLERANCE * dark.exposure


def _offset_rows(bias: Master | None, dark: Master | None, dark_f: float, y0: int, y1: int):
    """Pedestal + dark rows to subtract (a dark holding the bias replaces the bias)."""
    if dark is not None and not dark.bias_subtracted:
        return dark.data[y0:y1]
    off = 0.0 if bias is None else bias.data[y0:y1]
    if dark is not None:
        off = off + dark.data[y0:y1] * np.float32(dark_f)
    return off


def build_master(
    paths: Sequence,
    kind: str,
    *,
    bias: Master | None = None,
    dark: Master | None = None,
    sigma: float = 3.0,
    bayer: str | None = None,
    memory_mb: float = 1000.0,
) -> Master:
    """Combine calibration frames into a master.

    - ``bias``: sigma-clipped mean.
    - ``dark``: frames minus the master bias (when given), each scaled to the median dark
      exposure when exposures differ (needs the bias), then combined; ``bias_subtracted`` tells
      :func:`calibrate` whether it may scale the dark to the light's exposure.
    - ``flat``: frames minus bias (and dark scaled to the flat exposure), each divided by its
      own median so brighter and dimmer flats combine fairly, combined, then normalised to
      median 1 on each CFA phase (``bayer`` or the files' pattern; mono: the whole frame).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    paths = [Path(p) for p in paths]
    infos = _check_consistent(paths, kind)
    shape = (infos[0].height, infos[0].width)
    _check_shape(bias, shape, f"{kind} frames")
    _check_shape(dark, shape, f"{kind} frames")
    if bayer is None:
        bayer = infos[0].bayer
    exposure = _median_exposure(infos)
    scales = [1.0] * len(paths)
    dark_fs = [0.0] * len(paths)
    use_bias = bias if kind != "bias" else None
    use_dark = dark if kind == "flat" else None

    if kind == "dark":
        scales = _dark_scales(infos, exposure, bias)
    elif kind == "flat":
        scales, dark_fs = _flat_scales(infos, bias, dark, shape)

    def prepare(i: int, rows: np.ndarray, y0: int, y1: int) -> np.ndarray:
        if use_bias is not None or use_dark is not None:
            rows = rows - _offset_rows(use_bias, use_dark, dark_fs[i], y0, y1)
        if scales[i] != 1.0:
            rows = rows * np.float32(scales[i])
        return rows

    data = combine_files(paths, sigma=sigma, prepare=prepare, memory_mb=memory_mb)
    if kind == "flat":
        data = normalize_flat(data, bayer)
    return Master(
        kind=kind,
        data=data,
        exposure=None if kind == "bias" else exposure,
        bayer=bayer,
        n_frames=len(paths),
        bias_subtracted=kind == "dark" and bias is not None,
        sigma=float(sigma),
        sources=[p.name for p in paths],
    )


def _dark_scales(infos, exposure, bias: Master | None) -> list[float]:
    """Darks of differing exposures are scaled to the median exposure (needs the bias)."""
    exps = [i.exposure for i in infos]
    differ = exposure is not None and any(
        e is None or abs(e - exposure) > 1e-9 * exposure for e in exps
    )
    if differ and bias is None:
        raise CalibrationError(
            "darks of different exposures need a master bias to be scaled: "
            + ", ".join(f"{i.path.name} ({i.exposure:g} s)" for i in infos if i.exposure)
        )
    if differ:
        return [exposure / e if e else 1.0 for e in exps]
    return [1.0] * len(infos)


def _flat_scales(infos, bias: Master | None, dark: Master | None, shape):
    """``(1 / each flat's median above the offset, each flat's dark factor)``."""
    scales = [1.0] * len(infos)
    dark_fs = [0.0] * len(infos)
    for i, info in enumerate(infos):
        if bias is None and not _dark_matches(dark, info.exposure):
            got = (
                f": darks are {dark.exposure:g} s, flats {info.exposure:g} s"
                if (dark is not None and dark.exposure and info.exposure)
                else ""
            )
            raise CalibrationError(
                "flats need a master bias (or darks taken at the flat exposure) to remove "
                f"the pedestal before normalisation{got}"
            )
        if dark is not None:
            dark_fs[i] = dark_factor(dark, info.exposure, "flats")
        off = _offset_rows(bias, dark, dark_fs[i], 0, shape[0])
        level = float(np.nanmedian(read_image(info.path) - off))
        if not np.isfinite(level) or level <= 0:
            raise CalibrationError(
                f"flat {info.path.name} has no signal above the bias (median {level:g})"
            )
        scales[i] = 1.0 / level
    return scales, dark_fs


def normalize_flat(flat: np.ndarray, bayer: str | None) -> np.ndarray:
    """Divide each CFA phase (or the whole mono frame) by its own median -> median 1."""
    out = np.array(flat, dtype=np.float32, copy=True)
    phases = [(0, 0), (0, 1), (1, 0), (1, 1)] if bayer else [None]
    for ph in phases:
        view = out if ph is None else out[ph[0] :: 2, ph[1] :: 2]
        med = float(np.nanmedian(view))
        if not np.isfinite(med) or med <= 0:
            raise CalibrationError(f"master flat has no signal on CFA phase {ph}")
        view /= np.float32(med)
    return out


# --------------------------------------------------------------------------- sets against the lights

FOLDER_KEYS = {"bias": "bias", "dark": "darks", "flat": "flats"}
FLAT_WARN_FRACTION = 0.001  # unusable flat pixels above this fraction are reported
MONO_FLAT_TOLERANCE = 0.02  # four CFA phases within 2 % of one level: a flat without a mosaic
LIGHT_SAMPLE = 3  # lights whose pixels give the sky level a master must stay below
MAX_LISTED = 10

# IMAGETYP spellings (upper case, single spaces; "MASTER " in front is read separately)
FRAME_TYPES = {
    "LIGHT": "light",
    "LIGHT FRAME": "light",
    "OBJECT": "light",
    "SCIENCE": "light",
    "DARK": "dark",
    "DARK FRAME": "dark",
    "FLAT": "flat",
    "FLAT FIELD": "flat",
    "FLAT FRAME": "flat",
    "FLATFIELD": "flat",
    "BIAS": "bias",
    "BIAS FRAME": "bias",
    "OFFSET": "bias",
    "OFFSET FRAME": "bias",
    "ZERO": "bias",
}
# what each set may hold by IMAGETYP: darks taken at the flat exposure stand in for a bias
ALLOWED_TYPES = {"bias": ("bias", "dark"), "dark": ("dark",), "flat": ("flat",)}
PLURAL = {"light": "lights", "dark": "darks", "flat": "flats", "bias": "bias frames"}


@dataclass(frozen=True)
class CalibrationLimits:
    """How far a calibration set may differ from the lights (``calibration.*`` settings)."""

    max_temperature_difference: float = 5.0  # [C] darks: refused beyond; bias: warned
    max_gain_difference: float = 0.01  # relative, GAIN and EGAIN
    max_invalid_flat_fraction: float = 0.05

    @classmethod
    def from_config(cls, cal: Mapping) -> CalibrationLimits:
        d = cls()
        return cls(
            max_temperature_difference=float(
                cal.get("max_temperature_difference", d.max_temperature_difference)
            ),
            max_gain_difference=float(cal.get("max_gain_difference", d.max_gain_difference)),
            max_invalid_flat_fraction=float(
                cal.get("max_invalid_flat_fraction", d.max_invalid_flat_fraction)
            ),
        )


@dataclass(frozen=True)
class LightsReference:
    """What a calibration set is compared with: a sample of the night's lights."""

    width: int
    height: int
    bayer: str | None
    exposure: float | None
    facts: dict  # header key -> median over the sampled lights (FACT_KEYS present)
    sky: float | None = None  # median of the sampled lights' medians
    noise: float | None = None  # their median pixel noise


FACT_KEYS = ("CCD-TEMP", "SET-TEMP", "GAIN", "EGAIN", "OFFSET", "XBINNING", "YBINNING")


def frame_type(value) -> tuple[str | None, bool]:
    """``(kind, master)`` from an IMAGETYP value: "Flat Field" -> ("flat", False),
    "Master Dark" -> ("dark", True); unknown spellings give ``(None, master)``."""
    words = str(value or "").replace("_", " ").replace("-", " ").upper().split()
    master = "MASTER" in words
    return FRAME_TYPES.get(" ".join(w for w in words if w != "MASTER")), master


def _header_float(header, key: str) -> float | None:
    try:
        v = float(header[key]) if key in header else None
    except (TypeError, ValueError):
        return None
    return v if v is not None and np.isfinite(v) else None


def header_facts(header) -> dict:
    """Numeric FACT_KEYS of one header (absent or non-numeric keys left out)."""
    out = {}
    for key in FACT_KEYS:
        v = _header_float(header, key)
        if v is not None:
            out[key] = v
    return out


def lights_reference(paths: Sequence, bayer: str | None = None) -> LightsReference:
    """Sizes, Bayer pattern, exposure and the FACT_KEYS of ``paths`` (the lights a run
    calibrates, or a sample of them); the sky level and pixel noise from ``LIGHT_SAMPLE`` of
    them spread over the list. ``bayer`` (the night's, as planned) overrides the files'."""
    from tilestack.checks import pixel_noise

    paths = [Path(p) for p in paths]
    if not paths:
        raise CalibrationError("no lights to compare the calibration frames with")
    info = read_frame_info(paths[0])
    facts: dict[str, list[float]] = {}
    exposures = []
    for p in paths:
        for k, v in header_facts(read_header(p)).items():
            facts.setdefault(k, []).append(v)
        exposures.append(read_frame_info(p).exposure)
    exps = [e for e in exposures if e is not None]
    pick = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), LIGHT_SAMPLE)).round())
    skies, noises = [], []
    for i in pick.astype(int):
        data = read_image(paths[i])
        skies.append(float(np.nanmedian(data)))
        noises.append(pixel_noise(data))
    return LightsReference(
        width=info.width,
        height=info.height,
        bayer=bayer if bayer is not None else info.bayer,
        exposure=float(np.median(exps)) if exps else None,
        facts={k: float(np.median(v)) for k, v in facts.items()},
        sky=float(np.median(skies)),
        noise=float(np.nanmedian(noises)),
    )


@dataclass
class CalibrationSet:
    """One kind of calibration frames as given: paths, where they came from, their headers."""

    kind: str
    paths: list[Path]
    folder: str | None = None  # the setting as given (a folder or a glob), for messages
    infos: list = field(default_factory=list)
    headers: list = field(default_factory=list)

    @property
    def label(self) -> str:
        key = FOLDER_KEYS[self.kind]
        if not self.folder:
            return f"{key} frames"
        return (
            f"{key} folder {self.folder}" if Path(self.folder).is_dir() else f"{key} {self.folder}"
        )

    def names(self, idx) -> str:
        from tilestack.checks import display_names

        shown = display_names([self.paths[i] for i in idx], self.folder)
        text = ", ".join(shown[:MAX_LISTED])
        if len(shown) > MAX_LISTED:
            text += f", … (+{len(shown) - MAX_LISTED} more)"
        return f"{len(idx)} of {len(self.paths)} frames: {text}"

    def refuse(self, problem: str, idx) -> CalibrationError:
        return CalibrationError(f"{self.label}: {problem}: {self.names(idx)}")


def read_set(kind: str, paths: Sequence, folder: str | None = None) -> CalibrationSet:
    """Headers of one calibration set (unreadable or mixed-size frames refused, named)."""
    s = CalibrationSet(kind, [Path(p) for p in paths], folder)
    if not s.paths:
        raise CalibrationError(f"no {kind} frames given")
    try:
        s.infos = [read_frame_info(p) for p in s.paths]
        s.headers = [read_header(p) for p in s.paths]
    except InputError as err:
        raise CalibrationError(f"{s.label}: {err}") from err
    ref = (s.infos[0].width, s.infos[0].height)
    odd = [i for i, f in enumerate(s.infos) if (f.width, f.height) != ref]
    if odd:
        raise s.refuse(f"mixed frame sizes, expected {ref[0]}x{ref[1]}", odd)
    return s


def check_frame_types(s: CalibrationSet) -> None:
    """Frames whose IMAGETYP names another kind (flats in the darks folder, lights, ...)."""
    found = [frame_type(h.get("IMAGETYP"))[0] for h in s.headers]
    wrong = [t for t in found if t is not None and t not in ALLOWED_TYPES[s.kind]]
    if wrong:
        worst = max(set(wrong), key=wrong.count)
        idx = [i for i, t in enumerate(found) if t == worst]
        value = s.headers[idx[0]].get("IMAGETYP")
        raise s.refuse(f"IMAGETYP {str(value).strip()!r} says these are {PLURAL[worst]}", idx)


def _pattern_text(info, header) -> str:
    """A frame's pattern as read, with ROWORDER when it turned the written one around."""
    if not info.bayer:
        return "mono (no BAYERPAT)"
    written = str(header.get("BAYERPAT", "") or "").strip().upper()
    order = str(header.get("ROWORDER", "") or "").strip().upper()
    if written and written != info.bayer:
        return f"{info.bayer} (BAYERPAT {written} read with ROWORDER {order or 'TOP-DOWN'})"
    return info.bayer


def check_geometry(s: CalibrationSet, lights: LightsReference) -> None:
    """Size, binning and Bayer pattern against the lights (one line naming the set)."""
    want = (lights.width, lights.height)
    odd = [i for i, f in enumerate(s.infos) if (f.width, f.height) != want]
    if odd:
        f = s.infos[odd[0]]
        raise s.refuse(
            f"frames are {f.width}x{f.height} but the lights are {want[0]}x{want[1]}", odd
        )
    for key in ("XBINNING", "YBINNING"):
        ref = lights.facts.get(key)
        vals = [_header_float(h, key) for h in s.headers]
        odd = [i for i, v in enumerate(vals) if ref is not None and v is not None and v != ref]
        if odd:
            raise s.refuse(f"{key} {vals[odd[0]]:g} but the lights' is {ref:g}", odd)
    if lights.bayer:
        odd = [i for i, f in enumerate(s.infos) if f.bayer and f.bayer != lights.bayer]
    else:
        odd = [i for i, f in enumerate(s.infos) if f.bayer]
    if odd:
        i = odd[0]
        got = _pattern_text(s.infos[i], s.headers[i])
        raise s.refuse(f"Bayer pattern {got} but the lights are {lights.bayer or 'mono'}", odd)


def check_camera_settings(
    s: CalibrationSet, lights: LightsReference, limits: CalibrationLimits
) -> list[str]:
    """Gain, offset (refused when they differ) and sensor temperature (darks refused, bias
    warned beyond ``max_temperature_difference``; flats are not compared). Warnings out."""
    for key in ("GAIN", "EGAIN", "OFFSET"):
        ref = lights.facts.get(key)
        if ref is None:
            continue
        tol = limits.max_gain_difference if key != "OFFSET" else 1e-6
        vals = [_header_float(h, key) for h in s.headers]
        odd = [
            i
            for i, v in enumerate(vals)
            if v is not None and abs(v - ref) > tol * max(abs(v), abs(ref))
        ]
        if odd:
            raise s.refuse(f"{key} {vals[odd[0]]:g} but the lights' is {ref:g}", odd)
    warnings = []
    if s.kind == "flat":
        return warnings
    lim = limits.max_temperature_difference
    for key in ("CCD-TEMP", "SET-TEMP"):
        ref = lights.facts.get(key)
        vals = [_header_float(h, key) for h in s.headers]
        odd = [
            i
            for i, v in enumerate(vals)
            if ref is not None and v is not None and abs(v - ref) > lim
        ]
        if not odd:
            continue
        got = float(np.median([vals[i] for i in odd]))
        problem = (
            f"{key} {got:+g} C but the lights' is {ref:+g} C (difference {abs(got - ref):g} C, "
            f"more than calibration.max_temperature_difference = {lim:g} C)"
        )
        if s.kind == "dark":
            raise s.refuse(f"{problem}; dark current depends on temperature", odd)
        warnings.append(f"{s.label}: {problem}: {s.names(odd)}")
        break
    return warnings


def check_set(
    s: CalibrationSet, lights: LightsReference | None, limits: CalibrationLimits
) -> list[str]:
    """Every check of one set against the lights; returns warnings, refuses with one line."""
    check_frame_types(s)
    if lights is None:
        return []
    check_geometry(s, lights)
    return check_camera_settings(s, lights, limits)


def ready_master(s: CalibrationSet) -> str | None:
    """Why the set's single file is a calibrated master (None: frames to combine).

    A header that says so (IMAGETYP "Master …" or tilestack's TSKIND), or, for flats, one
    float frame whose median is near 1 (already normalised)."""
    if len(s.paths) != 1:
        return None
    hdr, info = s.headers[0], s.infos[0]
    value = hdr.get("IMAGETYP")
    if frame_type(value)[1]:
        return f"IMAGETYP {str(value).strip()!r}"
    if "TSKIND" in hdr:
        return "a tilestack master"
    if s.kind == "flat" and info.dtype.startswith("float"):
        med = float(np.nanmedian(read_image(s.paths[0])))
        if 0.2 < med < 5.0:
            return f"one float frame of median {med:.3g}"
    return None


def use_master(s: CalibrationSet, why: str, *, bias: Master | None, bayer: str | None):
    """The set's ready-made master, used as is: ``(Master, note)``.

    A flat is only brought to median 1 per CFA phase (a no-op when it already is). A dark
    holds the bias unless its header says otherwise (TSBIASUB) or it lies below the master
    bias (it was subtracted already); with a master bias its pedestal is removed, so it can
    be scaled to the lights' exposure."""
    path, hdr, info = s.paths[0], s.headers[0], s.infos[0]
    data = read_image(path)
    sub = False
    how = "used as is"
    if s.kind == "flat":
        data = normalize_flat(data, bayer)
        how = "used as is (median 1 on each CFA phase)"
    elif s.kind == "dark":
        if "TSBIASUB" in hdr:
            sub = bool(hdr["TSBIASUB"])
        elif bias is not None:
            if float(np.nanmedian(data)) < 0.5 * float(np.nanmedian(bias.data)):
                sub, how = True, "used as is (its median lies below the bias: bias already removed)"
            else:
                _check_shape(bias, data.shape, "darks")
                data = np.asarray(data - bias.data, dtype=np.float32)
                sub, how = True, "used minus the master bias"
        else:
            how = "used as is (holding the bias: at its own exposure only)"
    master = Master(
        kind=s.kind,
        data=np.asarray(data, dtype=np.float32),
        exposure=None if s.kind == "bias" else info.exposure,
        bayer=bayer,
        n_frames=int(hdr.get("NCOMBINE", 1) or 1),
        bias_subtracted=sub,
        sigma=float(hdr.get("TSSIGMA", 0.0) or 0.0),
        sources=[path.name],
    )
    return master, f"{s.label}: {path.name} is a ready-made master ({why}): {how}"


def check_offset_below_lights(
    bias: Master | None, dark: Master | None, lights: LightsReference, labels: Mapping
) -> None:
    """The bias + dark subtracted from a light must lie below the light: a master brighter
    than the lights' sky (flats or lights among the darks) would leave negative frames."""
    if lights.sky is None or (bias is None and dark is None):
        return
    f = dark_factor(dark, lights.exposure, "lights") if dark is not None else 0.0
    off = _offset_rows(bias, dark, f, 0, (bias if bias is not None else dark).data.shape[0])
    level = float(np.nanmedian(np.asarray(off, dtype=np.float64)))
    margin = 3.0 * (lights.noise if lights.noise and np.isfinite(lights.noise) else 0.0)
    if level <= lights.sky + margin:
        return
    kind = "dark" if dark is not None else "bias"
    at = f" at the lights' {lights.exposure:g} s" if kind == "dark" and lights.exposure else ""
    raise CalibrationError(
        f"{labels[kind]}: the master {kind}{' with the bias' if kind == 'dark' and bias else ''}"
        f" has median {level:.6g}{at}, above the lights' median {lights.sky:.6g}: "
        f"these are not {FOLDER_KEYS[kind]} of these lights"
    )


def check_flat_pixels(flat: Master, label: str, limits: CalibrationLimits) -> list[str]:
    """Flat pixels at or below 0, or below MIN_FLAT of their phase median (the master is at
    median 1 per phase) cannot be corrected and get weight 0 (see :func:`calibrate`): a
    warning with their fraction; above ``max_invalid_flat_fraction`` the flat is refused."""
    f = flat.data
    bad = int(np.count_nonzero(~(np.isfinite(f) & (f >= MIN_FLAT))))
    frac = bad / f.size
    what = (
        f"{100 * frac:.3g}% of the master flat's pixels ({bad}) are at or below 0 or under "
        f"{MIN_FLAT:g} of their phase median"
    )
    if frac > limits.max_invalid_flat_fraction:
        lim = limits.max_invalid_flat_fraction
        raise CalibrationError(
            f"{label}: {what}, more than calibration.max_invalid_flat_fraction = {100 * lim:g}%"
        )
    if frac > FLAT_WARN_FRACTION:
        return [f"{label}: {what}; they get weight 0"]
    return []


def check_mono_flat(s: CalibrationSet, bayer: str | None) -> None:
    """Flat frames without a Bayer pattern for a mosaic night: refused when the four CFA
    phases of the first frame also show one level (a mono camera's flat); a colour sensor's
    phases differ (its filters). A ready-made master, normalised per phase, cannot tell and
    is not judged."""
    if not bayer or any(i.bayer for i in s.infos):
        return
    data = read_image(s.paths[0])
    meds = [float(np.nanmedian(data[dy::2, dx::2])) for dy in (0, 1) for dx in (0, 1)]
    lo, hi = min(meds), max(meds)
    if lo > 0 and hi / lo - 1.0 < MONO_FLAT_TOLERANCE:
        raise s.refuse(
            f"mono flats for {bayer} lights (no BAYERPAT, and the four CFA phases differ by "
            f"only {100 * (hi / lo - 1.0):.1f}%)",
            range(len(s.paths)),
        )


@dataclass
class MasterSet:
    """The masters of a run and what the user should read about them."""

    masters: dict  # kind -> Master
    notes: list[str] = field(default_factory=list)  # log lines (ready-made masters used)
    ready: set = field(default_factory=set)  # kinds taken from a ready-made master
    warnings: list[str] = field(default_factory=list)


def build_masters(
    files: Mapping[str, Sequence],
    lights: LightsReference | None = None,
    *,
    folders: Mapping[str, str] | None = None,
    sigma: float = 3.0,
    bayer: str | None = None,
    limits: CalibrationLimits | None = None,
    memory_mb: float = 1000.0,
) -> MasterSet:
    """Check every calibration set against the lights, then build (or take) the masters.

    ``files`` maps "bias", "dark", "flat" to frame paths (missing or empty: none). Each set is
    checked first (IMAGETYP, size, binning, Bayer pattern, gain, offset, temperature), so a
    wrong folder is refused before any combining; a set of one ready-made master
    (:func:`ready_master`) is used as is; the bias + dark must lie below the lights' sky and
    the flat must be usable on most pixels. Refusals are one-line ``CalibrationError``s.
    """
    limits = limits or CalibrationLimits()
    folders = folders or {}
    bayer = bayer if bayer is not None else (lights.bayer if lights is not None else None)
    sets = {k: read_set(k, files[k], folders.get(k)) for k in KINDS if files.get(k)}
    out = MasterSet({})
    for s in sets.values():
        out.warnings += check_set(s, lights, limits)
    for kind in KINDS:
        s = sets.get(kind)
        if s is None:
            continue
        why = ready_master(s)
        if kind == "flat" and not why:
            check_mono_flat(s, bayer)
        if why:
            m, note = use_master(s, why, bias=out.masters.get("bias"), bayer=bayer)
            out.notes.append(note)
            out.ready.add(kind)
        else:
            deps = {"bias": out.masters.get("bias")} if kind != "bias" else {}
            if kind == "flat":
                deps["dark"] = out.masters.get("dark")
            m = build_master(s.paths, kind, sigma=sigma, bayer=bayer, memory_mb=memory_mb, **deps)
        out.masters[kind] = m
    labels = {k: s.label for k, s in sets.items()}
    if lights is not None:
        check_offset_below_lights(out.masters.get("bias"), out.masters.get("dark"), lights, labels)
    if "flat" in out.masters:
        out.warnings += check_flat_pixels(out.masters["flat"], labels["flat"], limits)
    return out


# --------------------------------------------------------------------------- bad pixels


def _local_residual(img: np.ndarray, bayer: str | None, size: int) -> np.ndarray:
    """``img`` minus its local median, per CFA phase so colours are not mixed."""
    img = np.asarray(img, dtype=np.float32)
    res = np.empty_like(img)
    phases = [(0, 0), (0, 1), (1, 0), (1, 1)] if bayer else [(0, 0)]
    stride = 2 if bayer else 1
    for dy, dx in phases:
        plane = img[dy::stride, dx::stride]
        filled = np.where(np.isfinite(plane), plane, np.nanmedian(plane))
        res[dy::stride, dx::stride] = plane - median_filter(filled, size=size, mode="nearest")
    return res


def _finite_mad_sigma(x: np.ndarray) -> float:
    """``mad_sigma`` of the finite values in their own dtype (0 when there are none)."""
    x = np.asarray(x)
    finite = np.isfinite(x)
    v = x.ravel() if finite.all() else x[finite]
    if not v.size:
        return 0.0
    # mad_sigma's two medians, each by one bracketing pass instead of a full partition
    med = exact_median(v)
    return MAD_TO_SIGMA * float(exact_median(np.abs(v - med)))


def bad_pixel_mask(
    dark: np.ndarray | Master | None,
    *,
    sigma: float = 5.0,
    flat: np.ndarray | Master | None = None,
    bayer: str | None = None,
    size: int = 5,
    flat_min_deviation: float = 0.1,
) -> np.ndarray:
    """uint8 mask, 1 = bad (hot or cold), from the master dark and/or the master flat.

    Dark: residual from a ``size``×``size`` local median (per CFA phase) beyond ``sigma`` robust
    σ of all residuals — local, so amp glow and gradients are not flagged; robust, so the bad
    pixels do not inflate σ; hot columns survive the median as well. σ is floored at 1e-3 of
    the dark level so a noise-free dark does not flag rounding. Flat: pixels whose response
    differs from their neighbourhood by more than ``max(sigma·σ, flat_min_deviation)`` (dead or
    stuck pixels; dust shadows are smooth and stay unflagged). NaN pixels are bad.
    """
    if isinstance(dark, Master):
        bayer = bayer or dark.bayer
        dark = dark.data
    if isinstance(flat, Master):
        bayer = bayer or flat.bayer
        flat = flat.data
    if dark is None and flat is None:
        raise CalibrationError("a bad-pixel mask needs a master dark or a master flat")
    ref = dark if dark is not None else flat
    bad = np.zeros(np.shape(ref), bool)
    if dark is not None:
        dark = np.asarray(dark, dtype=np.float32)
        res = _local_residual(dark, bayer, size)
        s = max(_finite_mad_sigma(res), 1e-3 * (abs(float(np.nanmedian(dark))) + 1.0))
        bad |= ~np.isfinite(dark) | (np.abs(res) > sigma * s)
    if flat is not None:
        flat = np.asarray(flat, dtype=np.float32)
        if flat.shape != bad.shape:
            raise CalibrationError(
                f"master flat is {flat.shape[1]}x{flat.shape[0]} but the master dark is "
                f"{bad.shape[1]}x{bad.shape[0]}"
            )
        rel = _local_residual(flat, bayer, size) / np.float32(max(float(np.nanmedian(flat)), 1e-12))
        sf = max(_finite_mad_sigma(rel), 1e-6)
        bad |= ~np.isfinite(flat) | (np.abs(rel) > max(sigma * sf, flat_min_deviation))
    return bad.astype(np.uint8)


# --------------------------------------------------------------------------- applying


def _as_master(m, kind: str) -> Master | None:
    if m is None or isinstance(m, Master):
        return m
    if isinstance(m, str | Path):
        return load_master(m)
    return Master(kind=kind, data=np.asarray(m, dtype=np.float32), bias_subtracted=True)


def load_masters(bias=None, dark=None, flat=None, bad_pixels=None) -> dict:
    """Masters from their files (any may be None) in the mapping :func:`calibrate` takes."""
    return {
        "bias": load_master(bias) if bias else None,
        "dark": load_master(dark) if dark else None,
        "flat": load_master(flat) if flat else None,
        "bad_pixels": read_image(bad_pixels, dtype=None) if bad_pixels else None,
    }


def calibrate(
    raw: np.ndarray,
    exposure: float | None,
    masters: Mapping | None,
    *,
    saturation: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(raw - bias - dark) / flat`` as float32 and a uint8 validity mask (1 = valid).

    ``masters`` maps "bias", "dark", "flat" to :class:`Master` (or arrays / paths) and
    "bad_pixels" to a uint8 mask with 1 = bad; any may be missing. The dark is scaled to
    ``exposure`` when it is bias-subtracted. Invalid: bad pixels, flat below 10 % of its median
    (left undivided), raw at or above ``saturation``, NaN samples. Values are never replaced.
    """
    masters = masters or {}
    raw = np.asarray(raw, dtype=np.float32)
    bias = _as_master(masters.get("bias"), "bias")
    dark = _as_master(masters.get("dark"), "dark")
    flat = _as_master(masters.get("flat"), "flat")
    for m in (bias, dark, flat):
        _check_shape(m, raw.shape, "lights")
    fast = _calibrate_fused(raw, exposure, bias, dark, flat, masters.get("bad_pixels"), saturation)
    if fast is not None:
        return fast
    valid = np.isfinite(raw)
    if saturation is not None:
        valid &= raw < saturation
    dark_f = dark_factor(dark, exposure, "lights") if dark is not None else 0.0
    light = raw - _offset_rows(bias, dark, dark_f, 0, raw.shape[0])
    light = np.asarray(light, dtype=np.float32)
    if flat is not None:
        f = flat.data
        good = np.isfinite(f) & (f >= MIN_FLAT)
        np.divide(light, f, out=light, where=good)
        valid &= good
    bad = masters.get("bad_pixels")
    if bad is not None:
        bad = np.asarray(bad)
        if bad.shape != raw.shape:
            raise CalibrationError(
                f"bad-pixel mask is {bad.shape[1]}x{bad.shape[0]} but the lights are "
                f"{raw.shape[1]}x{raw.shape[0]}"
            )
        valid &= bad == 0
    return light.astype(np.float32, copy=False), valid.astype(np.uint8)


@njit(cache=True)
def _calibrate_kernel(raw, off, flat, bad, sat, use, light, valid):
    """One pass of :func:`calibrate`'s arithmetic; ``use`` flags (offset array, flat, bad
    mask, saturation) say which inputs are real (the others are 1×1 stand-ins)."""
    has_off, has_flat, has_bad, has_sat = use[0], use[1], use[2], use[3]
    min_flat = np.float32(MIN_FLAT)
    h, w = raw.shape
    for y in range(h):
        for x in range(w):
            v = raw[y, x]
            ok = np.isfinite(v)
            if has_sat:
                ok = ok and v < sat
            out = v - off[y, x] if has_off else v - np.float32(0.0)
            if has_flat:
                f = flat[y, x]
                if np.isfinite(f) and f >= min_flat:
                    out = out / f
                else:
                    ok = False
            if has_bad and bad[y, x] != 0:
                ok = False
            light[y, x] = out
            valid[y, x] = ok


def _calibrate_fused(raw, exposure, bias, dark, flat, bad, saturation):
    """:func:`calibrate` in one compiled pass for the usual inputs (C-ordered float32 frame
    and masters, uint8/bool bad-pixel mask), the same numbers as its numpy steps (float32
    subtraction and division, the saturation compared as float32); None: use those steps."""
    if raw.ndim != 2 or not raw.flags.c_contiguous:
        return None
    absent = np.zeros((1, 1), np.float32)
    dark_f = dark_factor(dark, exposure, "lights") if dark is not None else 0.0
    off = _offset_rows(bias, dark, dark_f, 0, raw.shape[0])
    if isinstance(off, float):
        if off != 0.0:
            return None
        off, has_off = absent, False
    else:
        has_off = True
        if off.dtype != np.float32 or not off.flags.c_contiguous:
            return None
    f = absent if flat is None else flat.data
    if f.dtype != np.float32 or not f.flags.c_contiguous:
        return None
    b = np.zeros((1, 1), np.uint8) if bad is None else np.asarray(bad)
    if b.shape != raw.shape and bad is not None:
        return None  # calibrate's own message
    if b.dtype == bool:
        b = b.view(np.uint8)
    if b.dtype != np.uint8 or not b.flags.c_contiguous:
        return None
    sat = np.float32(0.0)
    if saturation is not None:
        # a level float32 holds exactly compares the same in float32 and float64 (a Python
        # float is compared as float32, a numpy float64 as float64: only exact levels here)
        with np.errstate(over="ignore"):
            sat = np.float32(saturation)
        if not np.isfinite(sat) or float(sat) != float(saturation):
            return None
    use = np.array([has_off, flat is not None, bad is not None, saturation is not None])
    light = np.empty(raw.shape, np.float32)
    valid = np.empty(raw.shape, np.uint8)
    _calibrate_kernel(raw, off, f, b, sat, use, light, valid)
    return light, valid


def phase_medians(image: np.ndarray, bayer: str | None) -> dict[str, float]:
    """Median of each CFA phase (keyed by colour letter and cell, e.g. "G@01"); for checks."""
    if not bayer:
        return {"L": float(np.nanmedian(image))}
    out = {}
    for letter, cells in cfa.phase_offsets(bayer).items():
        for dy, dx in cells:
            out[f"{letter}@{dy}{dx}"] = float(np.nanmedian(image[dy::2, dx::2]))
    return out


# --------------------------------------------------------------------------- defects without darks


def sensor_defects(
    min_image: np.ndarray,
    *,
    bayer: str | None = None,
    sigma: float = 5.0,
    neighbour_fraction: float = 0.2,
) -> np.ndarray:
    """uint8 mask, 1 = hot pixel or hot column segment, found in lights alone (no master dark).

    ``min_image`` is the per-pixel minimum of several lights in *sensor* coordinates: the sky
    moves between frames (drift, dither, field rotation), so stars and cosmic rays fall out of
    the minimum while defects fixed on the sensor stay. A pixel is flagged when it stands more
    than ``sigma`` robust σ above the median of its 3×3 neighbourhood **and** every one of its 8
    neighbours carries less than ``neighbour_fraction`` of that excess — a sampled star (FWHM ≳
    1.5 px) always lights its neighbours, a defect does not. Hot columns (their neighbours
    above and below are hot too) are found as vertical runs of ≥ 8 pixels standing above both
    side neighbours, per CFA phase for mosaics so the colour pattern is not mistaken for one.
    This is the "robust local test" of METHODOLOGY §2; flagged pixels get weight 0.
    """
    img = np.asarray(min_image, dtype=np.float32)
    finite = np.isfinite(img)
    if finite.all():
        filled = img
    else:
        filled = np.where(finite, img, np.float32(np.nanmedian(img) if finite.any() else 0.0))
    bad = _isolated_spikes(filled, sigma, neighbour_fraction)
    step = 2 if bayer else 1
    for dy in range(step):
        for dx in range(step):
            plane = filled[dy::step, dx::step]
            bad[dy::step, dx::step] |= _column_runs(plane, sigma, neighbour_fraction, 8)
    return bad.astype(np.uint8)


_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], np.uint8)  # the 8 neighbours, not the pixel


def _isolated_spikes(img: np.ndarray, sigma: float, fraction: float) -> np.ndarray:
    """``img`` finite. OpenCV's 3×3 median and max filters with replicated borders are
    scipy's ``median_filter``/``maximum_filter`` with ``mode="nearest"``, value for value
    (both select, neither rounds), at a fraction of the time."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    if min(img.shape) < 3:
        med = median_filter(img, size=3, mode="nearest")
    else:
        med = cv2.medianBlur(img, 3)
    excess = img - med
    s = max(_finite_mad_sigma(excess), 1e-6)
    # the largest neighbour excess, the pixel itself left out
    nbr = cv2.dilate(excess, _RING, borderType=cv2.BORDER_REPLICATE)
    return (excess > sigma * s) & (nbr < fraction * excess)


def _column_runs(plane: np.ndarray, sigma: float, fraction: float, length: int) -> np.ndarray:

    left = np.concatenate([plane[:, 1:2], plane[:, :-1]], axis=1)
    right = np.concatenate([plane[:, 1:], plane[:, -2:-1]], axis=1)
    side = np.minimum(left, right)
    excess = plane - side
    s = max(_finite_mad_sigma(excess), 1e-6)
    # Both side neighbours must sit at the background: |left - right| small against the excess.
    flat_sides = np.abs(left - right) < fraction * excess + sigma * s
    column = (excess > sigma * s) & flat_sides
    # Opening by a vertical line of ``length``: scipy's binary_erosion (border 1) then
    # binary_dilation (border 0) with a (length, 1) structure. OpenCV's anchors reproduce
    # scipy's window placement for even lengths: [y - L//2, y + L - 1 - L//2] for the
    # erosion, mirrored for the dilation.
    st = np.ones((length, 1), np.uint8)
    col = np.ascontiguousarray(column).view(np.uint8)
    core = cv2.erode(
        col, st, anchor=(0, length // 2), borderType=cv2.BORDER_CONSTANT, borderValue=1
    )
    grown = cv2.dilate(
        core,
        st,
        anchor=(0, length - 1 - length // 2),
        borderType=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return grown.astype(bool) & column


DEFECT_FRAMES = 12  # lights read by `defects_from_lights` at most
MAX_INVALID_FRACTION = 0.5  # a light with more non-finite pixels than this is not used


def defects_from_lights(
    paths: Sequence,
    masters: Mapping | None = None,
    *,
    bayer: str | None = None,
    sigma: float = 5.0,
    max_frames: int = DEFECT_FRAMES,
) -> np.ndarray:
    """Hot pixels and hot columns of the sensor, found from lights (no master dark given).

    The per-pixel second-lowest value over the lights: stars and cosmic rays move or vanish,
    defects stay, and one odd frame (a cloud-dark or a corrupt one) cannot hide them. At most
    ``max_frames`` lights, evenly spread over ``paths``, are read — enough for that statistic,
    so preparing a batch does not read every light twice. Returns :func:`sensor_defects`.

    Non-finite samples (NaN, ±Inf) are ignored pixel by pixel (``np.fmin``/``np.fmax``: a NaN
    must not win a minimum), and a frame with more than ``MAX_INVALID_FRACTION`` of them is
    not used at all (the workflow refuses such a frame; see ``checks.check_finite``).
    """
    n = len(paths)
    if n == 0:
        raise InputError("defects_from_lights: no lights")
    pick = np.unique(np.linspace(0, n - 1, min(n, max(1, int(max_frames)))).round().astype(int))
    low = second = tmp = None
    used = 0
    for i in pick:
        frame = read_frame(paths[i])
        light, _ = calibrate(frame.data, frame.exposure, masters)
        finite = np.isfinite(light)
        n_finite = np.count_nonzero(finite)
        if n_finite / finite.size < 1.0 - MAX_INVALID_FRACTION:
            continue
        if n_finite < finite.size:
            light = np.where(finite, light, np.float32(np.nan))
        used += 1
        if low is None:
            low, second = light, np.full_like(light, np.inf)  # ``light`` is calibrate's own
            tmp = np.empty_like(light)
        else:  # in place: second = fmin(second, fmax(low, light)); low = fmin(low, light)
            np.fmin(second, np.fmax(low, light, out=tmp), out=second)
            np.fmin(low, light, out=low)
    if low is None:
        return np.zeros(read_frame(paths[0]).data.shape, np.uint8)
    base = second if used >= 3 else low
    return sensor_defects(base, bayer=bayer, sigma=sigma)
