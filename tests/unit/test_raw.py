"""Camera RAW through rawpy: DNG files written here (pidng) are read back as the raw mosaic."""

from pathlib import Path

import numpy as np
import pytest

pidng_core = pytest.importorskip("pidng.core")
pytest.importorskip("rawpy")

from pidng.defs import (  # noqa: E402
    CalibrationIlluminant,
    CFAPattern,
    DNGVersion,
    Orientation,
    PhotometricInterpretation,
)

from tilestack import cfa  # noqa: E402
from tilestack.errors import InputError  # noqa: E402
from tilestack.io.frames import read_frame, read_frame_info, read_rows  # noqa: E402
from tilestack.io.manifest import build_manifest, list_frames  # noqa: E402


def write_dng(path, mosaic: np.ndarray, pattern: str, exposure: float | None = 30.0):
    """Minimal uncompressed 16-bit Bayer DNG."""
    Tag = pidng_core.Tag
    h, w = mosaic.shape
    t = pidng_core.DNGTags()
    t.set(Tag.ImageWidth, w)
    t.set(Tag.ImageLength, h)
    t.set(Tag.TileWidth, w)
    t.set(Tag.TileLength, h)
    t.set(Tag.Orientation, Orientation.Horizontal)
    t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    t.set(Tag.SamplesPerPixel, 1)
    t.set(Tag.BitsPerSample, 16)
    t.set(Tag.CFARepeatPatternDim, [2, 2])
    t.set(Tag.CFAPattern, getattr(CFAPattern, pattern))
    t.set(Tag.BlackLevel, 0)
    t.set(Tag.WhiteLevel, 65535)
    if exposure is not None:
        t.set(Tag.ExposureTime, [[int(round(exposure * 1000)), 1000]])
    t.set(Tag.Make, "Test")
    t.set(Tag.Model, "Sensor")
    t.set(
        Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]
    )
    t.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
    t.set(Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]])
    t.set(Tag.DNGVersion, DNGVersion.V1_4)
    t.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    conv = pidng_core.RAW2DNG()
    conv.options(t, path="", compress=False)
    written = conv.convert(mosaic.astype(np.uint16), filename=str(path.with_suffix("")))
    return Path(written).rename(path)


def _mosaic(pattern, h=32, w=48, seed=0):
    """Colour-coded mosaic: R ~ 1000, G ~ 2000, B ~ 3000 plus a per-pixel ramp."""
    base = {"R": 1000, "G": 2000, "B": 3000}
    colours = cfa.color_map(pattern, (h, w))
    ramp = np.random.default_rng(seed).integers(0, 100, (h, w))
    return np.vectorize(base.get)(colours) + ramp


@pytest.mark.parametrize("pattern", cfa.PATTERNS)
def test_dng_roundtrip_keeps_raw_cfa(tmp_path, pattern):
    mosaic = _mosaic(pattern)
    p = write_dng(tmp_path / f"img_{pattern}.dng", mosaic, pattern, exposure=30.0)
    f = read_frame(p)
    assert f.bayer == pattern
    assert f.exposure == pytest.approx(30.0)
    assert f.data.dtype == np.float32
    np.testing.assert_array_equal(f.data, mosaic)  # undemosaiced, unscaled counts
    assert f.header["BAYERPAT"] == pattern
    info = read_frame_info(p)
    assert (info.width, info.height, info.bayer, info.format) == (48, 32, pattern, "raw")
    np.testing.assert_array_equal(read_rows(p, 4, 9), mosaic[4:9])


def test_dng_in_manifest_and_exposure(tmp_path):
    write_dng(tmp_path / "a.dng", _mosaic("RGGB"), "RGGB", exposure=0.5)
    write_dng(tmp_path / "B.DNG", _mosaic("RGGB", seed=1), "RGGB", exposure=120.0)
    paths = list_frames(tmp_path)
    assert [p.name for p in paths] == ["B.DNG", "a.dng"]
    df = build_manifest(paths)
    assert df["exposure"].tolist() == pytest.approx([120.0, 0.5])
    assert df["bayer"].tolist() == ["RGGB", "RGGB"]
    assert df["stem"].tolist() == ["B", "a"]


def test_unreadable_raw(tmp_path):
    (tmp_path / "bad.nef").write_bytes(b"\0" * 4096)
    with pytest.raises(InputError, match=r"^unreadable RAW file: bad\.nef: "):
        read_frame(tmp_path / "bad.nef")
    with pytest.raises(InputError) as e:
        read_frame_info(tmp_path / "bad.nef")
    assert "\n" not in str(e.value)


def test_raw_calibration_frames_stream_in_bands(tmp_path):
    from tilestack.calibration import build_master

    rng = np.random.default_rng(5)
    paths = [
        write_dng(tmp_path / f"bias_{i}.dng", 500 + rng.integers(0, 20, (32, 48)), "GRBG", 0.001)
        for i in range(4)
    ]
    whole = build_master(paths, "bias")
    banded = build_master(paths, "bias", memory_mb=0.02)
    np.testing.assert_array_equal(whole.data, banded.data)
    assert whole.bayer == "GRBG" and 500 <= whole.data.mean() <= 520
