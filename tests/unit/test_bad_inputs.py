"""What tilestack refuses, and why: one table of bad inputs and the outcome each one gets.

Every row is (case name, how the input is made, expected outcome, message fragment). The
inputs are small nights of 56 frames (320x240, mono or RGGB) written once per session by the
simulator; a case copies the night and damages it. Outcomes:

* ``refused``: the check raises ``InputError`` with ONE line naming the file and the problem;
* ``accepted``: the check passes (the fragment, if any, must appear in the warnings).

The checks are called directly (the same functions the workflow calls at parse time, in
``prepare`` and in ``scan``); only reproducibility and the emergency-mode hint need real
Snakemake runs (tests/workflow/test_bad_inputs_runs.py). The README section
"What tilestack refuses, and why" is this table in prose.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits


def copy_night(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def lights_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.fits"))


# --------------------------------------------------------------------------- the checks


def workflow_checks(lights, n_frames=None) -> list[str]:
    """What the workflow checks, in its order, without running it: the plan's whole-night
    header checks (parse time), every frame's pixel checks (``prepare``) and the night-wide
    checks of ``scan``. Returns the warnings; a refusal raises ``InputError``."""
    from tilestack import checks
    from tilestack.io.frames import read_frame
    from tilestack.io.manifest import build_manifest
    from tilestack.plan import make_plan

    config = {"lights": str(lights), "assumptions": {"frames_min": 50}}
    plan = make_plan(config)
    manifest = build_manifest(plan.frames, checksum=False)
    stats = []
    for path, name in zip(manifest["path"], manifest["frame"], strict=True):
        frame = read_frame(path)
        st = checks.frame_pixel_stats(frame.data)
        checks.check_finite(st, name)
        checks.check_frame_linearity(frame.data, frame.full_scale, name)
        stats.append(st)
    for key in ("invalid_fraction", "median", "max", "noise"):  # as `prepare` records them
        manifest[key] = [st[key] for st in stats]
    return checks.run_hard_checks(manifest, config, sample_pixels=False).warnings


def rewrite(path: Path, fn=None, dtype=None, **cards) -> None:
    """Rewrite one light: data through ``fn``, stored as ``dtype``, header cards changed."""
    with fits.open(path) as hdul:
        data, header = hdul[0].data.astype(np.float64), hdul[0].header.copy()
    data = fn(data) if fn else data
    for key in ("BZERO", "BSCALE"):
        header.pop(key, None)
    header.update(cards)
    out = data.astype(dtype or np.float32)  # uint16 is written with BZERO 32768
    fits.PrimaryHDU(out, header=header).writeto(path, overwrite=True)


def each(folder: Path, idx, **kw) -> None:
    for p in lights_of(folder)[idx]:
        rewrite(p, **kw)


def as_float_night(folder: Path) -> None:
    """The whole night stored as float32 counts (a converted night: one pixel type)."""
    each(folder, slice(None), dtype=np.float32)


def sqrt_stretch(x):
    return np.round(np.sqrt(np.clip(x, 0, None) / 65535.0) * 65535.0)


def mtf_stretch(x, target=0.25):
    v = np.clip((x - np.median(x) + 50) / 65535.0, 0, 1)
    b = np.median(v)
    m = b * (target - 1) / (2 * target * b - target - b)
    return np.round(65535 * (m - 1) * v / ((2 * m - 1) * v - m))


def truncate(folder):
    p = lights_of(folder)[10]
    p.write_bytes(p.read_bytes()[:50_000])


def not_fits(folder):
    (folder / "light_0020.fits").write_text("SIMPLE? no: a text file with a .fits name\n")


def one_all_nan(folder):
    as_float_night(folder)
    each(folder, slice(7, 8), fn=lambda x: np.full_like(x, np.nan))


def one_scaled_float_night(folder):
    as_float_night(folder)
    each(folder, slice(40, 41), fn=lambda x: x / 65535.0)


def in_subfolders(folder):
    """Frames 30-55 in a second session folder, at another size (lights given as a glob)."""
    sub = folder / "session2"
    sub.mkdir()
    for p in lights_of(folder)[30:]:
        rewrite(p, fn=lambda x: x[:, :300], dtype=np.uint16)
        p.rename(sub / p.name)


def dawn(folder, top=50.0, n=20):
    """The sky of the last ``n`` frames rising linearly to ``top`` times the night's sky, with
    its photon noise (gain 1 e-/ADU, as simulated): linear frames, only brighter."""
    paths = lights_of(folder)
    sky = 400.0  # the simulator's sky level (ADU)
    for k, p in enumerate(paths[-n:]):
        extra = (top - 1.0) * sky * (k + 1) / n
        rng = np.random.default_rng(1000 + k)
        rewrite(p, fn=lambda x, e=extra, r=rng: x + r.poisson(e, x.shape), dtype=np.uint16)


def blocked_right_half(folder):
    """Frames 40-44: a dome or a tree blocks the right half (bias + read noise there)."""
    rng = np.random.default_rng(7)

    def block(x):
        x = x.copy()
        w = x.shape[1]
        x[:, w // 2 :] = np.round(500.0 + rng.normal(0.0, 3.0, (x.shape[0], w - w // 2)))
        return x

    each(folder, slice(40, 45), fn=block, dtype=np.uint16)


def too_few(folder):
    for p in lights_of(folder)[10:]:
        p.unlink()


# (case, bayer of the night, how the input is made, expected outcome, message fragments)
# The fragments name the file and the problem; "light_0030.fits" where a whole batch differs
# shows the minority is blamed, not the first light.
CASES = [
    ("clean mono night", None, None, "accepted", []),
    ("clean RGGB night", "RGGB", None, "accepted", []),
    ("truncated file", None, truncate, "refused", ["light_0010.fits", "truncated"]),
    ("non-FITS file named .fits", None, not_fits, "refused", ["light_0020.fits", "not FITS"]),
    (
        "frames 30-55 at another size",
        None,
        lambda f: each(f, slice(30, None), fn=lambda x: x[:, :300], dtype=np.uint16),
        "refused",
        ["mixed image sizes: 26 of 56", "expected 320x240", "light_0030.fits"],
    ),
    (
        "frames 30-55 at another exposure",
        None,
        lambda f: each(f, slice(30, None), dtype=np.uint16, EXPTIME=30.0),
        "refused",
        ["exposure times differ", "26 of 56", "light_0030.fits (30 s)"],
    ),
    (
        "one frame with another Bayer pattern",
        "RGGB",
        lambda f: each(f, slice(12, 13), dtype=np.uint16, BAYERPAT="GRBG"),
        "refused",
        ["mixed Bayer patterns", "light_0012.fits"],
    ),
    (
        "8-bit frame",
        None,
        lambda f: each(f, slice(5, 6), fn=lambda x: np.clip(x / 256, 0, 255), dtype=np.uint8),
        "refused",
        ["8-bit data is not linear", "light_0005.fits"],
    ),
    (
        "one frame stored as float32 among 16-bit",
        None,
        lambda f: each(f, slice(40, 41)),
        "refused",
        ["mixed pixel types (BITPIX)", "BITPIX -32", "light_0040.fits"],
    ),
    (
        "float frame divided by 65535 among 16-bit",
        None,
        lambda f: each(f, slice(40, 41), fn=lambda x: x / 65535.0),
        "refused",
        ["BITPIX -32", "light_0040.fits"],
    ),
    (
        "float night, one frame divided by 65535",
        None,
        one_scaled_float_night,
        "refused",
        ["frames on another scale", "light_0040.fits (median"],
    ),
    ("float night, one all-NaN frame", None, one_all_nan, "refused", ["light_0007.fits: 100%"]),
    (
        "square-root stretch",
        None,
        lambda f: each(f, slice(25, 26), fn=sqrt_stretch, dtype=np.uint16),
        "refused",
        ["light_0025.fits: stretched", "levels around the sky"],
    ),
    (
        "display (MTF) stretch",
        "RGGB",
        lambda f: each(f, slice(3, 4), fn=mtf_stretch, dtype=np.uint16),
        "refused",
        ["light_0003.fits: stretched"],
    ),
    ("dawn: the last 20 frames' sky rising to 50x", None, dawn, "accepted", []),
    (
        "one frame multiplied by 25 (counts, noise scaled too)",
        None,
        lambda f: each(f, slice(50, 51), fn=lambda x: np.clip(x * 25, 0, 65535), dtype=np.uint16),
        "refused",
        ["frames on another scale", "light_0050.fits (median"],
    ),
    (
        "a frame saturated everywhere",
        None,
        lambda f: each(f, slice(33, 34), fn=lambda x: np.full_like(x, 65535.0), dtype=np.uint16),
        "refused",
        ["light_0033.fits (saturated everywhere", "1 of 56 frames"],
    ),
    ("five frames with the right half blocked", None, blocked_right_half, "accepted", []),
    (
        "second session folder at another size",
        None,
        in_subfolders,
        "refused",
        ["26 of 56", "session2/light_0030.fits"],
    ),
    ("10 frames", None, too_few, "refused", ["too few frames: 10", "--configfile"]),
]


@pytest.mark.parametrize(
    ("case", "bayer", "make", "outcome", "fragments"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input(nights, tmp_path, case, bayer, make, outcome, fragments):
    from tilestack.errors import InputError

    folder = copy_night(nights(bayer), tmp_path / "lights")
    if make:
        make(folder)
    spec = f"{folder}/**/*.fits" if case.startswith("second session") else folder
    if outcome == "accepted":
        warnings = workflow_checks(spec)
        for frag in fragments:
            assert any(frag in w for w in warnings), (frag, warnings)
        return
    with pytest.raises(InputError) as err:
        workflow_checks(spec)
    line = str(err.value)
    assert "\n" not in line
    for frag in fragments:
        assert frag in line, f"{frag!r} not in: {line}"


def test_an_all_nan_frame_does_not_switch_off_defect_detection(nights, tmp_path):
    """One NaN frame in a batch: the hot pixels are still found (NaN must not win a minimum)."""
    from tilestack.calibration import defects_from_lights

    folder = copy_night(nights(None), tmp_path / "lights")
    paths = lights_of(folder)[:30]
    clean = int(defects_from_lights(paths).sum())
    assert clean > 100
    rewrite(paths[0], fn=lambda x: np.full_like(x, np.nan))
    rewrite(paths[15], fn=lambda x: np.where(np.arange(x.shape[1]) < 40, np.inf, x))
    assert int(defects_from_lights(paths).sum()) >= 0.95 * clean


def test_provenance_header_has_no_clock_and_no_paths(monkeypatch):
    from tilestack.provenance import provenance_header

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    cfg = {"tile": {"overlap": 0.25}, "lights": "/a/lights", "results": "out_a", "darks": ""}
    moved = {**cfg, "lights": "/b/frames", "results": "out_b", "darks": "/b/darks"}
    h1 = provenance_header(n_frames=5, mode="reduced", config=cfg)
    h2 = provenance_header(n_frames=5, mode="reduced", config=moved)
    assert "DATE" not in h1
    assert h1.tostring() == h2.tostring()


def test_run_summary_names_verdict_reason_left_out_frames_and_logs(tmp_path):
    from tilestack.run_summary import summary

    (tmp_path / "validation").mkdir()
    (tmp_path / "registration").mkdir()
    (tmp_path / "validation" / "validation.json").write_text(
        '{"verdict": "borderline", "failed_checks": ["background_rms"]}'
    )
    (tmp_path / "registration" / "transforms.csv").write_text(
        "frame,status\nlight_0000.fits,ok\nlight_0001.fits,unregistered\nlight_0002.fits,fallback\n"
    )
    lines = summary(tmp_path, ok=True).splitlines()
    assert lines[1] == "tilestack: verdict borderline: background_rms"
    assert lines[2] == "tilestack: 1 of 3 frames unregistered (left out): light_0001.fits"
    assert lines[-1] == f"tilestack: logs in {tmp_path / 'logs'}"
    assert "FAILED" in summary(tmp_path / "missing", ok=False)


# --------------------------------------------------------------------------- calibration sets

CALIB_NIGHTS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def calib_nights(tmp_path_factory):
    """A few lights (320x240) with bias, darks and flats of the same simulated sensor."""
    base = tmp_path_factory.mktemp("calib_nights")

    def make(bayer=None):
        key = bayer or "mono"
        if key not in CALIB_NIGHTS:
            from tilestack.simulate import simulate_night

            out = base / key
            simulate_night(
                out, n_frames=3, width=320, height=240, seed=1, bayer=bayer,
                calibration=True, n_calib=5,
            )  # fmt: skip
            CALIB_NIGHTS[key] = out
        return CALIB_NIGHTS[key]

    return make


class Job(dict):
    """The attributes of Snakemake's script object that ``masters(job)`` reads."""

    __getattr__ = dict.__getitem__


