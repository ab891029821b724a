import shutil

import pytest

from tilestack.run_info import page, uses_siril, versions

VALIDATION = {"verdict": "success", "figures": {}, "mode": "reduced", "n_frames": 3}


def config(registration="tilestack", stacking="tilestack"):
    return {"registration": {"engine": registration}, "stacking": {"engine": stacking}}


def test_siril_takes_part_only_through_an_engine_setting():
    assert not uses_siril(config())
    assert not uses_siril({})
    assert uses_siril(config(registration="siril"))
    assert uses_siril(config(stacking="siril"))


def test_run_info_names_siril_cli_only_when_the_run_used_it():
    assert "siril-cli" not in page(VALIDATION, config())
    assert all(name != "siril-cli" for name, _ in versions(with_siril=False))
    if shutil.which("siril-cli") is None:
        pytest.skip("siril-cli is not installed")
    assert "siril-cli" in page(VALIDATION, config(registration="siril"))
