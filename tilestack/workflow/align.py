"""One batch's per-frame work after calibration, in one pass: register, warp, measure.

For each frame of a calibrated batch file: register it against the reference (stars → RANSAC
→ image fallbacks, or take siril-cli's row), and when it registered, warp it onto the
reference grid (mono: `warp_image`; OSC: `warp_mosaic` per Bayer subplane), split it into
channel planes and measure the raw global and per-tile metrics on each plane.

Registration and warping used to be two jobs per batch; joined, a batch costs one Python
start-up and reads each frame once, and the frame in memory is warped right after it is
registered (peak memory: one frame plus its warped planes).

Star positions for the local metrics and the global E are ONE deep list for every frame:
stars detected at ``star_sigma`` on the reference image (already on the reference grid),
unsaturated, found again by every batch job (cheap, deterministic), so every frame is measured
at the same stars.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd

from tilestack.cfa import from_channel_xy, luminance_image, split_channels, to_channel_xy
from tilestack.clipped_stars import grow_clipped_cores
from tilestack.errors import InputError
from tilestack.io.atomic import write_table
from tilestack.io.batch import BatchFile, batch_writer
from tilestack.io.frames import read_image
from tilestack.io.transforms_table import row_matrix
from tilestack.metrics.global_metrics import background_level
from tilestack.metrics.local import frame_metrics, reference_star_list, tile_scales
from tilestack.normalization import (
    FEW_STARS,
    ReferencePhotometry,
    aperture_photometry,
    fit_background,
    normalize_frame,
    photometric_scale,
    star_mask,
)
from tilestack.registration.cfa_warp import warp_mosaic
from tilestack.registration.interpolation import warp_image
from tilestack.registration.pipeline import register_frame, result_row
from tilestack.robust import block_noise, diff_noise
from tilestack.runtime import Progress
from tilestack.tiles import TileGrid
from tilestack.trails import TrailMask, find_trails
from tilestack.transmission import Transmission, fit_transmission, star_log_ratios

# side (px) of the box whose mean is the local sky behind the noise estimates' clip
LOCAL_SKY_BOX = 33
# stars below this aperture SNR (frame or reference) do not vote on a tile's own scale
TILE_SCALE_SNR = 5.0
# registration.* keys passed straight to `register_frame`
REGISTRATION_OPTION_KEYS = (
    "max_stars",
    "ransac_threshold_px",
    "ransac_confidence",
    "min_inliers",
    "min_inlier_ratio",
    "min_quadrants",
    "max_rms_fwhm_fraction",
    "max_rms_px",
    "delta_ncc",
    "seed",
    "sip",
)
# raw per-frame metrics of the batch table (the weights job adds z-scores, Q and G)
RAW_GLOBAL_COLUMNS = [
    "frame",
    "stem",
    "channel",
    "B",
    "sigma",
    "E",
    "median",
    "mad",
    "F",
    "sigma_raw",
    "sigma_block",
    "trail_px",
]
# §5 normalization of each frame and channel (method tbqr2): scale, how it was found, surface
NORM_COLUMNS = [
    "s",
    "norm_stars",
    "norm_method",
    "surface_height",
    "surface_width",
    "surface_ny",
    "surface_nx",
    "surface",
    "K_applied",
    "K_chi2",
    "K_dof",
]


@dataclass
class Reference:
    """What every batch registers against and measures with."""

    frame: str  # the reference light's file name
    stars: pd.DataFrame  # its star list (registration)
    image: np.ndarray  # its calibrated image (mosaic for OSC)
    valid: np.ndarray
    _luminance: np.ndarray | None = field(default=None, repr=False)

    def luminance(self, bayer: str | None) -> np.ndarray:
        if self._luminance is None:
            self._luminance = luminance_image(self.image, self.valid, bayer)
        return self._luminance


@dataclass
class WarpSettings:
    channels: list[str]
    bayer: str | None
    out_shape: tuple[int, int]  # (height, width) of the reference grid
    kernel: str = "lanczos3"
    clamp: bool = True
    border: int = 16
    star_sigma: float = 3.0
    method: str = "tbqr2"  # tbqr2: §5 photometric scale + background surface; v3: X / B only
    background: str = "surface"  # normalization.background
    scale_px: int = 128  # normalization.scale_px
    transmission: str = "auto"  # normalization.transmission: auto | none


@dataclass
class AlignResult:
    registration: pd.DataFrame  # the batch's rows of the transforms contract (+ stem, reason…)
    global_metrics: pd.DataFrame  # one row per registered frame and channel
    tile_metrics: pd.DataFrame  # one row per registered frame, channel and tile


def common_star_xy(ref: Reference, settings: WarpSettings) -> dict[str, pd.DataFrame]:
    """The deep reference star list in each channel plane's coordinates."""
    common = reference_star_list(ref.image, ref.valid, settings.bayer, sigma=settings.star_sigma)
    ref_xy = common[["x", "y"]].to_numpy(np.float64)
    flux = common["flux"].to_numpy()
    out = {}
    for c in settings.channels:
        xy = to_channel_xy(ref_xy, settings.bayer, c)
        out[c] = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "flux": flux})
    return out