def masters_run(night: Path, calibration=None) -> list[str]:
    """Run the ``masters`` rule's function as the workflow does (the folders that exist in
    ``night`` are the settings); returns its warnings and notes, raises its refusal."""
    from tilestack.workflow.masters import masters

    folders = {k: night / f for k, f in (("bias", "bias"), ("dark", "darks"), ("flat", "flats"))}
    folders = {k: f for k, f in folders.items() if f.exists()}
    inputs = {f"{k}s" if k != "bias" else k: lights_of(f) for k, f in folders.items()}
    res = night / "results" / "calibration"
    output = {k: res / f"master_{k}.fits" for k in folders}
    if "dark" in folders:
        output["bad_pixels"] = res / "bad_pixels.fits"
    with fits.open(lights_of(night / "lights")[0]) as hdul:
        bayer = hdul[0].header.get("BAYERPAT", "")
    cal = {"sigma": 3.0, "bad_pixel_sigma": 5.0, **(calibration or {})}
    log = night / "results" / "masters.log"
    job = Job(
        input=Job(
            {
                "bias": [],
                "darks": [],
                "flats": [],
                **{k: [str(p) for p in v] for k, v in inputs.items()},
            }
        ),
        output=Job({k: str(v) for k, v in output.items()}),
        params=Job(
            calibration=cal,
            bayer=bayer,
            lights=[str(p) for p in lights_of(night / "lights")],
            folders={k: str(f) for k, f in folders.items()},
        ),
        log=[str(log)],
        threads=1,
    )
    masters(job)
    lines = log.read_text().splitlines()
    return [ln.split(" ", 2)[2] for ln in lines if "warning:" in ln or "master (" in ln]


