import numpy as np
import pandas as pd
import pytest

from tilestack.metrics.local import frame_tile_metrics, local_weights, measure_stars, weight_matrix
from tilestack.tiles import TileGrid

S = 128


def render(xy, flux, sx, sy=None, shape=(S, S)):
    sy = sx if sy is None else sy
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.zeros(shape)
    for (x, y), f in zip(xy, flux, strict=True):
        img += (
            f / (2 * np.pi * sx * sy) * np.exp(-0.5 * (((xx - x) / sx) ** 2 + ((yy - y) / sy) ** 2))
        )
    return img


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(5)
    xy = np.column_stack([rng.uniform(6, 58, 40), rng.uniform(6, 122, 40)])  # left half only
    flux = rng.uniform(300, 900, 40)
    return xy, flux


def make_frame(field, fwhm=3.0, sky=1.0, noise=0.01, seed=0, ell=1.0, transp=1.0, struct=0.0):
    xy, flux = field
    s = fwhm / 2.3548
    img = sky + transp * render(xy, flux / 100.0, s * ell, s / ell)
    yy, xx = np.mgrid[0:S, 0:S]
    img = img + struct * np.sin(xx / 2.0) * (xx > 64)
    img += np.random.default_rng(seed).normal(0, noise, img.shape)
    return img.astype(np.float32)


def test_measure_stars_recovers_shape():
    xy = np.array([[30.3, 40.7], [80.0, 90.2]])
    img = 1.0 + render(xy, [50.0, 50.0], 2.0, 1.0)
    st = measure_stars(img, None, xy + 0.4, 3.0)
    assert len(st) == 2
    np.testing.assert_allclose(st[["x", "y"]].to_numpy(), xy, atol=0.01)
    np.testing.assert_allclose(st["fwhm"], 2.3548 * np.sqrt(2.0), rtol=0.02)
    np.testing.assert_allclose(st["roundness"], 0.5, rtol=0.02)
    np.testing.assert_allclose(st["amplitude"], 50 / (2 * np.pi * 2), rtol=0.02)
    np.testing.assert_allclose(st["background"], 1.0, atol=1e-3)


def metrics_for(frames, grid, xy):
    rows = []
    for i, img in enumerate(frames):
        t = frame_tile_metrics(img, None, grid, pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}))
        rows.append(t.assign(frame=f"f{i:02d}"))
    return pd.concat(rows, ignore_index=True)


def test_each_submetric_follows_the_data(field):
    xy = field[0]
    grid = TileGrid.from_fwhm(3.0, S, S, min_size=32, divisor=2)
    base = dict(fwhm=3.0)
    variants = [dict(base, seed=i) for i in range(8)]
    variants += [
        dict(base, seed=10, fwhm=4.5),  # 8: blurred
        dict(base, seed=11, ell=1.4),  # 9: elongated
        dict(base, seed=12, transp=0.6),  # 10: thin cloud (fainter stars)
        dict(base, seed=13, sky=1.3),  # 11: brighter background
        dict(base, seed=14, struct=0.05),  # 12: more structure in the right half
    ]
    frames = [make_frame(field, **v) for v in variants]
    df = metrics_for(frames, grid, xy)
    g = {f"f{i:02d}": 1.0 for i in range(len(frames))}
    out = local_weights(df, g, star_min_count=3)
    cls = out.groupby("tile")["class"].first()
    star_tiles = cls.index[cls == "star"]
    struct_tiles = cls.index[cls == "structure"]
    assert len(star_tiles) >= 3 and len(struct_tiles) >= 2
    by = out.set_index(["frame", "tile"])

    def med(frame, col, tiles):
        return float(np.median([by.loc[(frame, t), col] for t in tiles]))

    ref = [f"f{i:02d}" for i in range(8)]

    def refmed(col, tiles):
        return float(np.median([med(f, col, tiles) for f in ref]))

    assert med("f08", "FWHM", star_tiles) > 1.3 * refmed("FWHM", star_tiles)
    assert med("f08", "L", star_tiles) < 0.3
    assert med("f09", "R", star_tiles) < refmed("R", star_tiles) - 0.2
    assert med("f09", "L", star_tiles) < refmed("L", star_tiles)
    assert med("f10", "C", star_tiles) < 0.7 * refmed("C", star_tiles)
    assert med("f10", "L", star_tiles) < refmed("L", star_tiles)
    assert med("f11", "B_local", struct_tiles) > 1.25
    assert med("f11", "L", struct_tiles) < refmed("L", struct_tiles)
    assert med("f12", "E_sigma", struct_tiles) > 2 * refmed("E_sigma", struct_tiles)
    assert med("f12", "L", struct_tiles) > refmed("L", struct_tiles)
    # Star counts are per frame; L is clamped; W = G L.
    assert by["star_count"].max() >= 3
    assert out["L"].between(np.exp(-3), np.exp(3)).all()
    np.testing.assert_allclose(out["W"], out["L"])
    m = weight_matrix(out, [f"f{i:02d}" for i in range(len(frames))], grid.n_tiles)
    assert m.shape == (len(frames), grid.n_tiles) and np.isfinite(m).all()


