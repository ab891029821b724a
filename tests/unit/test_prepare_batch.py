import numpy as np
import pytest

from tilestack.errors import InputError
from tilestack.workflow.prepare import check_batch, prepare_frames


@pytest.mark.parametrize("bayer", [None, "GRBG"])
def test_prepare_batch_calibrates_every_light_and_finds_its_stars(tmp_path, bayer):
    from tilestack.simulate import simulate_night

    night = simulate_night(tmp_path / "n", n_frames=4, width=192, height=160, bayer=bayer, seed=3)
    paths = sorted(str(p) for p in (tmp_path / "n" / "lights").iterdir())
    manifest = check_batch(paths, paths[0], 0.05)
    assert list(manifest["path"]) == paths
    added = []
    stars = prepare_frames(
        manifest,
        None,
        lambda stem, light, valid, hdr: added.append((stem, light.dtype, valid.dtype, hdr)),
        bayer=bayer,
        detect_sigma=5.0,
    )
    assert [a[0] for a in added] == list(manifest["stem"])
    assert all(a[1] == np.float32 and a[3]["FRAME"] for a in added)
    assert set(stars["frame"]) == set(manifest["frame"])
    # the brightest detections of the first frame lie on true star positions (full resolution)
    first = stars[stars["frame"] == manifest["frame"][0]].nlargest(10, "flux")
    from tilestack.simulation.timeline import matrices

    m = np.linalg.inv(matrices(night.frames)[0])  # truth grid -> frame 0
    truth = night.stars[["x", "y"]].to_numpy()
    tf = (m @ np.c_[truth, np.ones(len(truth))].T)[:2].T
    d = np.min(
        np.hypot(*(first[["x", "y"]].to_numpy()[:, None, :] - tf[None]).transpose(2, 0, 1)), 1
    )
    assert np.median(d) < 0.5


def test_check_batch_refuses_a_light_of_another_size(tmp_path):
    from tilestack.simulate import simulate_night

    simulate_night(tmp_path / "a", n_frames=2, width=96, height=80, seed=1)
    simulate_night(tmp_path / "b", n_frames=2, width=80, height=80, seed=1)
    a = sorted(str(p) for p in (tmp_path / "a" / "lights").iterdir())
    b = sorted(str(p) for p in (tmp_path / "b" / "lights").iterdir())
    with pytest.raises(InputError):
        check_batch(b, a[0], 0.05)