def set_cards(folder: Path, fn=None, dtype=np.uint16, **cards):
    for p in lights_of(folder):
        rewrite(p, fn=fn, dtype=dtype, **cards)


def warm_darks(n):
    set_cards(n / "darks", fn=lambda x: x + 300.0, **{"CCD-TEMP": 20.0})


def flats_in_darks(n, keep_type=True):
    shutil.rmtree(n / "darks")
    shutil.copytree(n / "flats", n / "darks")
    if not keep_type:
        set_cards(n / "darks", IMAGETYP="Dark Frame", EXPTIME=10.0)


def ready_master_flat(n, with_bias):
    """flats = one normalised float32 master flat (made elsewhere: no tilestack header)."""
    from tilestack.calibration import build_master

    bias = build_master(lights_of(n / "bias"), "bias")
    flat = build_master(lights_of(n / "flats"), "flat", bias=bias)
    shutil.rmtree(n / "flats")
    (n / "flats").mkdir()
    hdr = fits.Header({"IMAGETYP": "Flat Field", "EXPTIME": 1.0})
    fits.PrimaryHDU(flat.data.astype(np.float32), header=hdr).writeto(
        n / "flats" / "master_flat.fits"
    )
    if not with_bias:
        shutil.rmtree(n / "bias")
    shutil.rmtree(n / "darks")


