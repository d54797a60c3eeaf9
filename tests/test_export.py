"""The Minari export: loaded back with minari.load_dataset, every array equal to the HDF5 it came from."""

import json

import h5py
import numpy as np
import pytest

minari = pytest.importorskip("minari")

from adbench.export import export_minari  # noqa: E402


def test_minari_dataset_holds_every_episode_of_the_histories_in_order(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "elsewhere"))  # the root argument wins
    export_minari(dataset, "adbench/PointNav/histories-v0", root=tmp_path / "minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    loaded = minari.load_dataset("adbench/PointNav/histories-v0")
    with h5py.File(dataset) as f:
        horizon, episodes = int(f.attrs["horizon"]), int(f.attrs["episodes"])
        groups = list(f["tasks"].items())
        histories = groups[0][1]["rewards"].shape[0]
        assert loaded.total_episodes == len(groups) * histories * episodes
        assert loaded.total_steps == loaded.total_episodes * horizon
        metadata = list(loaded.storage.get_episode_metadata(range(loaded.total_episodes)))
        index = 0
        for task_id, g in groups:
            task = json.loads(g.attrs["task"])
            for h in range(histories):
                for e in range(episodes):
                    ep = loaded[index]
                    steps = slice(e * horizon, (e + 1) * horizon)
                    np.testing.assert_array_equal(ep.observations[:-1], g["observations"][h, steps])
                    np.testing.assert_array_equal(ep.observations[-1], g["final_observations"][h, e])
                    np.testing.assert_array_equal(ep.actions, g["actions"][h, steps])
                    np.testing.assert_array_equal(ep.rewards, g["rewards"][h, steps])
                    np.testing.assert_array_equal(ep.terminations, g["terminated"][h, steps])
                    np.testing.assert_array_equal(ep.truncations, g["truncated"][h, steps])
                    meta = metadata[index]
                    assert (meta["task_id"], meta["split"], meta["history"], meta["episode"]) == (
                        task_id,
                        g.attrs["split"],
                        h,
                        e,
                    )
                    np.testing.assert_array_equal(meta["task"]["goal"], task["goal"])
                    index += 1
    assert loaded.spec.env_spec.id == "adbench/PointNav-v0" and loaded.spec.env_spec.max_episode_steps == horizon
    assert loaded.storage.metadata["adbench_source"] == "ppo"
    assert loaded.storage.metadata["algorithm_name"] == "ppo"
    env = loaded.recover_environment()  # the family's env, made from the stored spec
    assert env.observation_space.shape == loaded[0].observations.shape[1:]
    with pytest.raises(ValueError, match="exists already"):
        export_minari(dataset, "adbench/PointNav/histories-v0", root=tmp_path / "minari")
