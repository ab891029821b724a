"""Workflow plumbing: command-line config values, disk errors, results folder claims, paths.

In-process tests of what the Snakefile, ``rules/common.smk`` and the job scripts call at
start and around every write (the real Snakemake runs are in tests/workflow).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- --config values


def test_nested_command_line_values_are_read_as_the_schema_types():
    """``--config 'workflow={frames_per_job: 20}'`` arrives as text ('20'); it is read as the
    schema's integer (and numbers, booleans, number lists alike) before validation."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config, validate

    from tilestack.plan import coerce_config_strings, load_schema

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    given = parse_config(
        [
            "workflow={frames_per_job: 20, threads: 2}",
            "assumptions={allow_emergency_mode: true, exposure_tolerance: 0.1}",
            "tile={structure_weights: [0.6, 0.4]}",
            "registration={reference: 0007}",
        ]
    )
    assert given["workflow"]["frames_per_job"] == "20"  # what Snakemake hands over
    update_config(config, given)
    coerce_config_strings(config, load_schema(ROOT / "config/schema.yaml"))
    validate(config, str(ROOT / "config/schema.yaml"))
    assert config["workflow"]["frames_per_job"] == 20
    assert config["workflow"]["threads"] == 2
    assert config["assumptions"]["allow_emergency_mode"] is True
    assert config["assumptions"]["exposure_tolerance"] == 0.1
    assert config["tile"]["structure_weights"] == [0.6, 0.4]
    assert config["registration"]["reference"] == "0007"  # a string setting stays text


def test_text_that_is_not_a_number_still_gets_one_line():
    from snakemake.cli import parse_config
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import update_config, validate

    from tilestack.plan import coerce_config_strings, load_schema, validation_error_line

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    update_config(config, parse_config(["workflow={frames_per_job: twenty}"]))
    coerce_config_strings(config, load_schema(ROOT / "config/schema.yaml"))
    with pytest.raises(WorkflowError) as err:
        validate(config, str(ROOT / "config/schema.yaml"))
    line = validation_error_line(err.value)
    assert line.startswith("config error: workflow.frames_per_job = 'twenty' must be of type")
    assert "--configfile" in line and "\n" not in line