def ready_master_dark(n):
    """darks = one 'Master Dark' (bias included, float32), bias frames and flats as usual."""
    from tilestack.robust import sigma_clipped_mean

    stack = np.stack([fits.getdata(p).astype(np.float32) for p in lights_of(n / "darks")])
    mean, _ = sigma_clipped_mean(stack, 3.0)
    hdr = fits.getheader(lights_of(n / "darks")[0])
    hdr["IMAGETYP"] = "Master Dark"
    shutil.rmtree(n / "darks")
    (n / "darks").mkdir()
    for key in ("BZERO", "BSCALE"):
        hdr.pop(key, None)
    fits.PrimaryHDU(mean.astype(np.float32), header=hdr).writeto(n / "darks" / "master_dark.fits")


def broken_flats(n, band_rows):
    """A zero band (rows 100 to 100 + band_rows) and two negative columns on every flat."""

    def damage(x):
        x = x.copy()
        x[100 : 100 + band_rows] = 0.0
        x[:, 50:52] = -100.0
        return x

    set_cards(n / "flats", fn=damage, dtype=np.float32)


def without_bayerpat(n, mono: bool):
    """Flats written without BAYERPAT; ``mono``: a mono camera's flats (each 2x2 cell at its
    mean level, no colour filters)."""
    for p in lights_of(n / "flats"):
        with fits.open(p) as hdul:
            data, hdr = hdul[0].data.astype(np.float64), hdul[0].header.copy()
        for key in ("BAYERPAT", "XBAYROFF", "YBAYROFF", "BZERO", "BSCALE"):
            hdr.pop(key, None)
        if mono:
            h, w = data.shape
            cell = data.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
            data = np.round(np.repeat(np.repeat(cell, 2, axis=0), 2, axis=1))
        fits.PrimaryHDU(data.astype(np.uint16), header=hdr).writeto(p, overwrite=True)


