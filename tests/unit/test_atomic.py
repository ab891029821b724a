"""Atomic writes: a failure mid-write keeps the earlier file and leaves no partial file."""

import json

import pandas as pd
import pytest

from tilestack.io.atomic import atomic_path, write_json, write_table


def test_failed_write_keeps_previous_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("earlier result")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_json_is_byte_identical_across_runs(tmp_path):
    import numpy as np

    obj = {"b": np.float64(0.1), "a": [np.int64(3), 1.5], "c": np.bool_(True)}
    write_json(tmp_path / "1.json", obj)
    write_json(tmp_path / "2.json", dict(reversed(list(obj.items()))))
    assert (tmp_path / "1.json").read_bytes() == (tmp_path / "2.json").read_bytes()
    assert json.loads((tmp_path / "1.json").read_text()) == {"a": [3, 1.5], "b": 0.1, "c": True}


@pytest.mark.parametrize("name", ["t.csv", "t.parquet"])
def test_tables_round_trip_float64_exactly(tmp_path, name):
    df = pd.DataFrame({"frame": ["a.fits", "b.fits"], "w": [1 / 3, 2.0**-40]})
    write_table(tmp_path / name, df)
    back = (
        pd.read_csv(tmp_path / name) if name.endswith(".csv") else pd.read_parquet(tmp_path / name)
    )
    assert back["w"].tolist() == df["w"].tolist()


def test_stale_partial_from_a_killed_writer_is_removed_and_output_is_readable(tmp_path):
    stale = tmp_path / ".out.txt.abc123.part"
    stale.write_text("left by a SIGKILL")
    with atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("done")
    assert not stale.exists()
    assert (tmp_path / "out.txt").stat().st_mode & 0o044  # group/other can read
