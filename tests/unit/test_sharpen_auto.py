"""§6 ``weights.sharpen: auto``: the predicted faint-star SNR of a weighted stack, and the choice
of the largest sharpen whose prediction holds the equal-weight stack's SNR."""

import numpy as np
import pandas as pd
import pytest

from tilestack.metrics.snr_weights import choose_sharpen, predicted_stack


def test_predicted_stack_formula():
    sigma = np.array([1.0, 2.0])
    f = np.array([2.0, 4.0])
    snr, fwhm = predicted_stack(sigma, f, np.array([1.0, 1.0]))
    # noise sqrt(1 + 4)/2; mixture ∫PSF² ∝ ¼(1/8 + 2/20 + 1/32), F_eff = sqrt(0.5/that)
    f_eff = np.sqrt(0.5 / (0.25 * (1 / 8 + 2 / 20 + 1 / 32)))
    assert fwhm == pytest.approx(f_eff)
    assert 2.0 < fwhm < np.sqrt(10.0)  # a mixture is peakier than its second moment says
    assert snr == pytest.approx(1.0 / (np.sqrt(5.0) / 2.0 * f_eff))
    # identical PSFs: the FWHM whatever the weights; the SNR best with equal weights
    same = predicted_stack(np.ones(5), np.full(5, 3.0), np.array([1, 2, 3, 4, 5.0]))
    assert same[1] == pytest.approx(3.0)
    equal = predicted_stack(np.ones(5), np.full(5, 3.0), np.ones(5))
    assert same[0] == pytest.approx(equal[0] * 15.0 / np.sqrt(55.0) / np.sqrt(5.0))
    # inverse-variance weights beat equal weights on frames of unequal noise
    assert (
        predicted_stack(sigma, np.full(2, 3.0), 1.0 / sigma**2)[0]
        > predicted_stack(sigma, np.full(2, 3.0), np.ones(2))[0]
    )


def night(fwhm, sigma=None, seed=0):
    rng = np.random.default_rng(seed)
    n = len(fwhm)
    return pd.DataFrame(
        {
            "frame": [f"f{i:02d}" for i in range(n)],
            "s": np.ones(n),
            "B": np.full(n, 100.0),
            "sigma": np.full(n, 0.1),
            "E": np.ones(n),
            "F": np.asarray(fwhm, float),
            "sigma_raw": np.asarray(sigma if sigma is not None else 10 + rng.normal(0, 0.1, n)),
        }
    )


def test_auto_sharpens_a_variable_night_and_not_a_calm_one():
    rng = np.random.default_rng(1)
    variable = night(rng.uniform(2.0, 5.0, 60))
    sharp, table = choose_sharpen(variable, auto_snr=1.0)
    row = table.set_index("sharpen").loc[sharp]
    # seeing from 2 to 5 px at equal noise: the SNR-optimal weights are already 12 % sharper
    # than equal weights (the true-seeing oracles of the variable night: -11 to -12 %)
    assert row["snr_ratio"] >= 1.0 and row["fwhm_ratio"] < 0.9
    # the next value on the grid would cost SNR against equal weights
    bigger = table[table["sharpen"] > sharp]
    assert (bigger["snr_ratio"] < 1.0).all()
    # a looser demand buys more sharpness
    looser, _ = choose_sharpen(variable, auto_snr=0.95)
    assert looser > sharp
    assert table.set_index("sharpen").loc[looser, "snr_ratio"] >= 0.95
    # predicted FWHM falls as sharpen grows
    assert np.all(np.diff(table["fwhm_ratio"].to_numpy()) <= 1e-12)


def test_auto_on_equal_frames_changes_nothing_it_predicts():
    calm = night(np.full(30, 3.0), sigma=np.full(30, 10.0))
    sharp, table = choose_sharpen(calm)
    assert table["snr_ratio"].to_numpy() == pytest.approx(1.0)
    assert table["fwhm_ratio"].to_numpy() == pytest.approx(1.0)
    assert sharp == table["sharpen"].max()


ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def validated(weights: dict) -> dict:
    """The default config with ``weights`` replaced, read as the Snakefile reads it."""
    import yaml
    from snakemake.utils import validate

    from tilestack.plan import coerce_config_strings, load_schema

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["weights"].update(weights)
    coerce_config_strings(config, load_schema(ROOT / "config/schema.yaml"))
    validate(config, str(ROOT / "config/schema.yaml"))
    return config


@pytest.mark.parametrize(
    ("given", "expected"), [({"sharpen": "auto"}, "auto"), ({"sharpen": "1.5"}, 1.5)]
)
def test_sharpen_auto_or_a_number_passes_the_config_check(given, expected):
    """``--config 'weights={sharpen: 1.5}'`` hands over text: it is read as the number."""
    assert validated(given)["weights"]["sharpen"] == expected


def test_sharpen_other_words_are_refused():
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError):
        validated({"sharpen": "sharp"})


def test_weights_local_false_gives_every_tile_its_frames_weight():
    from tilestack.workflow.weights import global_weights_only

    g = pd.DataFrame({"frame": ["a", "b"], "G": [2.0, 0.5]})
    t = pd.DataFrame({"frame": ["a", "a", "b"], "tile": [0, 1, 0], "L": [0.3, 3.0, 1.7]})
    t["Q"] = np.log(t["L"])
    t["W"] = t["L"] * t["frame"].map({"a": 2.0, "b": 0.5})
    out = global_weights_only(t, g)
    assert out["W"].tolist() == [2.0, 2.0, 0.5]
    assert (out["L"] == 1.0).all() and (out["Q"] == 0.0).all()
    assert validated({"local": False})["weights"]["local"] is False
