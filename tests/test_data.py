import json
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch

from adbench.data import SCHEMA_VERSION, DatasetError, WindowSampler, validate_file
from adbench.histories import all_tasks, run_shard

from .conftest import with_every_task_in


def test_dataset_meets_the_contract(dataset, smoke_config):
    info = validate_file(dataset)
    t, s = smoke_config["tasks"], smoke_config["source"]
    assert info == {
        "family": "PointNav",
        "n_train": t["n_train"],
        "n_test": t["n_test"],
        "n_val": t["n_val"],
        "H": 1,
        "T": s["episodes"] * 50,
        "E": s["episodes"],
        "horizon": 50,
        "obs_dim": 2,
        "act_dim": 2,
        "source": "ppo",
        "expert_env_steps": 0,
        "commit": info["commit"],
    }
    with h5py.File(dataset) as f:
        assert info["commit"] == f.attrs["git_revision"] != ""  # the commit that made the histories
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert json.loads(f.attrs["source_settings"])["ppo"]["learning_rate"] == s["ppo"]["learning_rate"]
        assert "torch" in json.loads(f.attrs["package_versions"])
        g = f["tasks/test-0000"]
        assert g.attrs["split"] == "test"
        assert g["observations"].chunks[1] <= 4096 and g["observations"].compression == "gzip"
        stored = {tid: json.loads(f["tasks"][tid].attrs["task"]) for tid in f["tasks"]}
    assert stored == {tid: task for tid, _, task in all_tasks(smoke_config, "PointNav")}


