"""The Siril engine without Siril: log parsing, y-up conversion and the missing-binary error."""

import numpy as np
import pytest

from tilestack.errors import TilestackError
from tilestack.registration import siril
from tilestack.registration.siril import (
    parse_registration_log,
    register_with_siril,
    siril_available,
    siril_to_ours,
)


def _rot(deg, cx, cy, dx=0.0, dy=0.0):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array(
        [[c, -s, cx + dx - c * cx + s * cy], [s, c, cy + dy - s * cx - c * cy], [0, 0, 1]]
    )


def test_y_up_conversion_round_trip():
    h = 400
    ours = _rot(30.0, 100, 50, 3, -4)
    f = np.array([[1.0, 0, 0], [0, -1, h - 1], [0, 0, 1]])
    siril_matrix = f @ ours @ f
    assert np.allclose(siril_to_ours(siril_matrix, h), ours)
    # a point and its image keep their correspondence through the flip
    p = np.array([10.0, 20.0, 1.0])
    q = ours @ p
    ps = np.array([p[0], h - 1 - p[1], 1.0])
    qs = siril_matrix @ ps
    assert np.allclose([qs[0], h - 1 - qs[1]], q[:2])


def test_parse_log_blocks():
    log = """log: Reading FITS: file f_00001.fit, 1 layer(s), 480x400 pixels
log: Reference Image:
log: Found 40 stars in reference, channel #0
log: Found 41 stars in image 2, channel #0
Transformation Matrix:
   +1.00000    +0.00000    +3.40000
   +0.00000    +1.00000    +2.70000
   +0.00000    +0.00000    +1.00000
log: Matching stars in image 2: done
log: Pair matches after fitting: 39
log: Found 0 stars in image 3, channel #0
log: Not enough stars. Image 3 skipped
"""
    frames, ref, height = parse_registration_log(log)
    assert ref == 1 and height == 400
    assert frames[2]["n_inliers"] == 39
    assert np.allclose(frames[2]["H"][:2, 2], [3.4, 2.7])
    assert "skipped" in frames[3]["reason"] and "H" not in frames[3]


def test_missing_siril_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(siril.shutil, "which", lambda name: None)
    assert not siril_available()
    with pytest.raises(TilestackError, match="siril-cli not found"):
        register_with_siril([tmp_path / "a.fits"], tmp_path / "w")