def test_contrast_does_not_reward_frames_that_lose_their_faint_stars():
    # One tile, stars from faint to bright. In a noisy frame only the bright ones pass the SNR
    # cut; their raw contrast is higher, so without the per-star reference flux the worse frame
    # would look better. Normalized by the reference flux, C follows the frame's real peak
    # contrast (same seeing, same transparency: the same C).
    rng = np.random.default_rng(3)
    xy = np.column_stack([rng.uniform(8, 120, 24), rng.uniform(8, 120, 24)])
    flux = np.geomspace(40, 1200, 24)
    grid = TileGrid.from_fwhm(3.0, S, S, min_size=128, divisor=1)
    assert grid.n_tiles == 1
    stars = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})

    def frame(noise, seed):
        img = 1.0 + render(xy, flux / 100.0, 3.0 / 2.3548)
        return (img + np.random.default_rng(seed).normal(0, noise, img.shape)).astype(np.float32)

    clean, noisy = frame(0.004, 1), frame(0.05, 2)
    raw = [frame_tile_metrics(f, None, grid, stars) for f in (clean, noisy)]
    norm = [frame_tile_metrics(f, None, grid, stars, star_flux=flux) for f in (clean, noisy)]
    assert raw[1]["star_count"][0] < raw[0]["star_count"][0]  # faint stars lost in the noise
    assert raw[1]["C"][0] > 1.5 * raw[0]["C"][0]  # raw contrast rewards the noisy frame
    assert norm[1]["C"][0] == pytest.approx(norm[0]["C"][0], rel=0.15)


def test_finds_stars_without_a_list(field):
    grid = TileGrid.from_fwhm(3.0, S, S, min_size=32, divisor=2)
    t = frame_tile_metrics(make_frame(field), None, grid, None)
    assert t["star_count"].sum() >= 30
    assert np.nanmedian(t["FWHM"]) == pytest.approx(3.0, rel=0.1)


def test_class_is_fixed_per_tile_and_uses_median_count():
    df = pd.DataFrame(
        {
            "frame": ["a", "b", "c"] * 2,
            "tile": [0, 0, 0, 1, 1, 1],
            "star_count": [5, 0, 4, 2, 9, 1],
            "FWHM": [3.0, np.nan, 3.5, 3.0, 3.0, 3.0],
            "R": 0.9,
            "C": 1.0,
            "E_sigma": [1.0, 2.0, 3.0, 1.0, 2.0, 3.0],
            "B_local": 1.0,
        }
    )
    out = local_weights(df, {"a": 2.0, "b": 1.0, "c": 0.5}, star_min_count=3)
    assert list(out["class"]) == ["star"] * 3 + ["structure"] * 3
    assert out.loc[1, "zFWHM"] == 0.0  # unmeasured: neutral, the frame keeps its weight
    assert (out["W"] > 0).all()
    np.testing.assert_allclose(out["W"], out["L"] * out["frame"].map({"a": 2, "b": 1, "c": 0.5}))
    # the §8 coefficients are configurable (defaults = the methodology): without the
    # background term the structure tiles' Q is z(E/sigma) alone
    g3 = {"a": 2.0, "b": 1.0, "c": 0.5}
    no_bkg = local_weights(df, g3, star_min_count=3, structure_weights=(1.0, 0.0))
    struct = no_bkg["class"] == "structure"
    np.testing.assert_allclose(no_bkg.loc[struct, "Q"], no_bkg.loc[struct, "zES"])
    fwhm_only = local_weights(df, g3, star_min_count=3, star_weights=(1.0, 0.0, 0.0))
    star = fwhm_only["class"] == "star"
    np.testing.assert_allclose(fwhm_only.loc[star, "Q"], -fwhm_only.loc[star, "zFWHM"])
    half = local_weights(df, {"a": 2.0, "b": 1.0, "c": 0.5}, star_min_count=3, kappa=0.5)
    np.testing.assert_array_equal(half["Q"], out["Q"])
    np.testing.assert_allclose(half["L"], np.exp(np.clip(0.5 * out["Q"], -3, 3)), rtol=1e-12)


