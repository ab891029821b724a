import json

import numpy as np
import pandas as pd

from tilestack.tiles import TileGrid, estimate_fwhm, tile_starts


def cover_count(grid):
    c = np.zeros((grid.height, grid.width), int)
    for y0, y1, x0, x1 in grid.tiles:
        c[y0:y1, x0:x1] += 1
    return c


def test_formula_defaults():
    g = TileGrid.from_fwhm(3.0, 2048, 1536)
    assert (g.size, g.overlap, g.stride) == (96, 24, 72)
    g = TileGrid.from_fwhm(1.0, 2048, 2048)  # 32 < T_min
    assert g.size == 64
    g = TileGrid.from_fwhm(20.0, 1200, 900)  # capped at floor(900 / 6)
    assert g.size == 150


def test_union_covers_exactly_and_last_tile_on_far_edge():
    for w, h, f in [(1000, 700, 2.7), (333, 257, 1.3), (130, 100, 9.0)]:
        g = TileGrid.from_fwhm(f, w, h, min_size=16)
        c = cover_count(g)
        assert c.min() >= 1
        assert g.tiles[-1][1] == h and g.tiles[-1][3] == w
        assert all(0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w for y0, y1, x0, x1 in g.tiles)
    assert tile_starts(100, 40, 30) == [0, 30, 60]
    assert tile_starts(101, 40, 30) == [0, 30, 60, 61]


def test_guards():
    g = TileGrid.from_fwhm(3.0, 12, 30, min_size=64)  # image smaller than the tile
    assert g.size == 12 and g.overlap == 0 and g.n_tiles == 3  # 1 column, 3 rows
    g = TileGrid.from_fwhm(3.0, 40, 50, min_size=64)  # min(W,H)/D below 16: T stays 16
    assert g.size == 16
    assert cover_count(g).min() == 1
    g = TileGrid.from_fwhm(3.0, 2000, 2000, min_size=4)
    assert g.size == 96  # T_min never below 16 (and T0 = 96 anyway)
    g = TileGrid.from_fwhm(0.1, 2000, 2000, min_size=4)
    assert g.size == 16
    assert TileGrid.from_fwhm(float("nan"), 2000, 2000).fwhm == 3.0
    g = TileGrid.from_fwhm(3.0, 2000, 2000, overlap=0.9)
    assert g.overlap_fraction == 0.5 and g.overlap == 48
    g = TileGrid.from_fwhm(3.0, 2000, 2000, overlap=-1)
    assert g.overlap == 0 and g.stride == 96


def test_json_round_trip(tmp_path):
    g = TileGrid.from_fwhm(2.4, 640, 480)
    g.to_json(tmp_path / "grid.json")
    assert TileGrid.from_json(tmp_path / "grid.json") == g
    d = json.loads((tmp_path / "grid.json").read_text())
    assert d["tiles"][0] == [0, g.size, 0, g.size]


def test_scaled_grid_covers_subplane():
    g = TileGrid.from_fwhm(3.0, 1000, 800).scaled(0.5)
    assert (g.width, g.height) == (500, 400) and cover_count(g).min() >= 1


def test_windows_positive_and_flat_at_border():
    g = TileGrid.from_fwhm(3.0, 500, 500)
    ws = g.col_windows()
    assert all((w > 0).all() for w in ws)
    assert (ws[0][: g.size // 2] == 1).all() and (ws[-1][g.size // 2 :] == 1).all()
    assert ws[1][0] < 0.01 and ws[1][g.size // 2] > 0.99


def test_estimate_fwhm_filters_bad_stars():
    good = pd.DataFrame(
        {"fwhm": [3.0, 3.2, 2.8], "snr": [50, 40, 30], "ellipticity": 0.1, "saturated": False}
    )
    bad = pd.DataFrame(
        {
            "fwhm": [9.0, 9.0, 9.0],
            "snr": [5, 50, 50],
            "ellipticity": [0.1, 0.6, 0.1],
            "saturated": [False, False, True],
        }
    )
    assert estimate_fwhm({"a": good, "b": bad}) == 3.0
    assert estimate_fwhm({"a": good}, scale=0.5) == 1.5
    assert estimate_fwhm({"a": bad}) == 3.0  # nothing measurable -> F = 3
    assert estimate_fwhm([]) == 3.0


def test_grid_from_star_tables_halves_fwhm_for_colour_planes():
    import pandas as pd

    from tilestack.tiles import grid_from_star_tables

    rng = np.random.default_rng(2)
    stars = pd.DataFrame(
        {
            "frame": np.repeat(["a.fits", "b.fits", "c.fits"], 40),
            "fwhm": rng.normal(4.0, 0.1, 120),
            "snr": 50.0,
            "ellipticity": 0.05,
            "saturated": False,
        }
    )
    tile = {"size_factor": 32, "min_size": 64, "max_divisor": 6, "overlap": 0.25}
    mono, f_mono, n = grid_from_star_tables(stars, 4000, 3000, bayer=None, tile=tile)
    osc, f_osc, _ = grid_from_star_tables(stars, 2000, 1500, bayer="RGGB", tile=tile)
    assert n == 3 and abs(f_mono - 4.0) < 0.05 and f_osc == f_mono / 2
    assert mono.size == TileGrid.from_fwhm(f_mono, 4000, 3000).size == int(32 * f_mono)
    assert osc.size == int(32 * f_osc)
