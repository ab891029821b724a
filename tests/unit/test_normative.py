"""METHODOLOGY §14 normative tests 1-8 and 11 on a small end-to-end TBQR chain."""

import numba
import numpy as np
import pandas as pd
import pytest

from tilestack.clustering import cluster_frames, state_vectors
from tilestack.errors import ConfigError
from tilestack.metrics.global_metrics import frame_global_metrics, global_weights
from tilestack.metrics.local import frame_tile_metrics, local_weights, weight_matrix
from tilestack.reconstruction import BandInputs, BandOptions, array_reader, reconstruct_band
from tilestack.tiles import TileGrid

N, S = 12, 96
FRAMES = [f"f{i:02d}" for i in range(N)]


def sky_frames(seed, sky=100.0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(5, S - 5, (30, 2))
    flux = rng.uniform(500, 3000, 30)
    yy, xx = np.mgrid[0:S, 0:S]
    out = []
    for _ in range(N):
        s = rng.uniform(1.0, 2.0)
        img = np.full((S, S), sky * rng.uniform(0.8, 1.3))
        for (x, y), f in zip(xy, flux, strict=True):
            img += f / (2 * np.pi * s * s) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
        out.append(img + rng.normal(0, 2.0, (S, S)))
    frames = np.array(out, np.float32)
    frames[3, 40, 40] = 5e4  # a cosmic ray
    return frames, xy


def run_channel(frames, xy, clusters=True):
    """Everything from normalization to the final stack for one channel."""
    valid = np.isfinite(frames).astype(np.uint8)
    gm = pd.DataFrame(
        [frame_global_metrics(f, v, border=4) for f, v in zip(frames, valid, strict=True)]
    )
    gm.insert(0, "frame", FRAMES)
    gw = global_weights(gm)
    grid = TileGrid.from_fwhm(2.0, S, S, min_size=16, divisor=3)
    stars = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})
    loc = pd.concat(
        [
            frame_tile_metrics(f / b, v, grid, stars).assign(frame=name)
            for f, v, b, name in zip(frames, valid, gw["B"], FRAMES, strict=True)
        ],
        ignore_index=True,
    )
    lw = local_weights(loc, gw, star_min_count=2)
    w = weight_matrix(lw, FRAMES, grid.n_tiles)
    kw = {}
    if clusters:
        cl = cluster_frames(state_vectors(gw, lw), seed=0, n_clusters=3)
        kw = dict(
            clusters=cl.set_index("frame").loc[FRAMES, "cluster"].to_numpy(), G=gw["G"].to_numpy()
        )
    r = reconstruct_band(
        array_reader(frames, valid),
        N,
        0,
        S,
        grid,
        w,
        gw["B"].to_numpy(),
        inputs=BandInputs(classical=(gw["median"].to_numpy(), gw["mad"].to_numpy()), **kw),
    )
    return dict(global_=gw, local=lw, weights=w, result=r, grid=grid)


@pytest.fixture(scope="module")
def channels():
    return {c: sky_frames(seed) for c, seed in (("R", 1), ("G", 2), ("B", 3))}


@pytest.fixture(scope="module")
def baseline(channels):
    return {c: run_channel(*channels[c]) for c in channels}


def test_1_weights_sum_to_one_enforced(baseline):
    gm = baseline["G"]["global_"][["frame", "B", "sigma", "E"]]
    for abg in [(0.4, 0.3, 0.31), (0.5, 0.5, 0.5), (1.0, 0.0, -0.1)]:
        with pytest.raises(ConfigError):
            global_weights(gm, *abg)
    global_weights(gm, 0.2, 0.2, 0.6)


def test_2_clamp_before_exp_global_and_local(baseline):
    gm = baseline["G"]["global_"][["frame", "B", "sigma", "E"]].copy()
    gm.loc[0, "B"] = 1e9  # absurd background -> Q far below -3
    gm.loc[1, "E"] = 1e9  # absurd energy -> Q far above 3
    out = global_weights(gm, 0.4, 0.3, 0.3)
    assert out["Q"][0] < -3 and out["G"][0] == np.exp(-3.0)
    assert out["Q"][1] > 3 and out["G"][1] == np.exp(3.0)
    lw = baseline["G"]["local"]
    assert lw["L"].min() >= np.exp(-3) and lw["L"].max() <= np.exp(3)
    np.testing.assert_array_equal(lw["L"], np.exp(np.clip(lw["Q"], -3, 3)))
    df = pd.DataFrame(
        {
            "frame": list("abcde"),
            "tile": 0,
            "star_count": 0,
            "FWHM": np.nan,
            "R": np.nan,
            "C": np.nan,
            "E_sigma": [1, 1, 1, 1, 1e6],
            "B_local": 1.0,
        }
    )
    assert local_weights(df, dict.fromkeys("abcde", 1.0))["L"].iloc[-1] == np.exp(3.0)


