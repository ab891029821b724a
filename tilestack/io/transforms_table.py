"""The run's transforms table (the output contract's ``registration/transforms.csv``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from tilestack.errors import InputError

MATRIX_COLUMNS = [f"m{i}{j}" for i in range(3) for j in range(3)]
CONTRACT = ["frame", "status", "method", "is_reference", *MATRIX_COLUMNS, "rms_px", "n_inliers"]


def row_matrix(row: Mapping) -> np.ndarray:
    """The 3×3 frame → reference matrix of one row of the transforms table."""
    return np.array([row[k] for k in MATRIX_COLUMNS], dtype=np.float64).reshape(3, 3)


def matrix_row(matrix) -> dict[str, float]:
    """The ``m00 … m22`` columns of a row for a 3×3 frame → reference matrix (inverse of
    :func:`row_matrix`)."""
    m = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
    return {c: float(v) for c, v in zip(MATRIX_COLUMNS, m.ravel(), strict=True)}


def merge_batch_tables(tables: list[pd.DataFrame], reference_frame: str) -> pd.DataFrame:
    """One row per light, sorted by file name, contract columns first, exactly one reference.

    The batch jobs write their rows independently; the merge marks the reference and checks it
    is there exactly once (a missing or duplicated reference would make every later step wrong).
    """
    df = pd.concat(tables, ignore_index=True)
    df = df.sort_values("frame", kind="stable").reset_index(drop=True)
    df["is_reference"] = df["frame"] == reference_frame
    if int(df["is_reference"].sum()) != 1:
        raise InputError(
            f"transforms: reference frame {reference_frame} is not exactly once in the table"
        )
    extra = [c for c in df.columns if c not in CONTRACT]
    return df[CONTRACT + extra]