def reference_photometry(
    planes: dict[str, tuple[np.ndarray, np.ndarray]],
    settings: WarpSettings,
    grid: TileGrid,
    star_xy: dict[str, pd.DataFrame],
) -> dict[str, ReferencePhotometry]:
    """The reference's registered ``planes`` with their aperture fluxes: the scale of §5."""
    out = {}
    for c in settings.channels:
        plane, ok = planes[c]
        xy = star_xy[c][["x", "y"]].to_numpy(np.float64)
        _, _, stars = frame_metrics(
            plane, ok, grid, star_xy[c], border=settings.border, with_stars=True
        )
        out[c] = ReferencePhotometry.measure(plane, ok, xy, frame_fwhm(stars, grid))
    return out


def frame_fwhm(stars: pd.DataFrame, grid: TileGrid) -> float:
    """The frame's F: median FWHM of its measured stars (the grid's F when none)."""
    fw = stars["fwhm"].to_numpy(np.float64) if len(stars) else np.empty(0)
    fw = fw[np.isfinite(fw) & (fw > 0)]
    return float(np.median(fw)) if fw.size else float("nan")


def noise_block(fwhm: float) -> int:
    """Side (px) of the blocks whose sums measure a point source's noise: about its aperture
    (2 FWHM of the night), 4 to 16 px."""
    f = fwhm if np.isfinite(fwhm) and fwhm > 0 else 3.0
    return int(np.clip(round(2.0 * f), 4, 16))


def pixel_noise(
    plane: np.ndarray,
    ok: np.ndarray,
    block: int = 4,
    stars: np.ndarray | None = None,
    fwhm: float = 3.0,
) -> tuple[float, float]:
    """Robust noise (ADU) of a plane's star-free background: ``(per pixel, per block)``.

    The first from neighbour differences (white noise); the second from ``block``² sums
    (:func:`~tilestack.robust.block_noise`; a star's aperture), which smoothing lowers
    far less. Blocks
    are kept when all their pixels are within 5 sigma of the sky (stars leave them; noise
    tails do not) and, when ``stars`` (positions in this plane) are given, farther than 3 FWHM
    from every star: a faint star's wings below the clip would otherwise read as noise, more
    in a transparent frame than in a hazy one.
    """
    mask = (np.asarray(ok) > 0) & np.isfinite(plane)
    if mask.sum() < 64:
        return float("nan"), float("nan")
    b, bsig = background_level(plane, mask)
    if not (np.isfinite(bsig) and bsig > 0):
        return diff_noise(plane, mask), block_noise(plane, mask, block)
    # deviations from the local sky (a box mean over the valid pixels), so that a gradient or
    # a cloud's glow does not push whole regions past the clip and stars' wings into the sample
    m = mask.astype(np.float32)
    filled = np.where(mask, plane, np.float32(b)).astype(np.float32)
    local = cv2.boxFilter(filled * m, cv2.CV_32F, (LOCAL_SKY_BOX, LOCAL_SKY_BOX), normalize=False)
    local /= np.maximum(cv2.boxFilter(m, cv2.CV_32F, (LOCAL_SKY_BOX,) * 2, normalize=False), 1)
    dev = np.abs(filled - local)
    _, lsig = background_level(filled - local, mask)
    lsig = lsig if np.isfinite(lsig) and lsig > 0 else bsig
    pixel = diff_noise(plane, mask & (dev <= np.float32(3.0 * lsig)))
    # block sums of the deviations: adjacent blocks of a sky gradient differ by more than noise
    quiet = mask & (dev <= np.float32(5.0 * lsig))
    if stars is not None and len(stars):
        quiet &= ~star_mask(plane.shape, stars, 3.0 * (fwhm if np.isfinite(fwhm) else 3.0))
    return pixel, block_noise(filled - local, quiet, block)


