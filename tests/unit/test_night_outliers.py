"""Night-level outliers of registration: a transform far outside the night's own distribution
(scale, rotation against the night's drift) is left out; the night's own drift, a meridian
flip, a fast field rotation and mirrored frames are not outliers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tilestack.io.transforms_table import matrix_row
from tilestack.registration.quality import night_outliers
from tilestack.simulation.night import load_night
from tilestack.workflow.weights import drop_night_outliers

W, H = 320, 240


def about_centre(deg: float, scale: float = 1.0, flip: bool = False) -> np.ndarray:
    """Rotation (and scale, mirror) about the frame centre, 3x3."""
    c, s = math.cos(math.radians(deg)) * scale, math.sin(math.radians(deg)) * scale
    lin = np.array([[c, -s], [s, c]]) @ (np.diag([-1.0, 1.0]) if flip else np.eye(2))
    ctr = np.array([(W - 1) / 2, (H - 1) / 2])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = ctr - lin @ ctr
    return m


def night_table(nights, extra=None) -> pd.DataFrame:
    """The small night's true frame -> reference transforms as a transforms table;
    ``extra(i)`` (a 3x3 or None) is applied after frame i's true transform."""
    night = load_night(nights(None).parent)
    rows = []
    for i, name in enumerate(night.frames["frame"]):
        m = night.relative_transform(i, 0)
        if extra is not None and extra(i) is not None:
            m = extra(i) @ m
        rows.append({"frame": name, "status": "ok", "is_reference": i == 0, **matrix_row(m)})
    return pd.DataFrame(rows)


def test_a_normal_night_has_no_outliers(nights):
    assert night_outliers(night_table(nights)) == {}


def test_fast_field_rotation_meridian_flip_and_mirrored_frames_are_the_night(nights):
    n = 56
    assert night_outliers(night_table(nights, lambda i: about_centre(30.0 * i / (n - 1)))) == {}
    assert night_outliers(night_table(nights, lambda i: about_centre(180.0 * (i >= 28)))) == {}
    mirrored = night_table(nights, lambda i: about_centre(0.0, flip=True) if i in (7, 40) else None)
    assert night_outliers(mirrored) == {}
    all_mirrored = night_table(nights, lambda i: about_centre(0.0, flip=True) if i else None)
    assert night_outliers(all_mirrored) == {}


def foreign_second_half(nights) -> pd.DataFrame:
    """The second half is another field: unregistered but for three wrong fallbacks (the
    transforms of the report: scale 0.679 at 15 deg, 288 deg, and one at the night's drift)."""
    wrong = {30: about_centre(15.0, 0.679), 41: about_centre(288.0)}
    t = night_table(nights, lambda i: wrong.get(i))
    t.loc[28:, "status"] = "unregistered"
    t.loc[[30, 41], "status"] = "fallback"
    t["reason"] = ""
    return t


def test_foreign_fallbacks_far_off_the_night_are_outliers(nights):
    out = night_outliers(foreign_second_half(nights))
    assert set(out) == {"light_0030.fits", "light_0041.fits"}
    assert "scale 0.679" in out["light_0030.fits"]
    assert "off its neighbours'" in out["light_0041.fits"]


def test_outliers_become_unregistered_and_leave_the_metrics(nights):
    t = foreign_second_half(nights)
    registered = t.loc[t["status"] != "unregistered", "frame"]
    raw_g = pd.DataFrame({"frame": registered, "channel": "L", "B": 1.0})
    raw_t = pd.DataFrame({"frame": np.repeat(registered.to_numpy(), 4), "tile": 0})
    t2, g2, l2, out = drop_night_outliers(t, raw_g, raw_t)
    flagged = t2.set_index("frame").loc[sorted(out)]
    assert (flagged["status"] == "unregistered").all()
    assert flagged["reason"].str.startswith("night outlier: ").all()
    assert not g2["frame"].isin(out).any() and not l2["frame"].isin(out).any()
    assert len(g2) == len(raw_g) - 2 and len(l2) == len(raw_t) - 8
    assert (
        t2.loc[~t2["frame"].isin(out), "status"] == t.loc[~t["frame"].isin(out), "status"]
    ).all()
