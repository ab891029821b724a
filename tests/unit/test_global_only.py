"""§13 global-only stack: its files and what validation says about it (what the tiles added).

The band kernel's part (the global-only accumulator is the band run with every ``L = 1``) is
tested in tests/unit/test_band_kernel.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from test_validation import render, sky, star_field

from tilestack.assemble import assemble_channel
from tilestack.reconstruction import (
    BandInputs,
    array_reader,
    assemble_bands,
    global_only_image,
    load_band,
    reconstruct_band,
    save_band,
)
from tilestack.run_info import page
from tilestack.run_summary import summary
from tilestack.tiles import TileGrid
from tilestack.validation.measure import compare_global_only, compare_stacks
from tilestack.validation.verdict import tiles_added


def _bands(tmp_path, *, clusters=None, synthetic="global"):
    """A 2-band channel with the frame weights given (the global-only stack is computed)."""
    from tilestack.reconstruction import BandOptions

    rng = np.random.default_rng(4)
    n, h, w = 9, 40, 50
    frames = (200.0 + rng.normal(0, 5, (n, h, w))).astype(np.float32)
    grid = TileGrid.from_fwhm(1.0, w, h, min_size=16, divisor=2)
    G = rng.uniform(0.5, 2.0, n)
    W = G[:, None] * rng.uniform(0.2, 5.0, (n, grid.n_tiles))
    kw = {"G": G}
    if clusters is not None:
        kw["clusters"] = clusters
    inputs = BandInputs(**kw)
    opts = BandOptions(synthetic=synthetic)
    paths = []
    for i, (a, b) in enumerate(((0, 23), (23, h))):
        r = reconstruct_band(
            array_reader(frames), n, a, b, grid, W, np.full(n, 200.0), opts, inputs
        )
        paths.append(tmp_path / f"band_{i}.npz")
        save_band(paths[-1], r)
    return paths, grid, h


def test_band_files_keep_the_global_only_stack_and_assemble_writes_it(tmp_path):
    paths, grid, h = _bands(tmp_path)
    whole = assemble_bands(paths, height=h)
    assert whole["global_only"].shape == whole["stack"].shape
    assert not np.array_equal(whole["global_only"], whole["stack"])
    np.testing.assert_array_equal(global_only_image(paths), whole["global_only"])
    assert assemble_bands(paths, height=h, global_only=False)["global_only"] is None
    assert load_band(paths[0], global_only=False).global_only is None
    out = {k: str(tmp_path / f"{k}.fits") for k in ("stack", "weight", "coverage", "classical")}
    out |= {"flags": str(tmp_path / "tiles.csv"), "global_only": str(tmp_path / "go.fits")}
    assemble_channel(
        paths, out, channel="L", grid=grid, mode="reduced", n_frames=9, channel_height=h, config={}
    )
    data = fits.getdata(out["global_only"])
    np.testing.assert_array_equal(data, whole["global_only"])
    assert fits.getheader(out["global_only"])["PRODUCT"] == "global-only stack"
    np.testing.assert_array_equal(fits.getdata(out["stack"]), whole["stack"])


def test_full_mode_with_global_synthetic_frames_stores_the_stack_once(tmp_path):
    labels = np.arange(9) % 3
    paths, _, h = _bands(tmp_path, clusters=labels)
    with np.load(paths[0]) as z:
        assert "global_only_is_stack" in z.files and "global_only" not in z.files
    whole = assemble_bands(paths, height=h)
    np.testing.assert_array_equal(whole["global_only"], whole["stack"])
    np.testing.assert_array_equal(global_only_image(paths), whole["stack"])
    # tile-weighted synthetic frames: the global-only stack is an image of its own
    paths, _, h = _bands(tmp_path, clusters=labels, synthetic="tile_weighted")
    whole = assemble_bands(paths, height=h)
    assert not np.array_equal(whole["global_only"], whole["stack"])


@pytest.mark.slow  # star fits on whole images: several seconds
def test_final_against_global_only_is_measured_like_against_the_classical_stack():
    shape = (480, 480)
    xy, flux = star_field(60, shape, n=360)
    stars = render(shape, xy, flux, 3.0)
    glo = sky(shape, 61, 2.0, gradient=False) + stars
    # the tiles lowered the noise in the left third of the field only (same stars)
    noise = sky(shape, 62, 2.0, gradient=False)
    left = np.arange(shape[1]) < shape[1] // 3
    final = np.where(left[None, :], 100.0 + 0.7 * (noise - 100.0), noise) + stars
    res = compare_global_only(final, glo, max_stars=80)
    ref = compare_stacks(final, glo, stride=48, max_stars=80)
    for k in ("fwhm_final", "snr_final", "snr_ratio", "n_faint_stars", "n_stars"):
        assert res[k] == ref[k], k
    assert res["fwhm_global_only"] == ref["fwhm_classical"]
    assert res["snr_global_only"] == ref["snr_classical"]
    assert res["fwhm_ratio"] == pytest.approx(1.0, abs=0.02)
    regions = res["regions"]
    assert [(r["row"], r["col"]) for r in regions] == [(i, j) for i in range(3) for j in range(3)]
    assert sum(r["n_faint_stars"] for r in regions) == res["n_faint_stars"]
    assert all(r["n_faint_stars"] >= 3 for r in regions)
    gain = np.array([r["snr_ratio"] for r in regions]).reshape(3, 3)
    assert (gain[:, 0] > 1.15).all()  # 1 / 0.7 in SNR where the noise was lowered
    assert np.abs(gain[:, 1:] - 1.0).max() < 0.1
    doc = tiles_added({"L": res}, "L")
    assert doc["snr_ratio_regions"][1][0] == pytest.approx(gain[1, 0])


def _figures(**kw):
    regions = [
        {"row": i, "col": j, "snr_ratio": 1.0 + 0.01 * (3 * i + j), "n_faint_stars": 4}
        for i in range(3)
        for j in range(3)
    ]
    regions[4]["snr_ratio"] = float("nan")  # too few stars there
    return (
        {"fwhm_ratio": 0.988, "fwhm_ratio_error": 0.004, "snr_ratio": 1.021}
        | kw
        | {"regions": regions}
    )


def test_tiles_added_in_one_line_on_the_run_page_and_at_the_end_of_the_run(tmp_path):
    t = tiles_added({"G": _figures(), "R": _figures(snr_ratio=0.5)}, "G")
    assert t["channel"] == "G" and t["snr_ratio"] == 1.021
    assert t["snr_ratio_regions"][1] == [1.03, None, 1.05]
    line = "tiles added (G, final vs global-only): FWHM -1.2 % (±0.40), faint-star SNR +2.1 %, "
    line += "per region +0.0 % … +8.0 % (8 of 9 regions)"
    assert t["summary"] == line
    doc = {"verdict": "success", "figures": {}, "mode": "reduced", "tiles_added": t}
    assert f"<p>{line}</p>" in page(doc, {})
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "validation.json").write_text(json.dumps(doc))
    lines = summary(tmp_path, ok=True).splitlines()
    assert lines[2] == f"tilestack: {line}"
    none = tiles_added({"L": {"regions": []}}, "L")["summary"]
    assert none.endswith("FWHM not measured, faint-star SNR not measured")


def test_no_tiles_added_line_without_a_global_only_stack(tmp_path):
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "validation.json").write_text(json.dumps({"verdict": "success"}))
    assert "tiles added" not in summary(tmp_path, ok=True)
    assert "tiles added" not in page({"verdict": "success"}, {})
