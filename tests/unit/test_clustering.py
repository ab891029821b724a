import numpy as np
import pandas as pd

from tilestack.clustering import cluster_frames, n_clusters_for, quantile_clusters, state_vectors
from tilestack.synthetic import cluster_quality_weights


def states(n=60, seed=0, groups=3):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), n // groups)
    centres = rng.normal(0, 10, (groups, 5))
    x = centres[g] + rng.normal(0, 0.1, (len(g), 5))
    df = pd.DataFrame(x, columns=["G", "Q_mean", "Q_var", "B", "sigma"])
    df.insert(0, "frame", [f"f{i:03d}" for i in range(len(g))])
    return df, g


def test_cluster_count_rule():
    assert [n_clusters_for(n) for n in (3, 40, 50, 129, 800)] == [3, 5, 5, 12, 30]


def test_kmeans_recovers_groups_and_is_deterministic():
    df, truth = states()
    a = cluster_frames(df, seed=0, n_clusters=3)
    b = cluster_frames(df, seed=0, n_clusters=3)
    pd.testing.assert_frame_equal(a, b)
    assert (a["method"] == "kmeans").all()
    for k in range(3):  # each true group maps to one cluster
        assert a["cluster"][truth == k].nunique() == 1
    assert sorted(a["cluster"].unique()) == [0, 1, 2]
    # Cluster 0 holds the frames with the highest G.
    assert a.groupby("cluster")["G"].median().is_monotonic_decreasing


def test_default_k_and_quantile_fallback_on_degenerate_states():
    df, _ = states(n=120)
    assert cluster_frames(df)["cluster"].nunique() == 12
    const = df.assign(Q_mean=1.0, Q_var=0.0, B=1.0, sigma=1.0, G=1.0)
    out = cluster_frames(const, n_clusters=5)
    assert (out["method"] == "quantile").all()
    assert np.bincount(out["cluster"]).tolist() == [24] * 5
    two_points = df.assign(G=np.r_[np.ones(60), 2 * np.ones(60)], Q_mean=0, Q_var=0, B=0, sigma=0)
    out = cluster_frames(two_points, n_clusters=5)
    assert out["method"].iloc[0] == "quantile" and out["cluster"].nunique() == 5


def test_quantile_clusters_and_weights():
    g = np.array([0.5, 3.0, 1.0, 2.0])
    assert quantile_clusters(g, 2).tolist() == [1, 0, 1, 0]
    q = np.array([0.0, 0.0, 10.0, 10.0, 0.2, 0.1])
    lab = np.array([0, 0, 1, 1, 2, 2])
    w = cluster_quality_weights(q, lab)
    assert w[1] == 20 * np.median(np.exp([0.0, 10.0, 0.15]))  # capped at 20 x median
    np.testing.assert_allclose(w[[0, 2]], np.exp([0.0, 0.15]))


def test_state_vectors():
    gl = pd.DataFrame({"frame": ["b", "a"], "G": [1.0, 2.0], "B": [3.0, 4.0], "sigma": [5.0, 6.0]})
    lo = pd.DataFrame(
        {"frame": ["a", "a", "b", "b"], "tile": [0, 1, 0, 1], "Q": [1.0, 3.0, 0.0, 0.0]}
    )
    sv = state_vectors(gl, lo)
    assert list(sv.columns) == ["frame", "G", "Q_mean", "Q_var", "B", "sigma"]
    assert sv.iloc[0].tolist() == ["a", 2.0, 2.0, 1.0, 4.0, 6.0]


def test_tiny_clusters_trigger_the_quantile_fallback():
    df, _ = states(n=60, groups=3)
    df.loc[0, ["G", "Q_mean", "Q_var", "B", "sigma"]] = 1e3  # a lone outlier frame
    out = cluster_frames(df, n_clusters=4)
    assert out["method"].iloc[0] == "quantile"
    assert np.bincount(out["cluster"]).min() == 15