# (case, bayer of the night, how the calibration is damaged, outcome, message fragments)
CALIB_CASES = [
    ("calibrated mono night", None, None, "accepted", []),
    ("calibrated RGGB night", "RGGB", None, "accepted", []),
    (
        "darks 30 C warmer than the lights",
        None,
        warm_darks,
        "refused",
        [
            "darks folder",
            "CCD-TEMP +20 C but the lights' is -10 C",
            "difference 30 C",
            "5 of 5 frames: dark_0000.fits",
        ],
    ),
    (
        "bias 30 C warmer than the lights",
        None,
        lambda n: set_cards(n / "bias", **{"CCD-TEMP": 20.0}),
        "accepted",
        ["warning: bias folder", "CCD-TEMP +20 C but the lights' is -10 C"],
    ),
    (
        "darks at another gain",
        None,
        lambda n: set_cards(n / "darks", GAIN=2.5),
        "refused",
        ["darks folder", "GAIN 2.5 but the lights' is"],
    ),
    (
        "flats at another offset",
        None,
        lambda n: [set_cards(n / f, OFFSET=o) for f, o in (("lights", 10), ("flats", 30))],
        "refused",
        ["flats folder", "OFFSET 30 but the lights' is 10"],
    ),
    (
        "flats binned 2x2",
        None,
        lambda n: set_cards(n / "flats", XBINNING=2, YBINNING=2),
        "refused",
        ["flats folder", "XBINNING 2 but the lights' is 1"],
    ),
    (
        "ready-made master flat, no bias",
        None,
        lambda n: ready_master_flat(n, with_bias=False),
        "accepted",
        ["master_flat.fits is a ready-made master (one float frame of median 1)", "used as is"],
    ),
    (
        "ready-made master flat with bias frames",
        "RGGB",
        lambda n: ready_master_flat(n, with_bias=True),
        "accepted",
        ["master_flat.fits is a ready-made master"],
    ),
    (
        "ready-made master dark (bias included)",
        None,
        ready_master_dark,
        "accepted",
        [
            "master_dark.fits is a ready-made master (IMAGETYP 'Master Dark')",
            "minus the master bias",
        ],
    ),
    (
        "flats in the darks folder",
        None,
        flats_in_darks,
        "refused",
        ["darks folder", "IMAGETYP 'Flat Field' says these are flats", "flat_0000.fits"],
    ),
    (
        "flats relabelled as darks in the darks folder",
        None,
        lambda n: flats_in_darks(n, keep_type=False),
        "refused",
        ["darks folder", "master dark with the bias has median 2", "above the lights' median 8"],
    ),
    (
        "lights in the bias folder",
        None,
        lambda n: [shutil.copy(p, n / "bias") for p in lights_of(n / "lights")[:1]],
        "refused",
        [
            "bias folder",
            "IMAGETYP 'Light Frame' says these are lights",
            "1 of 6 frames: light_0000.fits",
        ],
    ),
    (
        "flat with a zero band and negative columns",
        None,
        lambda n: broken_flats(n, 24),
        "refused",
        [
            "flats folder",
            "10.6% of the master flat's pixels (8113)",
            "max_invalid_flat_fraction = 5%",
        ],
    ),
    (
        "flat with two negative columns",
        None,
        lambda n: broken_flats(n, 0),
        "accepted",
        ["warning: flats folder", "0.626% of the master flat's pixels (481)", "weight 0"],
    ),
    (
        "mono flats for an RGGB night",
        "RGGB",
        lambda n: without_bayerpat(n, mono=True),
        "refused",
        ["flats folder", "mono flats for RGGB lights", "no BAYERPAT"],
    ),
    (
        "RGGB flats without BAYERPAT",
        "RGGB",
        lambda n: without_bayerpat(n, mono=False),
        "accepted",
        [],
    ),
    (
        "flats of another Bayer pattern (ROWORDER)",
        "RGGB",
        lambda n: set_cards(n / "flats", ROWORDER="BOTTOM-UP"),
        "refused",
        [
            "flats folder",
            "Bayer pattern GBRG (BAYERPAT RGGB read with ROWORDER BOTTOM-UP)",
            "the lights are RGGB",
        ],
    ),
    (
        "darks at another size",
        None,
        lambda n: set_cards(n / "darks", fn=lambda x: x[:, :300]),
        "refused",
        ["darks folder", "frames are 300x240 but the lights are 320x240"],
    ),
]


