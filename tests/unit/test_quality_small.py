"""Regression: on a small simulated night the final stack beats the classical one.

A small version of ``benchmarks/quality_eval.py``: frames warped with their true transforms,
the methodology's default weights (reduced mode: §9 with W = G·L) and the classical stack
(addscale, equal weights, 3σ clipping) from the same reconstruction call, both measured at
truth star positions with one stamp size and one aperture.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")
simulate = pytest.importorskip("tilestack.simulate")
global_metrics = pytest.importorskip("tilestack.metrics.global_metrics")
local = pytest.importorskip("tilestack.metrics.local")
stacking = pytest.importorskip("tilestack.stacking")
tiles = pytest.importorskip("tilestack.tiles")
interpolation = pytest.importorskip("tilestack.registration.interpolation")
stars_mod = pytest.importorskip("tilestack.stars")
measure = pytest.importorskip("tilestack.validation.measure")
frames_io = pytest.importorskip("tilestack.io.frames")

# a 50-frame night stacked twice and star fits on both stacks: about 10 s
pytestmark = pytest.mark.slow

SIZE = 384
N_FRAMES = 50


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    import pandas as pd

    night = simulate.simulate_night(
        tmp_path_factory.mktemp("night"),
        n_frames=N_FRAMES,
        width=SIZE,
        height=SIZE,
        seed=3,
        star_density=4000.0,
        clouds=True,
    )
    bias = float(night.params["bias_level_adu"])
    sat = float(night.params["saturation_adu"]) - 1.0
    cube = np.empty((N_FRAMES, SIZE, SIZE), np.float32)
    valid = np.empty((N_FRAMES, SIZE, SIZE), np.uint8)
    star_tables = []
    for i, path in enumerate(night.lights):
        raw = frames_io.read_frame(path).data
        ok = (raw < sat).astype(np.uint8)
        img = (raw - np.float32(bias)).astype(np.float32)
        m = night.transform(i)
        cube[i], valid[i] = interpolation.warp_image(img, m, (SIZE, SIZE), valid=ok)
        st = stars_mod.detect_stars(img, valid=ok)
        xy = np.column_stack([st["x"], st["y"], np.ones(len(st))]) @ m.T
        star_tables.append(st.assign(x=xy[:, 0], y=xy[:, 1]))
    fwhm = tiles.estimate_fwhm({f"{i:04d}": t for i, t in enumerate(star_tables)})
    grid = tiles.TileGrid.from_fwhm(fwhm, SIZE, SIZE)
    g_rows, t_rows = [], []
    for i in range(N_FRAMES):
        g, t = local.frame_metrics(cube[i], valid[i], grid, star_tables[i][["x", "y"]])
        g_rows.append({"frame": f"f{i:04d}", **g})
        t_rows.append(t.assign(frame=f"f{i:04d}"))
    gdf = global_metrics.global_weights(pd.DataFrame(g_rows))
    ldf = local.local_weights(pd.concat(t_rows, ignore_index=True), gdf)
    w = local.weight_matrix(ldf, gdf["frame"].tolist(), grid.n_tiles)
    res = stacking.stack_frames(
        cube,
        grid,
        w,
        gdf["B"].to_numpy(),
        valid=valid,
        inputs=stacking.BandInputs(classical=(gdf["median"].to_numpy(), gdf["mad"].to_numpy())),
    )
    covered = ((valid > 0) & np.isfinite(cube)).any(axis=0)  # the truth grid is no frame's grid
    return night, res["stack"], res["classical"], covered


def _truth_sets(night, classical):
    st = night.stars[night.stars["in_grid"]]
    xy = st[["x", "y"]].to_numpy()
    flux = st["flux"].to_numpy()
    inside = np.all((xy > 30) & (xy < SIZE - 30), axis=1)
    iso = measure.isolated(xy, flux, 10.0, 0.02) & inside
    bright = iso & (flux > np.quantile(flux, 0.6)) & (flux < np.quantile(flux, 0.995))
    faint = measure.isolated(xy, flux, 12.0, 0.02) & inside
    faint &= (flux > np.quantile(flux, 0.3)) & (flux < np.quantile(flux, 0.7))
    return xy[bright], xy[faint], xy[inside], flux[inside]


def _figures(stacks):
    """Median FWHM over common bright truth stars, faint-star SNR and photometric slope."""
    night, final, classical, covered = stacks
    bright, faint, phot_xy, phot_flux = _truth_sets(night, classical)
    ref = measure.measure_stars(classical, bright, snr_min=20.0)
    stamp = int(np.clip(round(2.0 * float(np.median(ref["fwhm"]))), 4, 25))
    a = measure.measure_stars(classical, bright, snr_min=20.0, stamp_radius=stamp)
    b = measure.measure_stars(final, bright, snr_min=20.0, stamp_radius=stamp)
    common = set(map(tuple, np.round(a[["x", "y"]].to_numpy()))) & set(
        map(tuple, np.round(b[["x", "y"]].to_numpy()))
    )
    assert len(common) >= 10

    def med(t):
        keys = list(map(tuple, np.round(t[["x", "y"]].to_numpy())))
        return float(np.median(t["fwhm"].to_numpy()[[k in common for k in keys]]))

    radius = max(1.5, med(a))
    s_cls = np.nanmedian(measure.faint_star_snr(classical, faint, radius=radius))
    s_fin = np.nanmedian(measure.faint_star_snr(final, faint, radius=radius))
    slope = measure.photometry_slope(final, phot_xy, phot_flux, radius=8.0)["slope_loglog"]
    return med(a), med(b), s_cls, s_fin, slope


def test_final_stack_is_finite_linear_and_sharper_than_classical(stacks):
    _, final, _, covered = stacks
    assert np.isfinite(final[covered]).all()
    f_cls, f_fin, _, _, slope = _figures(stacks)
    assert abs(slope - 1.0) < 0.03
    assert f_fin < 0.97 * f_cls, (f_fin, f_cls)


@pytest.mark.xfail(
    strict=True,
    reason="the methodology's exp(clip(z)) weights lose faint-star SNR against the classical "
    "stack (benchmarks/results/quality.md); this turns into a failure once that is fixed",
)
def test_final_stack_keeps_faint_star_snr(stacks):
    _, _, s_cls, s_fin, _ = _figures(stacks)
    assert s_fin >= 0.97 * s_cls, (s_fin, s_cls)
