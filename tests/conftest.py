"""Fixtures shared by the unit and the workflow tests."""

from __future__ import annotations

from pathlib import Path

import pytest

N, W, H = 56, 320, 240

_NIGHTS: dict[str, Path] = {}


def night(base: Path, bayer: str | None) -> Path:
    """The 56-frame simulated night (made once per session); returns its lights folder."""
    key = bayer or "mono"
    if key not in _NIGHTS:
        from tilestack.simulate import simulate_night

        out = base / f"night_{key}"
        simulate_night(out, n_frames=N, width=W, height=H, seed=1, bayer=bayer)
        _NIGHTS[key] = out / "lights"
    return _NIGHTS[key]


@pytest.fixture(scope="session")
def nights(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_nights")
    return lambda bayer=None: night(base, bayer)
