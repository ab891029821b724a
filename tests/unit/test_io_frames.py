"""FITS reading (every pixel type, .fz, truncation) and atomic FITS writing."""

import numpy as np
import pytest
from astropy.io import fits

from tilestack.errors import InputError
from tilestack.io.frames import (
    read_frame,
    read_frame_info,
    read_header,
    read_image,
    read_rows,
    write_fits,
)


def _counts(h=20, w=30, top=65535, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, top + 1, (h, w), dtype=np.int64)
    a[0, 0], a[0, 1] = 0, top
    return a


@pytest.mark.parametrize(
    ("dtype", "top"),
    [
        ("uint8", 255),
        ("uint16", 65535),
        ("uint32", 2**24),
        (">i2", 32767),
        ("float32", 1000),
        (">f8", 1000),
    ],
)
def test_read_every_pixel_type(tmp_path, dtype, top):
    truth = _counts(top=top)
    fits.PrimaryHDU(truth.astype(dtype)).writeto(tmp_path / "a.fits")
    f = read_frame(tmp_path / "a.fits")
    assert f.data.dtype == np.float32 and f.data.dtype.byteorder in "=|"
    np.testing.assert_array_equal(f.data, truth.astype(np.float32))


def test_uint16_with_bzero_stays_unsigned(tmp_path):
    truth = _counts()
    fits.PrimaryHDU(truth.astype(np.uint16)).writeto(tmp_path / "u.fits")
    hdr = fits.getheader(tmp_path / "u.fits")
    assert hdr["BITPIX"] == 16 and hdr["BZERO"] == 32768  # int16 on disk
    f = read_frame(tmp_path / "u.fits")
    assert f.data.min() == 0 and f.data.max() == 65535
    assert f.dtype == "uint16" and f.full_scale == 65535
    info = read_frame_info(tmp_path / "u.fits")
    assert (info.width, info.height, info.dtype, info.bitpix) == (30, 20, "uint16", 16)


def test_int16_without_bzero_wrapped_counts_read_unsigned(tmp_path):
    truth = _counts()
    wrapped = truth.astype(np.uint16).view(np.int16)  # a writer that forgot BZERO
    fits.PrimaryHDU(wrapped).writeto(tmp_path / "s.fits")
    f = read_frame(tmp_path / "s.fits")
    assert f.data.min() >= 0
    np.testing.assert_array_equal(f.data, truth.astype(np.float32))
    np.testing.assert_array_equal(read_rows(tmp_path / "s.fits", 3, 9), truth[3:9])


def test_compressed_fz(tmp_path):
    truth = _counts(h=40, w=50)
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(truth.astype(np.uint16))])
    hdul[1].header["EXPTIME"] = 30.0
    hdul[1].header["BAYERPAT"] = "BGGR"
    hdul.writeto(tmp_path / "c.fits.fz")
    f = read_frame(tmp_path / "c.fits.fz")
    np.testing.assert_array_equal(f.data, truth)
    assert f.exposure == 30.0 and f.bayer == "BGGR"
    info = read_frame_info(tmp_path / "c.fits.fz")
    assert (info.width, info.height, info.exposure) == (50, 40, 30.0)
    np.testing.assert_array_equal(read_rows(tmp_path / "c.fits.fz", 5, 17), truth[5:17])


def test_metadata_keywords(tmp_path):
    data = np.zeros((4, 4), np.uint16)
    cases = [
        ({"EXPTIME": 10.0, "DATE-OBS": "2024-03-01T21:00:05.5"}, 10.0, "2024-03-01T21:00:05.500"),
        (
            {"EXPOSURE": 5, "DATE-OBS": "2024-03-01", "TIME-OBS": "21:00:00"},
            5.0,
            "2024-03-01T21:00:00.000",
        ),
        ({"DATE-BEG": "2024-03-01T22:00:00"}, None, "2024-03-01T22:00:00.000"),
        ({"MJD-OBS": 60370.5}, None, "2024-03-01T12:00:00.000"),
        ({"EXPTIME": 0}, None, None),
    ]
    for i, (hdr, exp, time) in enumerate(cases):
        fits.PrimaryHDU(data, header=fits.Header(hdr)).writeto(tmp_path / f"m{i}.fits")
        f = read_frame(tmp_path / f"m{i}.fits")
        assert (f.exposure, f.time) == (exp, time), hdr
        info = read_frame_info(tmp_path / f"m{i}.fits")
        assert (info.exposure, info.time) == (exp, time)


