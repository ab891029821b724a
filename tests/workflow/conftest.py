"""Every test in this folder runs Snakemake, the whole workflow, SLURM or Siril: all are slow.

``pytest -m "not slow"`` leaves them out (the quick run); a plain ``pytest`` runs them too.
"""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)
