import numpy as np
import pandas as pd
import pytest

from tilestack.errors import InputError
from tilestack.io.transforms_table import CONTRACT, merge_batch_tables


def batch(frames, status="ok"):
    df = pd.DataFrame({"frame": frames, "status": status, "method": "triangles"})
    for i in range(3):
        for j in range(3):
            df[f"m{i}{j}"] = float(i == j)
    df["rms_px"] = 0.01
    df["n_inliers"] = 40
    df["reason"] = ""
    df["is_reference"] = False
    return df


def test_merge_sorts_marks_one_reference_and_puts_the_contract_first():
    out = merge_batch_tables(
        [batch(["light_0003.fits", "light_0002.fits"]), batch(["light_0001.fits"])],
        "light_0002.fits",
    )
    assert out["frame"].tolist() == ["light_0001.fits", "light_0002.fits", "light_0003.fits"]
    assert out["is_reference"].tolist() == [False, True, False]
    assert list(out.columns[: len(CONTRACT)]) == CONTRACT and "reason" in out.columns
    np.testing.assert_array_equal(out["m00"], 1.0)


def test_a_missing_or_repeated_reference_is_an_error():
    with pytest.raises(InputError, match="light_0009.fits"):
        merge_batch_tables([batch(["light_0001.fits"])], "light_0009.fits")
    with pytest.raises(InputError):
        merge_batch_tables(
            [batch(["light_0001.fits"]), batch(["light_0001.fits"])], "light_0001.fits"
        )