def _truncate(src, dst, keep):
    raw = src.read_bytes()
    dst.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])


def test_truncated_fits_is_one_line_error(tmp_path):
    fits.PrimaryHDU(_counts(h=100, w=120).astype(np.uint16)).writeto(tmp_path / "ok.fits")
    _truncate(tmp_path / "ok.fits", tmp_path / "half.fits", 14400)
    for fn in (read_frame, read_frame_info):
        with pytest.raises(InputError) as e:
            fn(tmp_path / "half.fits")
        assert (
            str(e.value)
            == "unreadable FITS file: half.fits: truncated (14400 of 26880 bytes present)"
        )
    _truncate(tmp_path / "ok.fits", tmp_path / "tiny.fits", 2000)
    with pytest.raises(InputError) as e:
        read_frame_info(tmp_path / "tiny.fits")
    assert str(e.value) == "unreadable FITS file: tiny.fits: truncated or not FITS (2000 bytes)"
    # only the final block padding missing: the data are complete, so it reads
    _truncate(tmp_path / "ok.fits", tmp_path / "nopad.fits", 26880)
    assert read_frame(tmp_path / "nopad.fits").data.shape == (100, 120)


def test_truncated_fz(tmp_path):
    data = np.random.default_rng(0).normal(1000, 50, (200, 200)).astype(np.uint16)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(tmp_path / "c.fz")
    raw = (tmp_path / "c.fz").read_bytes()
    (tmp_path / "t.fz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"^unreadable FITS file: t\.fz: truncated \("):
        read_frame(tmp_path / "t.fz")


def test_not_fits_and_colour_cube(tmp_path):
    (tmp_path / "junk.fits").write_bytes(b"x" * 5000)
    with pytest.raises(InputError, match=r"^unreadable FITS file: junk\.fits: "):
        read_frame(tmp_path / "junk.fits")
    fits.PrimaryHDU(np.zeros((3, 8, 8), np.float32)).writeto(tmp_path / "rgb.fits")
    with pytest.raises(InputError) as e:
        read_frame_info(tmp_path / "rgb.fits")
    assert str(e.value) == (
        "unsupported FITS file: rgb.fits: 3 colour planes (already demosaiced); "
        "tilestack needs the raw single-plane frames"
    )
    fits.PrimaryHDU(np.ones((1, 8, 8), np.float32)).writeto(tmp_path / "cube1.fits")
    assert read_frame(tmp_path / "cube1.fits").data.shape == (8, 8)
    np.testing.assert_array_equal(read_rows(tmp_path / "cube1.fits", 2, 4), np.ones((2, 8)))


def test_read_rows_float32_memmap_and_scaled(tmp_path):
    truth = np.random.default_rng(3).normal(0, 1, (64, 48)).astype(np.float32)
    write_fits(tmp_path / "f.fits", truth)
    np.testing.assert_array_equal(read_rows(tmp_path / "f.fits", 10, 20), truth[10:20])
    np.testing.assert_array_equal(read_rows(tmp_path / "f.fits", 60, 70), truth[60:64])
    u = _counts(h=64, w=48).astype(np.uint16)
    fits.PrimaryHDU(u).writeto(tmp_path / "u.fits")
    rows = read_rows(tmp_path / "u.fits", 0, 7)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, u[:7])


def test_read_rows_does_not_load_the_whole_file(tmp_path, monkeypatch):
    """Rows come from a memory map / section: the full data array is never materialised."""
    truth = np.arange(200 * 50, dtype=np.float32).reshape(200, 50)
    write_fits(tmp_path / "f.fits", truth)

    def boom(self):
        raise AssertionError("full data loaded")

    monkeypatch.setattr(fits.PrimaryHDU, "data", property(boom))
    np.testing.assert_array_equal(read_rows(tmp_path / "f.fits", 100, 103), truth[100:103])


def test_write_fits_atomic_float32_with_valid_hdu(tmp_path):
    data = np.arange(12, dtype=np.float64).reshape(3, 4)
    mask = np.array([[1, 0, 1, 1]] * 3, np.uint8)
    hdr = fits.Header({"BZERO": 32768, "BSCALE": 1, "EXPTIME": 12.5, "BAYERPAT": "RGGB"})
    out = tmp_path / "sub" / "o.fits"
    write_fits(out, data, header=hdr, extra_hdus=[("VALID", mask)])
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.fits"]  # no temp file left
    with fits.open(out) as hl:
        assert hl[0].header["BITPIX"] == -32 and "BZERO" not in hl[0].header
        assert hl["VALID"].header["BITPIX"] == 8
    np.testing.assert_array_equal(read_image(out), data.astype(np.float32))
    v = read_image(out, "VALID", dtype=None)
    assert v.dtype == np.uint8
    np.testing.assert_array_equal(v, mask)
    np.testing.assert_array_equal(read_image(out, 1, dtype=None), mask)
    np.testing.assert_array_equal(read_rows(out, 1, 3, hdu="VALID"), mask[1:3])
    assert read_header(out)["EXPTIME"] == 12.5
    f = read_frame(out)
    assert f.exposure == 12.5 and f.bayer == "RGGB"
    # overwrite in place
    write_fits(out, data * 2, header={"EXPTIME": (3.0, "s")})
    assert read_frame(out).exposure == 3.0


def test_write_fits_failure_leaves_old_file_intact(tmp_path, monkeypatch):
    out = tmp_path / "x.fits"
    write_fits(out, np.ones((2, 2)))
    before = out.read_bytes()

    def half_write(self, name, **kwargs):
        with open(name, "wb") as fh:
            fh.write(b"SIMPLE  =")
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_fits(out, np.zeros((2, 2)))
    assert [p.name for p in tmp_path.iterdir()] == ["x.fits"]
    assert out.read_bytes() == before


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="^missing input file: nope.fits$"):
        read_frame(tmp_path / "nope.fits")


