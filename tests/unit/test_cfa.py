"""Bayer geometry: header conventions -> numpy order, colour planes and their inverse."""

import itertools

import numpy as np
import pytest
from astropy.io import fits

from tilestack import cfa
from tilestack.io.frames import header_bayer, read_frame


def _stored_cell(pattern, xoff, yoff, roworder, height, width=6):
    """Colour of each stored pixel, built from the definition (writer's top-down frame)."""
    top_down = np.array(
        [
            [pattern[((y + yoff) % 2) * 2 + (x + xoff) % 2] for x in range(width)]
            for y in range(height)
        ]
    )
    stored = top_down[::-1] if roworder == "BOTTOM-UP" else top_down
    return "".join(stored[:2, :2].ravel())


COMBOS = list(itertools.product(cfa.PATTERNS, (0, 1), (0, 1), ("TOP-DOWN", "BOTTOM-UP"), (8, 7)))


@pytest.mark.parametrize(("pattern", "xoff", "yoff", "roworder", "height"), COMBOS)
def test_normalize_pattern_every_combination(pattern, xoff, yoff, roworder, height):
    expected = _stored_cell(pattern, xoff, yoff, roworder, height)
    assert cfa.normalize_pattern(pattern, xoff, yoff, roworder, height=height) == expected
    hdr = fits.Header(
        {"BAYERPAT": pattern, "XBAYROFF": xoff, "YBAYROFF": yoff, "ROWORDER": roworder}
    )
    assert header_bayer(hdr, height) == expected


def test_named_examples():
    assert cfa.normalize_pattern("RGGB", roworder="BOTTOM-UP", height=1080) == "GBRG"
    assert cfa.normalize_pattern("RGGB", roworder="BOTTOM-UP", height=1081) == "RGGB"
    assert cfa.normalize_pattern("RGGB", xoff=1) == "GRBG"
    assert cfa.normalize_pattern("RGGB", yoff=1) == "GBRG"
    assert cfa.normalize_pattern("rggb", xoff=1, yoff=1) == "BGGR"
    assert cfa.normalize_pattern(None) is None
    assert cfa.normalize_pattern("  ") is None
    with pytest.raises(ValueError, match="height"):
        cfa.normalize_pattern("RGGB", roworder="BOTTOM-UP")
    with pytest.raises(ValueError, match="unsupported Bayer pattern"):
        cfa.normalize_pattern("RGBG")


def test_header_aliases_and_mono():
    assert header_bayer(fits.Header({"COLORTYP": "GRBG"}), 10) == "GRBG"
    assert header_bayer(fits.Header({"CFA-PAT": "BGGR", "XBAYROFF": 1}), 10) == "GBRG"
    assert header_bayer(fits.Header({"COLORTYP": "MONO"}), 10) is None
    assert header_bayer(fits.Header({"BAYERPAT": "NONE"}), 10) is None
    assert header_bayer(fits.Header({}), 10) is None


@pytest.mark.parametrize("roworder", ["TOP-DOWN", "BOTTOM-UP"])
def test_fits_file_bayer_matches_pixels(tmp_path, roworder):
    """The pattern read back names the colour that is really stored on each pixel."""
    h, w = 6, 8
    code = {"R": 100, "G": 200, "B": 300}
    top_down = np.array([[code["RGGB"[(y % 2) * 2 + x % 2]] for x in range(w)] for y in range(h)])
    stored = top_down[::-1] if roworder == "BOTTOM-UP" else top_down
    hdr = fits.Header({"BAYERPAT": "RGGB", "ROWORDER": roworder})
    fits.PrimaryHDU(stored.astype(np.uint16), header=hdr).writeto(tmp_path / "f.fits")
    frame = read_frame(tmp_path / "f.fits")
    for letter, cells in cfa.phase_offsets(frame.bayer).items():
        for dy, dx in cells:
            assert np.all(cfa.subplane(frame.data, dy, dx) == code[letter])