def test_source_histories_improve_on_most_train_tasks(dataset):
    """PPO's learning histories rise: last 10% of episodes beat the first 10% on most tasks."""
    with h5py.File(dataset) as f:
        returns = np.stack([g["episode_returns"][0] for g in f["tasks"].values() if g.attrs["split"] == "train"])
    k = max(1, returns.shape[1] // 10)
    gains = returns[:, -k:].mean(1) - returns[:, :k].mean(1)
    assert (gains > 0).mean() >= 0.75
    assert gains.mean() > 5.0


def test_same_config_gives_identical_shards(smoke_config, tmp_path):
    for name in ("a.h5", "b.h5"):
        run_shard(smoke_config, "PointNav", 0, tmp_path / name, progress=False)
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def _copy(dataset, tmp_path):
    path = tmp_path / "copy.h5"
    shutil.copy(dataset, path)
    return path


def test_validate_catches_a_truncated_file(dataset, tmp_path):
    path = _copy(dataset, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt|truncated|not a readable"):
        validate_file(path)


def test_validate_catches_a_wrong_schema_version(dataset, tmp_path):
    path = _copy(dataset, tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(DatasetError, match="schema_version 99"):
        validate_file(path)


def test_validate_catches_nan_rewards(dataset, tmp_path):
    path = _copy(dataset, tmp_path)
    with h5py.File(path, "a") as f:
        f["tasks/train-0001/rewards"][0, 3] = np.nan
    with pytest.raises(DatasetError, match="train-0001/rewards: contains NaN"):
        validate_file(path)


def test_validate_catches_a_missing_dataset(dataset, tmp_path):
    path = _copy(dataset, tmp_path)
    with h5py.File(path, "a") as f:
        del f["tasks/train-0002/actions"]
    with pytest.raises(DatasetError, match="train-0002: missing dataset 'actions'"):
        validate_file(path)


def test_validate_catches_mismatched_shapes(dataset, tmp_path):
    path = _copy(dataset, tmp_path)
    with h5py.File(path, "a") as f:
        obs = f["tasks/train-0000/observations"][:, :-50]
        del f["tasks/train-0000/observations"]
        f["tasks/train-0000"].create_dataset("observations", data=obs)
    with pytest.raises(DatasetError, match="train-0000/observations: shape"):
        validate_file(path)


def test_validate_rejects_a_foreign_file(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(DatasetError, match="not an adbench history file"):
        validate_file(path)
    with pytest.raises(DatasetError, match="no such history file"):
        validate_file(tmp_path / "missing.h5")


def test_windows_are_ad_tokens_of_subsampled_episodes(dataset):
    sampler = WindowSampler(dataset, context_episodes=3, stride=2, batch_size=4, seed=0)
    batch = sampler.sample()
    assert batch["obs"].shape == (4, 150, 2) and batch["action"].shape == (4, 150, 2)
    assert batch["episode_start"][0].nonzero().flatten().tolist() == [0, 50, 100]
    # the previous action/reward are the window's own previous step, zeros at its start
    assert batch["prev_action"][:, 0].abs().sum() == 0 and batch["prev_reward"][:, 0].abs().sum() == 0
    assert (batch["prev_action"][:, 1:] == batch["action"][:, :-1]).all()
    # PointNav starts every episode at the origin
    assert batch["obs"][:, ::50].abs().sum() == 0


def test_window_sampler_is_seeded(dataset):
    a = WindowSampler(dataset, 2, 2, 3, seed=5).sample()
    b = WindowSampler(dataset, 2, 2, 3, seed=5).sample()
    assert all((a[k] == b[k]).all() for k in a)


def test_context_longer_than_history_is_refused(dataset):
    WindowSampler(dataset, context_episodes=40, stride=2, batch_size=1, seed=0)  # spans 79 of 80: fits
    with pytest.raises(DatasetError, match="spans 81 episodes.*have 80"):
        WindowSampler(dataset, context_episodes=41, stride=2, batch_size=1, seed=0)


def test_noise_distillation_rises_with_the_schedule(cfg, tmp_path):
    from adbench.sources import generate_histories
    from adbench.tasks import sample_tasks

    source = {**cfg["source"], "algorithm": "noise_distill", "episodes": 20}
    hist = generate_histories(source, "PointNav", sample_tasks("PointNav", 3, 0), 50, seed=0)
    returns = hist["episode_returns"]
    assert returns.shape == (3, 20)
    assert (returns[:, -2:].mean(1) > returns[:, :2].mean(1) + 10).all()
    assert (returns[:, -1] > -10).all()  # the oracle reaches the goal within ~10 steps and stays
    with pytest.raises(ValueError, match="no analytic oracle"):
        generate_histories(source, "HalfCheetahVel", sample_tasks("HalfCheetahVel", 1, 0), 10, seed=0)


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    from adbench.atomic import atomic_path

    target = tmp_path / "sub" / "out.csv"
    target.parent.mkdir()
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and not list(tmp_path.rglob("*.tmp"))
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and not list(tmp_path.rglob("*.tmp"))


def test_final_observations_are_where_each_episode_ended(dataset):
    """PointNav moves by 0.1 x the clipped action and rewards -distance after the move: the final
    observation of each episode is the last observation moved by the last action, and the last reward
    is minus its distance to the goal."""

    with h5py.File(dataset) as f:
        horizon = int(f.attrs["horizon"])
        for g in f["tasks"].values():
            goal = np.asarray(json.loads(g.attrs["task"])["goal"])
            obs, act, rew = g["observations"][...], g["actions"][...], g["rewards"][...]
            final = g["final_observations"][...]
            last = slice(horizon - 1, None, horizon)
            np.testing.assert_allclose(final, obs[:, last] + 0.1 * np.clip(act[:, last], -1, 1), atol=1e-5)
            np.testing.assert_allclose(rew[:, last], -np.linalg.norm(final - goal, axis=-1), atol=1e-4)
            assert not np.allclose(final[:, :-1], obs[:, horizon::horizon])  # not the next episode's reset


def test_input_statistics_are_the_train_splits_mean_and_std_whatever_the_order(tmp_path):
    """Observations and rewards of the train tasks only (a test task written first, between and last),
    against numpy over their concatenation."""
    from adbench.data import input_statistics
    from adbench.data.writer import atomic_h5, write_root_attrs, write_task

    rng = np.random.default_rng(0)
    path, train = tmp_path / "interleaved.h5", []
    with atomic_h5(path) as f:
        write_root_attrs(f, {"family": "PointNav", "horizon": 5, "episodes": 2})
        for i, split in enumerate(["test", "train", "test", "train", "test"]):
            arrays = {
                "observations": rng.normal(0.1 * i, 0.1 + 0.1 * i, (1, 10, 2)),  # pooled variance below 1
                "actions": rng.uniform(-1, 1, (1, 10, 2)),
                "rewards": rng.normal(-0.1 * i, 0.4, (1, 10)),
                "terminated": np.zeros((1, 10), bool),
                "truncated": np.tile([False] * 4 + [True], (1, 2)),
                "final_observations": rng.normal(size=(1, 2, 2)),
            }
            arrays["episode_returns"] = arrays["rewards"].reshape(1, 2, 5).sum(-1)
            write_task(f, f"{split}-{i:04d}", {"goal": [0.0, 1.0]}, split, arrays)
            if split == "train":
                train.append(arrays)
    stats = input_statistics(path)
    obs = np.concatenate([a["observations"].reshape(-1, 2) for a in train])
    rew = np.concatenate([a["rewards"].ravel() for a in train])
    obs, rew = obs.astype(np.float32).astype(np.float64), rew.astype(np.float32).astype(np.float64)  # as stored
    np.testing.assert_allclose(stats["obs_mean"], obs.mean(0), rtol=1e-9)
    assert (obs.std(0) < 1).all() and rew.std() < 1  # so that a variance floored at 1 would show
    np.testing.assert_allclose(stats["obs_std"], obs.std(0) + 1e-6, rtol=1e-9)  # the std floor added, once
    assert stats["reward_mean"] == pytest.approx(rew.mean(), rel=1e-9)
    assert stats["reward_std"] == pytest.approx(rew.std() + 1e-6, rel=1e-9)


def test_a_pickled_sampler_opens_its_own_file_and_samples_as_the_original(dataset):
    sampler = WindowSampler(dataset, 2, 1, 3, seed=5)
    sampler.sample()  # the arrays are open
    copy = pickle.loads(pickle.dumps(sampler))
    assert copy._arrays is None and sampler._arrays is not None
    a, b = sampler.sample(), copy.sample()
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_a_sampler_needs_train_tasks_and_takes_a_window_spanning_every_episode(dataset, tmp_path):
    with h5py.File(dataset) as f:
        episodes, horizon = int(f.attrs["episodes"]), int(f.attrs["horizon"])
    assert WindowSampler(dataset, episodes, 1, 2, seed=0).sample()["obs"].shape[1] == episodes * horizon
    only_test = with_every_task_in("test", dataset, tmp_path / "only-test.h5")
    with pytest.raises(DatasetError, match="no train tasks to sample windows from"):
        WindowSampler(only_test, 2, 1, 2, seed=0)


def test_a_sampler_draws_windows_from_its_split_only(dataset, tmp_path):
    """split='val' (the held-out loss) reads the validation tasks' histories and nothing else; the
    default reads the train tasks'."""
    marked = tmp_path / "marked.h5"
    shutil.copy(dataset, marked)
    with h5py.File(marked, "r+") as f:
        splits = [g.attrs["split"] for g in f["tasks"].values()]
        for g in f["tasks"].values():
            if g.attrs["split"] == "val":
                g["rewards"][...] = 7.0
    assert "val" in splits and "train" in splits
    val = WindowSampler(marked, 2, 2, 16, seed=0, split="val").sample()["prev_reward"][:, 1:]
    train = WindowSampler(marked, 2, 2, 16, seed=0).sample()["prev_reward"][:, 1:]
    assert (val == 7.0).all() and not (train == 7.0).any()
    with pytest.raises(DatasetError, match="no val tasks to sample windows from"):
        WindowSampler(with_every_task_in("train", dataset, tmp_path / "no-val.h5"), 2, 2, 4, seed=0, split="val")


def test_noise_distillation_stores_the_experts_clean_action_for_the_true_task(cfg):
    """expert_actions: at every step the oracle's action for the true goal at the stored observation,
    clipped to the box; the executed action is that plus the annealed noise (equal once the noise is 0)."""
    from adbench.sources import generate_histories
    from adbench.tasks import get_family, sample_tasks

    tasks = sample_tasks("PointNav", 3, 4)
    source = {**cfg["source"], "algorithm": "noise_distill", "episodes": 10}
    source["noise_distill"] = {**source["noise_distill"], "noise": "gaussian", "clean_fraction": 0.2}
    hist = generate_histories(source, "PointNav", tasks, 50, seed=1)
    oracle = get_family("PointNav").oracle
    expected = np.stack(
        [np.stack([np.clip(oracle(task, o), -1, 1) for o in obs]) for task, obs in zip(tasks, hist["observations"])]
    )
    np.testing.assert_allclose(hist["expert_actions"], expected, rtol=1e-6)
    noisy, clean = slice(0, 50), slice(9 * 50, 10 * 50)  # the first episode, and the last (noise-free)
    assert not np.allclose(hist["actions"][:, noisy], hist["expert_actions"][:, noisy])
    np.testing.assert_allclose(hist["actions"][:, clean], hist["expert_actions"][:, clean], rtol=1e-6)


def oracle_distilled_dataset(smoke_config, out, counterfactuals: int = 0):
    """A PointNav dataset of oracle noise-distillation histories (with expert_actions) in `out`."""
    import copy

    from adbench.histories import merge_shards

    cfg = copy.deepcopy(smoke_config)
    cfg["source"].update(algorithm="noise_distill", episodes=12, tasks_per_shard=16)
    cfg["source"]["noise_distill"]["counterfactuals"] = counterfactuals
    cfg["tasks"].update(n_train=4, n_test=2, n_val=0)
    run_shard(cfg, "PointNav", 0, out / "shard-0.h5", progress=False)
    merge_shards(cfg, "PointNav", [out / "shard-0.h5"], out / "PointNav.h5")
    return out / "PointNav.h5"


@pytest.fixture(scope="module")
def distilled(smoke_config, tmp_path_factory):
    return oracle_distilled_dataset(smoke_config, tmp_path_factory.mktemp("distilled"))


def test_the_expert_target_predicts_the_experts_action_and_feeds_the_recorded_one(distilled):
    """train.target expert: the window's targets are the stored expert_actions, its previous-action
    inputs the recorded (executed) actions shifted by one step; everything else as with the recorded
    target, from the same draws."""
    validate_file(distilled)
    recorded = WindowSampler(distilled, 3, 2, batch_size=5, seed=7).sample()
    relabelled = WindowSampler(distilled, 3, 2, batch_size=5, seed=7, target="expert")
    state = relabelled.rng.bit_generator.state
    batch = relabelled.sample()
    for key in ("obs", "prev_action", "prev_reward", "episode_start"):
        assert torch.equal(batch[key], recorded[key]), key
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    tasks, hists = rng.integers(4, size=5), rng.integers(1, size=5)
    starts = rng.integers(12 - 4, size=5)
    with h5py.File(distilled) as f:
        train = [tid for tid, g in f["tasks"].items() if g.attrs["split"] == "train"]
        for b, (task, hist, e0) in enumerate(zip(tasks, hists, starts)):
            g = f["tasks"][train[task]]
            steps = np.concatenate([np.arange((e0 + 2 * j) * 50, (e0 + 2 * j + 1) * 50) for j in range(3)])
            np.testing.assert_array_equal(batch["action"][b].numpy(), g["expert_actions"][hist][steps])
            np.testing.assert_array_equal(batch["prev_action"][b, 1:].numpy(), g["actions"][hist][steps][:-1])
    assert not torch.equal(batch["action"], recorded["action"])


def test_the_expert_target_needs_a_source_with_an_expert(dataset, distilled):
    with pytest.raises(DatasetError, match="has no expert_actions for train.target 'expert': its source has no expert"):
        WindowSampler(dataset, 2, 2, batch_size=2, seed=0, target="expert")
    with pytest.raises(
        DatasetError, match="has no counterfactual_rewards for train.target 'counterfactual': set source.noise_distill"
    ):
        WindowSampler(distilled, 2, 2, batch_size=2, seed=0, target="counterfactual")
    with pytest.raises(
        ValueError,
        match=r"unknown training target 'best'; train.target is one of \['recorded', 'expert', 'counterfactual'\]",
    ):
        WindowSampler(dataset, 2, 2, batch_size=2, seed=0, target="best")


@pytest.fixture(scope="module")
def counterfactual(smoke_config, tmp_path_factory):
    """The `distilled` dataset's settings with two counterfactual tasks per history."""
    return oracle_distilled_dataset(smoke_config, tmp_path_factory.mktemp("counterfactual"), counterfactuals=2)


def test_the_counterfactual_target_tells_each_window_its_task_or_another_by_the_rewards(counterfactual):
    """train.target counterfactual: the windows of the expert target, each with the rewards and the
    expert's actions of its true task or of one of its counterfactual tasks (drawn uniformly after the
    windows); the observations and the previous actions (the executed ones) are the recorded ones."""
    validate_file(counterfactual)
    plain = WindowSampler(counterfactual, 3, 2, batch_size=64, seed=4, target="expert").sample()
    sampler = WindowSampler(counterfactual, 3, 2, batch_size=64, seed=4, target="counterfactual")
    rng = np.random.default_rng()
    rng.bit_generator.state = sampler.rng.bit_generator.state
    batch = sampler.sample()
    for key in ("obs", "prev_action", "episode_start"):
        assert torch.equal(batch[key], plain[key]), key
    tasks, hists, starts = rng.integers(4, size=64), rng.integers(1, size=64), rng.integers(12 - 4, size=64)
    told = rng.integers(3, size=64)
    with h5py.File(counterfactual) as f:
        train = [g for g in f["tasks"].values() if g.attrs["split"] == "train"]
        for b, (task, hist, e0) in enumerate(zip(tasks, hists, starts)):
            g = train[task]
            steps = np.concatenate([np.arange((e0 + 2 * j) * 50, (e0 + 2 * j + 1) * 50) for j in range(3)])
            if told[b] == 0:
                rewards, actions = g["rewards"][hist][steps], g["expert_actions"][hist][steps]
            else:
                rewards = g["counterfactual_rewards"][hist][steps, told[b] - 1]
                actions = g["counterfactual_actions"][hist][steps, told[b] - 1]
                assert not np.allclose(rewards, g["rewards"][hist][steps])
            np.testing.assert_array_equal(batch["prev_reward"][b, 1:].numpy(), rewards[:-1])
            np.testing.assert_array_equal(batch["action"][b].numpy(), actions)
    assert np.bincount(told, minlength=3).min() >= 10  # each of the three told tasks, about a third


def test_windows_with_another_tasks_rewards_change_the_rewards_only(counterfactual):
    """sample_with_other_rewards: the same windows twice, the second with the rewards of another of their
    C + 1 tasks; the targets stay those of the told task. The held-out reward reliance reads them: zero
    for a model that does not read rewards, above zero for one that acts on them."""
    from adbench import train
    from adbench.models import build

    sampler = WindowSampler(counterfactual, 3, 2, batch_size=32, seed=4, target="counterfactual")
    rng = np.random.default_rng()
    rng.bit_generator.state = sampler.rng.bit_generator.state
    told, other = sampler.sample_with_other_rewards()
    for key in ("obs", "prev_action", "episode_start", "action"):
        assert torch.equal(told[key], other[key]), key
    tasks, hists, starts = rng.integers(4, size=32), rng.integers(1, size=32), rng.integers(12 - 4, size=32)
    told_task = rng.integers(3, size=32)
    other_task = (told_task + rng.integers(1, 3, size=32)) % 3
    assert (other_task != told_task).all()
    with h5py.File(counterfactual) as f:
        train_tasks = [g for g in f["tasks"].values() if g.attrs["split"] == "train"]
        for b, (task, hist, e0) in enumerate(zip(tasks, hists, starts)):
            g = train_tasks[task]
            steps = np.concatenate([np.arange((e0 + 2 * j) * 50, (e0 + 2 * j + 1) * 50) for j in range(3)])
            series = np.concatenate([g["rewards"][hist][:, None], g["counterfactual_rewards"][hist]], axis=1)
            for batch, t in ((told, told_task[b]), (other, other_task[b])):
                np.testing.assert_array_equal(batch["prev_reward"][b, 1:].numpy(), series[steps[:-1], t])
    with pytest.raises(ValueError, match="need train.target 'counterfactual'"):
        WindowSampler(counterfactual, 3, 2, batch_size=2, seed=0, target="expert").sample_with_other_rewards()

    model = build("transformer", 2, 2, d_model=16, n_layers=1, window=150)
    windows = [(told, other)]
    assert train.heldout_losses(model, windows, torch.device("cpu"))[1] != 0
    with torch.no_grad():
        model.embed.weight[:, 2 + 2] = 0.0  # the reward's column of the token embedding
    val_loss, reliance = train.heldout_losses(model, windows, torch.device("cpu"))
    assert np.isfinite(val_loss) and reliance == 0.0


def test_a_file_with_one_counterfactual_array_is_refused(counterfactual, tmp_path):
    damaged = tmp_path / "damaged.h5"
    shutil.copy(counterfactual, damaged)
    with h5py.File(damaged, "a") as f:
        del f["tasks/train-0000/counterfactual_actions"]
    with pytest.raises(DatasetError, match="train-0000: one counterfactual array without the other"):
        validate_file(damaged)