def test_3_tile_size_monotone_in_fwhm():
    for w, h in [(4096, 2160), (1920, 1080), (300, 200), (64, 40)]:
        sizes = [TileGrid.from_fwhm(f, w, h).size for f in np.linspace(0.05, 60, 400)]
        assert all(b >= a for a, b in zip(sizes, sizes[1:], strict=False))


def test_4_overlap_integer_bounded_deterministic():
    rng = np.random.default_rng(0)
    for _ in range(200):
        f, o = rng.uniform(0.5, 10), rng.uniform(-1, 2)
        w, h = rng.integers(20, 3000, 2)
        g = TileGrid.from_fwhm(f, int(w), int(h), overlap=o)
        assert 0.0 <= g.overlap_fraction <= 0.5
        assert isinstance(g.overlap, int) and isinstance(g.stride, int) and g.stride > 0
        assert g.overlap == int(np.floor(g.overlap_fraction * g.size)) or g.overlap == 0
        assert g == TileGrid.from_fwhm(f, int(w), int(h), overlap=o)


def test_5_zero_weight_tile_falls_back_without_nan(channels, baseline):
    frames, _ = channels["G"]
    b = baseline["G"]
    w = b["weights"].copy()
    w[:, 0] = 0.0  # D_0 = 0 < eps
    w[:, 1] = 1e-9  # D_1 < eps too
    bg = b["global_"]["B"].to_numpy()
    r = reconstruct_band(
        array_reader(frames), N, 0, S, b["grid"], w, bg, options=BandOptions(rejection=False)
    )
    assert r.fallback[0] and r.fallback[1] and not r.fallback[2:].any()
    assert np.isfinite(r.recon).all() and np.isfinite(r.weight).all()
    y0, y1, x0, x1 = b["grid"].tiles[0]
    plain = np.mean(frames / bg[:, None, None], axis=0) * np.median(bg)
    # Pixels covered only by tile 0 are the unweighted mean.
    only0 = (slice(0, b["grid"].ys[1]), slice(0, b["grid"].xs[1]))
    np.testing.assert_allclose(r.recon[only0], plain[only0], rtol=1e-5)


def test_6_no_channel_coupling(channels, baseline):
    frames, xy = channels["R"]
    changed = frames.copy()
    changed[::2] *= 1.7
    changed[5, 10:30, 10:30] += 500
    new_r = run_channel(changed, xy)
    assert not np.array_equal(new_r["result"].stack, baseline["R"]["result"].stack)
    for c in ("G", "B"):
        again = run_channel(*channels[c])
        for key in ("stack", "recon", "weight", "classical", "synthetic"):
            np.testing.assert_array_equal(
                getattr(again["result"], key), getattr(baseline[c]["result"], key)
            )
        pd.testing.assert_frame_equal(again["local"], baseline[c]["local"])


def test_7_no_frame_selection(channels, baseline):
    frames, _ = channels["G"]
    b = baseline["G"]
    assert (b["weights"] > 0).all()  # every frame weighs in every tile
    bg = b["global_"]["B"].to_numpy()
    worst = int(np.argmin(b["global_"]["G"]))
    for f in {0, worst, N - 1}:
        bumped = frames.copy()
        bumped[f, 60:70, 60:70] += 3.0
        options = BandOptions(rejection=False)  # outlier rejection is per pixel, not per frame
        r = reconstruct_band(array_reader(bumped), N, 0, S, b["grid"], b["weights"], bg, options)
        base = reconstruct_band(array_reader(frames), N, 0, S, b["grid"], b["weights"], bg, options)
        assert (r.recon[60:70, 60:70] > base.recon[60:70, 60:70]).all()


def test_8_bit_identical_rerun(channels, baseline):
    numba.set_num_threads(1)
    try:
        again = run_channel(*channels["B"])
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    ref = baseline["B"]
    for key in ("stack", "recon", "weight", "coverage", "kept", "classical", "synthetic"):
        a, b = getattr(again["result"], key), getattr(ref["result"], key)
        assert a.tobytes() == b.tobytes(), key
    pd.testing.assert_frame_equal(again["global_"], ref["global_"], check_exact=True)
    assert again["grid"] == ref["grid"]


def test_11_linearity(channels, baseline):
    frames, xy = channels["G"]
    base = baseline["G"]["result"]
    for a in (0.25, 3.0):
        scaled = run_channel(frames * np.float32(a), xy)["result"]
        for key in ("stack", "recon", "classical"):
            np.testing.assert_allclose(getattr(scaled, key), a * getattr(base, key), rtol=2e-5)
    one = frames[0]
    same = np.repeat(one[None], N, axis=0)
    r = run_channel(same, xy)["result"]
    np.testing.assert_allclose(r.recon, one, rtol=1e-6)
    np.testing.assert_allclose(r.stack, one, rtol=1e-6)
    np.testing.assert_allclose(r.classical, one, rtol=1e-6)