def test_frame_metrics_normalizes_once(field):
    from tilestack.metrics.local import frame_metrics

    grid = TileGrid.from_fwhm(3.0, S, S, min_size=32, divisor=2)
    img = make_frame(field)
    g1, t1 = frame_metrics(img * 250.0, None, grid, field[0], border=4)
    g2, t2 = frame_metrics(img, None, grid, field[0], border=4)
    assert g1["B"] == pytest.approx(250.0 * g2["B"], rel=1e-5)
    # Tile metrics live on I = X / B: independent of the ADU scale.
    np.testing.assert_allclose(t1["FWHM"], t2["FWHM"], rtol=1e-4)
    np.testing.assert_allclose(t1["B_local"], t2["B_local"], rtol=1e-4)


def test_structure_energy_ignores_cosmic_rays_and_hot_pixels(field):
    xy = field[0]
    grid = TileGrid.from_fwhm(3.0, S, S, min_size=32, divisor=2)
    frames = [make_frame(field, seed=i, struct=0.02) for i in range(8)]
    hit = make_frame(field, seed=3, struct=0.02)  # the same noise as frame 3, plus hits
    rng = np.random.default_rng(9)
    for _ in range(40):  # cosmic rays: single pixels and short tracks, 200-1000 sigma
        y, x = int(rng.integers(2, S - 3)), int(rng.integers(66, S - 3))
        hit[y, x : x + int(rng.integers(1, 3))] += rng.uniform(2.0, 10.0)
    for _ in range(20):  # hot pixels
        hit[int(rng.integers(0, S)), int(rng.integers(64, S))] += 1.0
    df = metrics_for([*frames, hit], grid, xy)
    out = local_weights(df, {f"f{i:02d}": 1.0 for i in range(9)}, star_min_count=3)
    struct = out[out["class"] == "structure"]
    assert struct["tile"].nunique() >= 2
    by = struct.set_index(["frame", "tile"])["E_sigma"]
    tiles = struct["tile"].unique()
    # Per tile, the hits change E/sigma by less than the scatter between noise realizations.
    for t in tiles:
        clean = np.array([by[(f"f{i:02d}", t)] for i in range(8)])
        spread = 1.4826 * np.median(np.abs(clean - np.median(clean)))
        assert abs(by[("f08", t)] - by[("f03", t)]) < spread
    assert struct.loc[struct["frame"] == "f08", "zES"].abs().max() < 3.0


def test_tile_star_medians_match_a_per_tile_numpy_median():
    from tilestack.metrics.local import tile_star_medians

    rng = np.random.default_rng(5)
    grid = TileGrid.from_fwhm(3.0, 300, 220, size_factor=20)
    xy = rng.uniform(-5, 305, size=(400, 2)) * [1.0, 220 / 300]
    vals = rng.normal(size=(2, 400))
    vals[0, ::5] = np.nan  # unmeasured: left out of that median only
    count, med = tile_star_medians(xy, vals, grid)
    for t, (y0, y1, x0, x1) in enumerate(grid.tiles):
        sel = (xy[:, 0] >= x0 - 0.5) & (xy[:, 0] < x1 - 0.5)
        sel &= (xy[:, 1] >= y0 - 0.5) & (xy[:, 1] < y1 - 0.5)
        assert count[t] == sel.sum()
        for k in range(2):
            v = vals[k, sel]
            v = v[np.isfinite(v)]
            expected = np.median(v) if v.size else np.nan
            assert np.array_equal(med[t, k], expected, equal_nan=True)


def test_tile_star_medians_of_a_frame_without_stars_are_empty():
    from tilestack.metrics.local import tile_scales, tile_star_medians

    grid = TileGrid.from_fwhm(3.0, 300, 220, size_factor=20)
    count, med = tile_star_medians(np.empty((0, 2)), np.empty((3, 0)), grid)
    assert count.shape == (grid.n_tiles,) and (count == 0).all()
    assert med.shape == (grid.n_tiles, 3) and np.isnan(med).all()
    assert np.isnan(tile_scales(np.empty((0, 2)), np.empty(0), grid)).all()