@pytest.mark.parametrize("kind", ["uint16", "int16", "extension", "blank"])
def test_plain_16bit_reader_equals_astropy(tmp_path, monkeypatch, kind):
    """The one-pass decoder of ordinary 16-bit lights gives astropy's counts exactly."""
    from tilestack.io import frames

    a = _counts(37, 53, seed=4)
    if kind == "uint16":
        fits.PrimaryHDU(a.astype(np.uint16)).writeto(tmp_path / "a.fits")  # BZERO 32768
    elif kind == "int16":
        fits.PrimaryHDU(a.astype(np.uint16).view(np.int16)).writeto(tmp_path / "a.fits")
    elif kind == "extension":
        hdus = [fits.PrimaryHDU(), fits.ImageHDU(a.astype(np.uint16), name="SCI")]
        fits.HDUList(hdus).writeto(tmp_path / "a.fits")
    else:
        hdu = fits.PrimaryHDU(a.astype(np.uint16).view(np.int16))
        hdu.header["BLANK"] = -32768
        hdu.writeto(tmp_path / "a.fits")
    used = []
    plain = frames._read_plain_16bit
    monkeypatch.setattr(
        frames, "_read_plain_16bit", lambda *x: used.append(plain(*x) is not None) or plain(*x)
    )
    fast = read_frame(tmp_path / "a.fits").data
    assert used == [kind != "blank"]
    monkeypatch.setattr(frames, "_read_plain_16bit", lambda *x: None)
    slow = read_frame(tmp_path / "a.fits").data
    assert fast.dtype == slow.dtype == np.float32
    assert np.array_equal(fast, slow, equal_nan=True)
