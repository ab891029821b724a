"""The manifest: which frames exist, sorted, unique stems, checksums, header facts."""

import hashlib

import numpy as np
import pytest
from astropy.io import fits

from tilestack.errors import InputError
from tilestack.io.manifest import (
    COLUMNS,
    build_manifest,
    frame_stem,
    list_frames,
    read_manifest,
    write_manifest,
)


def _fits(path, shape=(10, 12), **hdr):
    data = np.full(shape, 1000, np.uint16)
    fits.PrimaryHDU(data, header=fits.Header(hdr)).writeto(path)
    return path


def test_list_frames_folder_glob_and_filters(tmp_path):
    for name in ["b.fits", "a.FIT", "c.fts", "d.fits.fz", "e.NEF", "f.cr3", "notes.txt", "g.jpg"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".partial.fits").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.fits").write_bytes(b"")
    names = [p.name for p in list_frames(tmp_path)]
    assert names == ["a.FIT", "b.fits", "c.fts", "d.fits.fz", "e.NEF", "f.cr3"]
    assert [p.name for p in list_frames(str(tmp_path / "*.fits"))] == ["b.fits"]
    assert [p.name for p in list_frames(str(tmp_path / "**" / "*.fits"))] == ["b.fits", "z.fits"]
    assert [p.name for p in list_frames(tmp_path / "b.fits")] == ["b.fits"]


def test_list_frames_empty(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError) as e:
        list_frames(tmp_path)
    assert str(e.value) == f"no light frames found in {tmp_path}"
    with pytest.raises(InputError, match="^no light frames found in .*missing/\\*.fits$"):
        list_frames(str(tmp_path / "missing" / "*.fits"))


def test_frame_stem():
    assert frame_stem("x/light_0001.fits") == "light_0001"
    assert frame_stem("light_0001.fits.fz") == "light_0001"
    assert frame_stem("IMG_1.CR2") == "IMG_1"
    assert frame_stem("m31.v2.fit") == "m31.v2"
    assert frame_stem("a.fz") == "a"


def test_build_manifest_columns_and_values(tmp_path):
    _fits(tmp_path / "l2.fits", EXPTIME=10.0, BAYERPAT="RGGB")
    hdr1 = fits.Header({"EXPTIME": 10.0, "DATE-OBS": "2024-01-01T20:00:00", "BAYERPAT": "RGGB"})
    fits.PrimaryHDU(np.zeros((10, 12), np.uint16), header=hdr1).writeto(tmp_path / "l1.fits")
    df = build_manifest(list_frames(tmp_path))
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df["frame"].tolist() == ["l1.fits", "l2.fits"]
    assert df["stem"].tolist() == ["l1", "l2"]
    assert df["width"].tolist() == [12, 12] and df["height"].tolist() == [10, 10]
    assert df["exposure"].tolist() == [10.0, 10.0]
    assert df["bayer"].tolist() == ["RGGB", "RGGB"]
    assert df["time"].tolist() == ["2024-01-01T20:00:00.000", None]
    assert df["dtype"].tolist() == ["uint16", "uint16"]
    assert df["checksum"][0] == hashlib.sha256((tmp_path / "l1.fits").read_bytes()).hexdigest()
    assert df["path"][0] == str(tmp_path / "l1.fits")


def test_manifest_roundtrip_mono(tmp_path):
    _fits(tmp_path / "a.fits", EXPTIME=5.0)
    _fits(tmp_path / "b.fits")
    df = build_manifest(list_frames(tmp_path))
    write_manifest(tmp_path / "scan" / "frames.csv", df)
    back = read_manifest(tmp_path / "scan" / "frames.csv")
    assert back["bayer"].tolist() == [None, None]
    assert back["time"].tolist() == [None, None]
    assert back["stem"].tolist() == ["a", "b"]
    assert np.isnan(back["exposure"][1]) and back["exposure"][0] == 5.0
    assert back["checksum"].tolist() == df["checksum"].tolist()


def test_duplicate_stems(tmp_path):
    _fits(tmp_path / "a.fits")
    _fits(tmp_path / "a.fit")
    with pytest.raises(InputError) as e:
        build_manifest(list_frames(tmp_path))
    assert (
        str(e.value)
        == "duplicate frame names: a.fit and a.fits both map to 'a'; rename one of them"
    )


def test_unreadable_files_reported_together(tmp_path):
    _fits(tmp_path / "a.fits", shape=(100, 120))
    raw = (tmp_path / "a.fits").read_bytes()
    (tmp_path / "b.fits").write_bytes(raw[:10000])
    (tmp_path / "c.fits").write_bytes(raw[:12000])
    with pytest.raises(InputError) as e:
        build_manifest(list_frames(tmp_path))
    assert str(e.value) == (
        "2 of 3 input files are unreadable: "
        "unreadable FITS file: b.fits: truncated (10000 of 26880 bytes present); "
        "unreadable FITS file: c.fits: truncated (12000 of 26880 bytes present)"
    )