@dataclass
class PlanePhotometry:
    """A plane's aperture photometry of the common star list and its trail-blind scale."""

    flux: np.ndarray
    snr: np.ndarray
    scale: float  # weighted-median flux_ref / flux; 1 when too few stars qualify


def plane_photometry(
    plane: np.ndarray, ok: np.ndarray, xy: np.ndarray, ref_phot: ReferencePhotometry
) -> PlanePhotometry:
    flux, snr = aperture_photometry(plane, ok, xy, ref_phot.fwhm)
    s0, _ = photometric_scale(flux, snr, ref_phot.flux, ref_phot.snr)
    if not (np.isfinite(s0) and s0 > 0):  # as normalize_frame: a few stars before none
        s0, _ = photometric_scale(flux, snr, ref_phot.flux, ref_phot.snr, min_stars=FEW_STARS)
    return PlanePhotometry(flux, snr, s0 if np.isfinite(s0) and s0 > 0 else 1.0)


def mask_trails(
    plane: np.ndarray,
    ok: np.ndarray,
    ref_plane: tuple[np.ndarray, np.ndarray],
    star_xy: pd.DataFrame,
    grid: TileGrid,
    ref_phot: ReferencePhotometry | None,
) -> tuple[np.ndarray, TrailMask, PlanePhotometry | None]:
    """The plane's validity without its satellite/aircraft trails, the trails found, and the
    plane's photometry with them masked (tbqr2).

    Trail pixels get weight 0 like any rejected sample: they never reach the stack, the
    photometric scale (a star whose aperture a trail crosses is not measured), the background
    surface or the metrics. The search compares the plane with the reference's plane brought
    to one scale by a first, trail-blind photometric scale (a weighted median, robust to a few
    hit stars; 1 when too few stars qualify).
    """
    xy = star_xy[["x", "y"]].to_numpy(np.float64)
    phot = plane_photometry(plane, ok, xy, ref_phot) if ref_phot is not None else None
    scale = phot.scale if phot is not None else 1.0
    trail = find_trails(plane, ok, ref_plane[0], ref_plane[1], xy, grid.fwhm, scale=scale)
    if trail.n_pixels:
        ok = np.where(trail.mask, 0, ok).astype(np.asarray(ok).dtype)
        if ref_phot is not None:
            phot = plane_photometry(plane, ok, xy, ref_phot)
    return ok, trail, phot


def frame_transmission(
    phot: dict[str, PlanePhotometry],
    ref_phot: dict[str, ReferencePhotometry],
    star_xy: dict[str, pd.DataFrame],
    shape: tuple[int, int],
    grid: TileGrid,
    settings: WarpSettings,
) -> Transmission:
    """§5 local transmission of one frame from all its channels' stars (grey, pooled)."""
    xy, lr, var = [], [], []
    for c, p in phot.items():
        a, b = star_log_ratios(p.flux, p.snr, ref_phot[c].flux, ref_phot[c].snr, p.scale)
        xy.append(star_xy[c][["x", "y"]].to_numpy(np.float64))
        lr.append(a)
        var.append(b)
    cell = max(16, grid.stride)
    return fit_transmission(
        np.concatenate(xy),
        np.concatenate(lr),
        np.concatenate(var),
        shape,
        cell,
        mode=settings.transmission,
    )


@dataclass
class CorrectedPlanes:
    """A frame's channel planes after the trail masks and the §5 transmission K."""

    planes: dict[str, tuple[np.ndarray, np.ndarray]]
    trails: dict[str, TrailMask]
    transmission: Transmission | None
    k_image: np.ndarray | None  # K at every plane pixel, None where K ≡ 1
    note: str

    def annotate(self, c: str, g: dict, t: pd.DataFrame, grid: TileGrid) -> None:
        """Add the trail and K figures to channel c's global row ``g`` and tile table ``t``."""
        g["trail_px"] = self.trails[c].n_pixels
        tr = self.transmission
        if tr is None:
            return
        g.update(K_applied=tr.applied, K_chi2=tr.chi2, K_dof=tr.dof)
        if self.k_image is not None and "T_local" in t:
            # the tile's own transmission before K took it out (§8's factor (K̄/K_t)² reads it)
            t["K_tile"] = tile_means(self.k_image, grid)
            t["T_local"] = t["T_local"].to_numpy() * t["K_tile"].to_numpy()