def test_phase_offsets_and_channels():
    assert cfa.phase_offsets("RGGB") == {"R": [(0, 0)], "G": [(0, 1), (1, 0)], "B": [(1, 1)]}
    assert cfa.phase_offsets("GBRG") == {"R": [(1, 0)], "G": [(0, 0), (1, 1)], "B": [(0, 1)]}
    assert cfa.channels_for(None) == ["L"]
    assert cfa.channels_for("BGGR") == ["R", "G", "B"]
    assert cfa.color_map("GRBG", (3, 3)).tolist() == [list("GRG"), list("BGB"), list("GRG")]


def test_subplane_odd_shape():
    m = np.arange(7 * 9).reshape(7, 9)
    for dy, dx in itertools.product((0, 1), (0, 1)):
        sp = cfa.subplane(m, dy, dx)
        assert sp.shape == (3, 4)
        assert sp[1, 2] == m[dy + 2, dx + 4]


@pytest.mark.parametrize("pattern", cfa.PATTERNS)
def test_split_channels_and_interleave(pattern):
    rng = np.random.default_rng(1)
    planes = {k: rng.random((4, 5)).astype(np.float32) for k in ("R", "G1", "G2", "B")}
    mosaic = cfa.interleave(planes, pattern)
    ch = cfa.split_channels(mosaic, pattern)
    np.testing.assert_array_equal(ch["R"][0], planes["R"])
    np.testing.assert_array_equal(ch["B"][0], planes["B"])
    np.testing.assert_allclose(ch["G"][0], (planes["G1"] + planes["G2"]) / 2, rtol=1e-6)
    assert all(v.dtype == np.uint8 and v.all() for _, v in ch.values())
    # the inverse with one green plane reproduces a mosaic whose greens agree
    same = dict(planes, G2=planes["G1"])
    mosaic2 = cfa.interleave(same, pattern)
    back = cfa.interleave({c: cfa.split_channels(mosaic2, pattern)[c][0] for c in "RGB"}, pattern)
    np.testing.assert_array_equal(back, mosaic2)


def test_split_channels_validity_aware():
    pattern = "RGGB"
    m = np.zeros((4, 4), np.float32)
    m[0::2, 1::2] = 10.0  # G1
    m[1::2, 0::2] = 30.0  # G2
    valid = np.ones_like(m, dtype=np.uint8)
    valid[0, 1] = 0  # G1 of cell (0,0) invalid -> G = G2
    valid[2, 3] = 0
    valid[3, 2] = 0  # both greens of cell (1,1) invalid -> NaN, invalid
    m[1, 2] = np.nan  # G2 of cell (0,1) NaN -> G = G1
    g, gv = cfa.split_channels(m, pattern, valid)["G"]
    assert g[0, 0] == 30.0 and gv[0, 0] == 1
    assert g[0, 1] == 10.0 and gv[0, 1] == 1
    assert np.isnan(g[1, 1]) and gv[1, 1] == 0
    assert g[1, 0] == 20.0 and gv[1, 0] == 1
    r, rv = cfa.split_channels(m, pattern, valid)["R"]
    assert rv.all()


def test_split_mono():
    m = np.ones((3, 3))
    m[1, 1] = np.nan
    out = cfa.split_channels(m, None)
    assert list(out) == ["L"]
    assert out["L"][1][1, 1] == 0 and out["L"][1].sum() == 8


@pytest.mark.parametrize("bayer", [None, "RGGB", "GRBG", "GBRG", "BGGR"])
def test_from_channel_xy_inverts_to_channel_xy(bayer):
    from tilestack.cfa import from_channel_xy, to_channel_xy

    xy = np.array([[0.0, 0.0], [10.25, 3.5], [511.0, 383.75]])
    for c in ("R", "G", "B") if bayer else ("L",):
        back = from_channel_xy(to_channel_xy(xy, bayer, c), bayer, c)
        assert np.allclose(back, xy, atol=1e-12)