@pytest.mark.parametrize(
    ("case", "bayer", "make", "outcome", "fragments"), CALIB_CASES, ids=[c[0] for c in CALIB_CASES]
)
def test_bad_calibration(calib_nights, tmp_path, case, bayer, make, outcome, fragments):
    from tilestack.errors import TilestackError

    night = copy_night(calib_nights(bayer), tmp_path / "night")
    if make:
        make(night)
    if outcome == "accepted":
        said = masters_run(night)
        for frag in fragments:
            assert any(frag in w for w in said), (frag, said)
        if not fragments:
            assert not said, said
        return
    with pytest.raises(TilestackError) as err:
        masters_run(night)
    line = str(err.value)
    assert "\n" not in line
    for frag in fragments:
        assert frag in line, f"{frag!r} not in: {line}"
    assert not (night / "results" / "calibration").exists() or not any(
        (night / "results" / "calibration").iterdir()
    )


def test_calibration_limits_are_settings(calib_nights, tmp_path):
    """calibration.max_temperature_difference and max_invalid_flat_fraction move the lines."""
    night = copy_night(calib_nights(None), tmp_path / "night")
    warm_darks(night)
    broken_flats(night, 24)
    said = masters_run(
        night, {"max_temperature_difference": 40.0, "max_invalid_flat_fraction": 0.2}
    )
    assert len(said) == 1 and "10.6% of the master flat's pixels (8113)" in said[0]
    assert (night / "results" / "calibration" / "master_dark.fits").exists()