def correct_planes(
    planes: dict[str, tuple[np.ndarray, np.ndarray]],
    ref_planes: dict[str, tuple[np.ndarray, np.ndarray]],
    ref_phot: dict[str, ReferencePhotometry],
    star_xy: dict[str, pd.DataFrame],
    grid: TileGrid,
    settings: WarpSettings,
) -> CorrectedPlanes:
    """Trails masked in every channel, then (tbqr2) the grey K from all channels' stars
    multiplied into the light above every plane's sky, then each clipped star core grown to
    its star's extent (§9: a star is made of the frames where it is not clipped)."""
    out, trails, phot, note = {}, {}, {}, ""
    for c in settings.channels:
        plane, ok = planes[c]
        ok, trails[c], phot[c] = mask_trails(
            plane, ok, ref_planes[c], star_xy[c], grid, ref_phot.get(c)
        )
        out[c] = (plane, ok)
        if trails[c].n_pixels:
            note += f"; {c}: {len(trails[c].segments)} trail(s), {trails[c].n_pixels} px masked"
    trans = None
    if settings.method == "tbqr2" and all(p is not None for p in phot.values()):
        shape = out[settings.channels[0]][0].shape
        trans = frame_transmission(phot, ref_phot, star_xy, shape, grid, settings)
    k_image = trans.image() if trans is not None and trans.applied else None
    if k_image is not None:
        note += f"; K {float(k_image.min()):.3f}-{float(k_image.max()):.3f}"
        cell = max(1, trans.height // trans.log_k.shape[0])
        out = {
            c: (transmit(plane, ok, k_image, star_xy[c], grid.fwhm, cell), ok)
            for c, (plane, ok) in out.items()
        }
    clipped = 0
    for c, (plane, ok) in out.items():
        ok, n = grow_clipped_cores(plane, ok, grid.fwhm)
        out[c] = (plane, ok)
        clipped = max(clipped, n)
    if clipped:
        note += f"; {clipped} clipped star(s) left out over their extent"
    return CorrectedPlanes(out, trails, trans, k_image, note)


def transmit(
    plane: np.ndarray,
    ok: np.ndarray,
    k_image: np.ndarray,
    star_xy: pd.DataFrame,
    fwhm: float,
    cell: int,
) -> np.ndarray:
    """``B + K·(X − B)``: K applied to the light above the frame's own smooth sky ``B``.

    The light a cloud took is the stars' and the nebula's; the sky at the sensor is what it
    is (the cloud's own glow included). ``K·X`` would multiply the sky by K's structure, a
    pattern of hundreds of ADU at a cloud's edge that no background surface of
    ``normalization.scale_px`` cells can follow. In the §5 form this is ``s·K·X − S'`` with the
    additive part ``S' = S + s·(K − 1)·B``, still linear in X.
    """
    f = fwhm if np.isfinite(fwhm) and fwhm > 0 else 3.0
    xy = star_xy[["x", "y"]].to_numpy(np.float64)
    mask = (np.asarray(ok) > 0) & np.isfinite(plane) & ~star_mask(plane.shape, xy, 2.5 * f)
    sky = fit_background(plane, mask, model="surface", scale_px=cell).image()
    return (sky + k_image * (plane - sky)).astype(np.float32)


def tile_means(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Mean of ``image`` over each tile (tile order of the grid)."""
    return np.array([float(np.mean(image[y0:y1, x0:x1])) for y0, y1, x0, x1 in grid.tiles])


def measure_plane(
    plane: np.ndarray,
    ok: np.ndarray,
    grid: TileGrid,
    star_xy: pd.DataFrame,
    settings: WarpSettings,
    ref_phot: ReferencePhotometry | None,
    unwarped: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Raw §6/§8 metrics of one registered plane and, for tbqr2, its §5 normalization.

    ``unwarped``: the same channel plane before warping, where the pixel noise is still
    white (``sigma_raw``, ADU): interpolation smooths a frame's noise by an amount that depends
    on its sub-pixel shift, which says nothing about the frame's quality; with its validity and
    the common star list in its own pixel coordinates.
    """
    g, t, stars = frame_metrics(plane, ok, grid, star_xy, border=settings.border, with_stars=True)
    g["F"] = frame_fwhm(stars, grid)
    xy = star_xy[["x", "y"]].to_numpy(np.float64)
    raw = unwarped if unwarped is not None else (plane, ok, xy)
    g["sigma_raw"], g["sigma_block"] = pixel_noise(
        raw[0], raw[1], noise_block(grid.fwhm), stars=raw[2], fwhm=grid.fwhm
    )
    if ref_phot is None:
        return g, t
    fwhm = g["F"] if np.isfinite(g["F"]) else grid.fwhm
    nrm = normalize_frame(
        plane, ok, fwhm, xy, ref_phot, model=settings.background, scale_px=settings.scale_px
    )
    good = (nrm.snr >= TILE_SCALE_SNR) & (ref_phot.snr >= TILE_SCALE_SNR)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(good, ref_phot.flux / nrm.flux, np.nan)
    t["T_local"] = tile_scales(xy, ratio, grid)
    g.update(
        s=nrm.scale,
        norm_stars=nrm.n_stars,
        norm_method=nrm.method,
        surface_height=int(nrm.surface.height),
        surface_width=int(nrm.surface.width),
        surface_ny=int(nrm.surface.grid.shape[0]),
        surface_nx=int(nrm.surface.grid.shape[1]),
        surface=nrm.surface.grid.ravel().tolist(),
    )
    return g, t


def register_row(
    name: str,
    image: np.ndarray,
    valid: np.ndarray,
    stars: pd.DataFrame | None,
    ref: Reference,
    bayer: str | None,
    registration: dict,
) -> dict:
    """One frame's row of the transforms table (the reference gets the identity)."""
    if name == ref.frame:
        return result_row(name, None, True)
    options = {k: registration[k] for k in REGISTRATION_OPTION_KEYS}
    result = register_frame(
        stars,
        ref.stars,
        image_loader=lambda: luminance_image(image, valid, bayer),
        reference_loader=ref.luminance(bayer),
        model=registration["model"],
        shape=image.shape,
        **options,
    )
    return result_row(name, result, False)


def frame_star_xy(
    star_xy: pd.DataFrame, matrix: np.ndarray, bayer: str | None, channel: str
) -> np.ndarray:
    """The common star list (channel-plane coordinates on the reference grid) in the unwarped
    frame's channel plane: through full resolution and the inverse of the frame's transform."""
    full = from_channel_xy(star_xy[["x", "y"]].to_numpy(np.float64), bayer, channel)
    h = np.column_stack([full, np.ones(len(full))]) @ np.linalg.inv(matrix).T
    with np.errstate(divide="ignore", invalid="ignore"):
        frame = h[:, :2] / h[:, 2:3]
    return to_channel_xy(frame, bayer, channel)


def warp_planes(
    image: np.ndarray, valid: np.ndarray, matrix: np.ndarray, settings: WarpSettings
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Warp one calibrated frame onto the reference grid and split it into channel planes."""
    kw = {"kernel": settings.kernel, "clamp": settings.clamp, "valid": valid}
    if settings.bayer:
        warped, cov = warp_mosaic(image, matrix, settings.bayer, settings.out_shape, **kw)
    else:
        warped, cov = warp_image(image, matrix, settings.out_shape, **kw)
    return split_channels(warped, settings.bayer, cov)


def align_frames(
    batch: BatchFile,
    stars: pd.DataFrame,
    ref: Reference,
    grid: TileGrid,
    settings: WarpSettings,
    registration: dict,
    writers: dict,
    progress: Progress,
    siril_rows: pd.DataFrame | None = None,
) -> AlignResult:
    """Register, warp and measure every frame of ``batch``.

    ``writers[c](stem, plane, valid, header)`` appends a registered plane to channel c's batch
    file; ``siril_rows`` (registration.engine: siril) replaces the own registration by
    siril-cli's rows for these frames.
    """
    by_frame = {f: g.drop(columns=["frame", "stem"]) for f, g in stars.groupby("frame", sort=False)}
    star_xy = common_star_xy(ref, settings)
    progress.log(f"{len(next(iter(star_xy.values())))} common stars from the reference image")
    ref_planes = warp_planes(ref.image, ref.valid, np.eye(3), settings)
    ref_phot = (
        reference_photometry(ref_planes, settings, grid, star_xy)
        if settings.method == "tbqr2"
        else {}
    )
    siril_by_frame = (
        {r["frame"]: r for r in siril_rows.to_dict("records")} if siril_rows is not None else None
    )
    reg_rows, global_rows, tile_rows = [], [], []
    for stem in batch.stems:
        name = str(batch.header(stem).get("FRAME", stem))
        image, valid = batch.image(stem)
        if siril_by_frame is not None:
            if name not in siril_by_frame:
                raise InputError(f"{name}: no row in siril-cli's registration table")
            row = dict(siril_by_frame[name])
        else:
            row = register_row(
                name, image, valid, by_frame.get(name), ref, settings.bayer, registration
            )
        row = {"frame": row.pop("frame"), **row, "stem": stem}
        reg_rows.append(row)
        note = f"{name}: {row['status']} {row['method']} rms {float(row['rms_px']):.3f}"
        if row["status"] != "unregistered":
            planes = warp_planes(image, valid, row_matrix(row), settings)
            raw_planes = split_channels(image, settings.bayer, valid)
            fix = correct_planes(planes, ref_planes, ref_phot, star_xy, grid, settings)
            note += fix.note
            for c in settings.channels:
                plane, ok = fix.planes[c]
                writers[c](stem, plane, ok, {"FRAME": name})
                raw = (
                    *raw_planes[c],
                    frame_star_xy(star_xy[c], row_matrix(row), settings.bayer, c),
                )
                g, t = measure_plane(plane, ok, grid, star_xy[c], settings, ref_phot.get(c), raw)
                fix.annotate(c, g, t, grid)
                global_rows.append({"frame": name, "stem": stem, "channel": c, **g})
                t.insert(0, "channel", c)
                t.insert(0, "stem", stem)
                t.insert(0, "frame", name)
                tile_rows.append(t)
            del planes
        progress.step(note=note)
    return AlignResult(
        registration=pd.DataFrame(reg_rows),
        global_metrics=pd.DataFrame(
            global_rows,
            columns=RAW_GLOBAL_COLUMNS + (NORM_COLUMNS if settings.method == "tbqr2" else []),
        ),
        tile_metrics=pd.concat(tile_rows, ignore_index=True) if tile_rows else pd.DataFrame(),
    )


def align(job) -> None:
    """Rule ``align`` (``scripts/align.py``); ``job`` is Snakemake's script object (or anything
    with its attributes: input, output, params, wildcards, threads, log, config)."""
    p = job.params
    batch = job.wildcards.batch
    channels = list(p.channels)
    ref = Reference(
        frame=json.loads(open(job.input.reference).read())["frame"],
        stars=pd.read_parquet(job.input.reference_stars),
        image=read_image(job.input.reference_image),
        valid=read_image(job.input.reference_image, hdu="VALID", dtype=None),
    )
    settings = WarpSettings(
        channels=channels,
        bayer=p.bayer or None,
        out_shape=(int(p.height), int(p.width)),
        kernel=p.interpolation,
        clamp=bool(p.anti_ringing),
        border=int(p.border_px),
        star_sigma=float(p.star_sigma),
        method=str(p.method),
        background=str(p.normalization["background"]),
        scale_px=int(p.normalization["scale_px"]),
        transmission=str(p.normalization.get("transmission", "auto")),
    )
    siril = pd.read_csv(job.input.siril[0]) if job.input.siril else None
    with BatchFile(job.input.calibrated) as src, ExitStack() as stack:
        writers = {
            c: stack.enter_context(batch_writer(path, {"CHANNEL": c, "BATCH": batch}))
            for c, path in zip(channels, job.output.registered, strict=True)
        }
        prog = Progress(job.log[0], len(src.stems), "frames", f"align {batch}")
        res = align_frames(
            src,
            pd.read_parquet(job.input.stars),
            ref,
            TileGrid.from_json(job.input.grid),
            settings,
            dict(p.registration),
            writers,
            prog,
            siril_rows=siril,
        )
    write_table(job.output.tiles, res.tile_metrics)
    write_table(job.output.metrics, res.global_metrics)
    write_table(job.output.table, res.registration)
    bad = res.registration[res.registration["status"] == "unregistered"]
    prog.finish(f"{len(res.registration) - len(bad)} registered, {len(bad)} unregistered")
    for r in bad.itertuples():
        prog.log(f"unregistered: {r.frame}: {r.reason}")
