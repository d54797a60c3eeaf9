import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from adbench import train
from adbench.data import DatasetError, open_histories, validate_file
from adbench.evaluate import (
    COLUMNS,
    CONTROLS,
    INFERENCE_COLUMNS,
    ModelPolicy,
    evaluate_model,
    evaluate_references,
    inference_rows,
    random_policy,
    rollout,
    source_inference_rows,
    tidy,
    train_env_steps,
)
from adbench.evaluate import (
    evaluated_tasks as held_out_tasks,
)
from adbench.measures import edge
from adbench.models import build, load_checkpoint, state_mib
from adbench.provenance import git_revision
from adbench.statistics import interval
from adbench.tasks import sample_tasks

from .conftest import with_every_task_in


@pytest.fixture(scope="module")
def models(smoke_config, dataset, tmp_path_factory):
    out = {}
    for arch in ("mamba", "transformer"):
        cfg = {**smoke_config, "train": {**smoke_config["train"], "steps": 4, "log_every": 2}}
        out[arch] = train.run(cfg, dataset, arch, 2, 0, tmp_path_factory.mktemp(arch), progress=False)
    return out


@pytest.mark.parametrize("arch", ["mamba", "transformer"])
def test_evaluation_runs_longer_than_the_training_context(cfg, dataset, models, tmp_path, arch):
    cfg["evaluate"].update(episodes=7, seeds=[0, 3])  # the context is 2 episodes
    evaluate_model(
        cfg,
        dataset,
        models[arch],
        tmp_path / "e.csv",
        tmp_path / "c.csv",
        progress=False,
        inference_path=tmp_path / "i.csv",
    )
    df = pd.read_csv(tmp_path / "e.csv")
    assert list(df.columns) == COLUMNS
    assert len(df) == 4 * 2 * 4 * 7  # controls x eval seeds x test tasks x episodes
    assert set(df["control"]) == {"none", "zero_reward", "other_task_reward", "task_switch"}
    assert set(df["task"]) == {f"test-{i:04d}" for i in range(4)}
    assert (df["arch"] == arch).all() and (df["context_episodes"] == 2).all()
    assert np.isfinite(df["return"]).all() and (df["return"] < 0).all()
    # the task-inference file: one row per evaluated episode, keyed as the returns are
    inf = pd.read_csv(tmp_path / "i.csv")
    assert list(inf.columns) == INFERENCE_COLUMNS
    keys = ["family", "arch", "context_episodes", "seed", "eval_seed", "control", "task", "episode"]
    pd.testing.assert_frame_equal(inf[keys], df[keys])
    assert (inf["quantity"] == "final_distance_to_goal").all() and (inf["target"] == 0).all()
    assert (inf["error"] == inf["achieved"]).all() and (inf["achieved"] > 0).all()
    assert inf.groupby("task")["achieved"].mean().nunique() == 4  # each task's own goal
    # the cost file: its mean ms per step is the per-episode measure's order of magnitude
    cost = pd.read_csv(tmp_path / "c.csv").iloc[0]
    assert cost["batch"] == 4 * 2 * 4 and cost["arch"] == arch and cost["context_episodes"] == 2
    assert 0.1 < cost["ms_per_step"] / cost["ms_per_step_first_episode"] < 10


def test_evaluation_is_reproducible(cfg, dataset, models, tmp_path):
    for name in ("a.csv", "b.csv"):
        evaluate_model(cfg, dataset, models["mamba"], tmp_path / name, progress=False)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_references_hold_random_and_the_source_curve(cfg, dataset, tmp_path):
    evaluate_references(cfg, dataset, tmp_path / "ref.csv", progress=False)
    df = pd.read_csv(tmp_path / "ref.csv")
    rnd, src = df[df["arch"] == "random"], df[df["arch"] == "source"]
    assert len(rnd) == len(cfg["evaluate"]["seeds"]) * 4 * cfg["evaluate"]["episodes"]
    assert len(src) == (8 + 4 + 4) * cfg["source"]["episodes"]  # train, test and validation tasks' histories
    assert (df["family"] == "PointNav").all() and (df["context_episodes"] == 0).all()
    assert (df["control"] == "none").all() and (rnd["seed"] == 0).all()
    assert set(rnd["eval_seed"]) == set(cfg["evaluate"]["seeds"]) and (src["eval_seed"] == -1).all()
    with open_histories(dataset) as f:  # a source row: history `seed`'s episode return, as stored
        stored = {tid: g["episode_returns"][...] for tid, g in f["tasks"].items()}
    assert set(src["seed"]) == set(range(next(iter(stored.values())).shape[0]))
    for _, r in src.sample(50, random_state=0).iterrows():
        assert r["return"] == pytest.approx(stored[r["task"]][r["seed"], r["episode"]], rel=1e-6)
    # the source learns on held-out tasks too; random stays near where the source started
    test_src = src[src["task"].str.startswith("test-")]
    last = cfg["source"]["episodes"] - cfg["source"]["episodes"] // 10
    assert test_src[test_src["episode"] >= last]["return"].mean() > rnd["return"].mean() + 5


def test_mamba_state_does_not_grow_over_episodes(dataset):
    """The recurrent state has a fixed size, so a late step costs what an early one does (the time itself
    is measured by the evaluation's cost file and the benchmarks, not asserted here)."""
    model = build("mamba", 2, 2, d_model=16)
    tasks = [{"goal": [0.0, 1.0]}] * 4
    policy = ModelPolicy(model, 4, sample=True)
    initial = state_mib(policy.state)
    rollout("PointNav", tasks, 50, 2, [0], policy)
    early = [tuple(t.shape for t in layer) for layer in policy.state]
    rollout("PointNav", tasks, 50, 20, [0], policy)
    assert [tuple(t.shape for t in layer) for layer in policy.state] == early
    assert all(layer[1].shape == (4, 32, 16) for layer in policy.state)
    assert state_mib(policy.state) == initial > 0


def test_model_and_dataset_dims_must_match(cfg, dataset, tmp_path):
    from adbench.models import save_checkpoint

    model = build("mamba", 5, 2, d_model=16)
    save_checkpoint(
        tmp_path / "m.pt", model, "mamba", {"d_model": 16}, {"meta": {"horizon": 50, "context_episodes": 2, "seed": 0}}
    )
    with pytest.raises(DatasetError, match=r"obs/act dims \(5, 2\).*\(2, 2\)"):
        evaluate_model(cfg, dataset, tmp_path / "m.pt", tmp_path / "e.csv", progress=False)


def test_sampling_uses_the_predicted_std(dataset, models):
    model, _ = load_checkpoint(models["mamba"])
    mean, log_std = torch.zeros(1000, 2), torch.full((1000, 2), np.log(0.3))
    actions = model.act((mean, log_std), sample=True, generator=torch.Generator().manual_seed(0))
    assert actions.std().item() == pytest.approx(0.3, rel=0.1)
    assert torch.equal(model.act((mean, log_std), sample=False), mean)


class EpisodeSchedulePolicy:
    """Ignores rewards by construction: its action depends only on the episode and step counts. Its
    heading wobbles less each episode, settling straight up, so its return rises on most goals."""

    def __init__(self):
        self.episode, self.t = -1, 0

    def __call__(self, obs, prev_action, prev_reward, start, generator):
        if start[0]:
            self.episode, self.t = self.episode + 1, 0
        self.t += 1
        wobble = (np.pi / 2) * max(0.0, 1.0 - self.episode / 6) * (1 if self.episode % 2 == 0 else -1)
        speed = 1.0 if self.t <= 10 else 0.0
        angle = np.pi / 2 + wobble
        return np.tile([speed * np.cos(angle), speed * np.sin(angle)], (len(obs), 1)).astype(np.float32)


class RewardHillClimber:
    """Learns in context from the rewards it sees: tries 9 headings on the upper half-plane, one per
    episode, then keeps heading the way whose episode earned most. Drives 10 steps, then stops."""

    ANGLES = np.linspace(0, np.pi, 9)

    def __init__(self, batch):
        self.episode, self.t = -1, 0
        self.returns = np.full((batch, len(self.ANGLES)), -np.inf)
        self.current = np.zeros(batch)

    def __call__(self, obs, prev_action, prev_reward, start, generator):
        if start[0]:
            if self.episode >= 0 and self.episode < len(self.ANGLES):
                self.returns[:, self.episode] = self.current
            self.episode, self.t, self.current = self.episode + 1, 0, np.zeros(len(obs))
        elif self.t > 0:
            self.current += prev_reward
        self.t += 1
        if self.episode < len(self.ANGLES):
            angle = np.full(len(obs), self.ANGLES[self.episode])
        else:
            angle = self.ANGLES[np.argmax(self.returns, axis=1)]
        speed = 1.0 if self.t <= 10 else 0.0
        return (speed * np.stack([np.cos(angle), np.sin(angle)], 1)).astype(np.float32)


def _gains(returns):
    """(controls, seeds, tasks, episodes) -> the reward-driven gain and its CI (one training seed)."""
    final = returns[..., -3:].mean(-1)
    driven = np.swapaxes(final[0] - final[2], 0, 1)[None]  # (training seed, task, eval seed)
    point, low, high = interval(driven, "mean", 0)
    return point, (low, high)


def test_controls_find_no_reward_driven_gain_in_a_policy_that_ignores_rewards():
    tasks = sample_tasks("PointNav", 8, 3)
    returns = rollout("PointNav", tasks, 50, 12, [0, 1], EpisodeSchedulePolicy(), controls=CONTROLS)
    assert returns[0, ..., -3:].mean() > returns[0, ..., :3].mean()  # it "improves" across episodes ...
    mean, (low, high) = _gains(returns)
    assert mean == pytest.approx(0.0, abs=1e-9) and low <= 0.0 <= high  # ... but not from rewards
    np.testing.assert_allclose(returns[1], returns[0])  # zero rewards change nothing either


def test_controls_find_a_clear_reward_driven_gain_in_a_reward_driven_learner():
    tasks = sample_tasks("PointNav", 8, 3)
    policy = RewardHillClimber(len(CONTROLS) * 2 * 8)
    returns = rollout("PointNav", tasks, 50, 12, [0, 1], policy, controls=CONTROLS)
    mean, (low, high) = _gains(returns)
    assert low > 5.0  # seeing another task's rewards, it heads for the wrong goal


def test_other_task_control_needs_two_test_tasks():
    message = "^the other_task_reward control needs at least 2 test tasks; raise tasks.n_test or drop the control$"
    with pytest.raises(DatasetError, match=message):
        rollout("PointNav", sample_tasks("PointNav", 1, 0), 50, 1, [0], EpisodeSchedulePolicy(), controls=CONTROLS)


def test_an_unknown_control_is_named_with_the_known_ones():
    message = (
        r"^unknown evaluation control 'bogus'; controls: \['none', 'zero_reward', 'other_task_reward', 'task_switch'\]$"
    )
    with pytest.raises(ValueError, match=message):
        rollout(
            "PointNav", sample_tasks("PointNav", 2, 0), 5, 1, [0], EpisodeSchedulePolicy(), controls=("none", "bogus")
        )


def test_dynamics_family_other_task_control_feeds_the_other_rollouts_rewards():
    tasks = sample_tasks("Walker2dParams", 2, 0)
    seen = []

    def recorder(obs, prev_action, prev_reward, start, generator):
        seen.append(prev_reward.copy())
        return np.zeros((len(obs), 6), np.float32)

    rollout("Walker2dParams", tasks, 5, 1, [0, 1], recorder, controls=("none", "other_task_reward"))
    # rows (control, seed, task): 0-3 are none, 4-7 other_task; within a seed the control shows the other
    # task's reward from the same seed's rollout
    for r in seen[1:]:
        assert r[4] == r[1] and r[5] == r[0] and r[6] == r[3] and r[7] == r[2]
        assert r[0] != r[2]  # the seeds' rollouts differ


def test_tidy_rows_carry_every_key_and_the_return_at_their_index():
    returns = np.random.default_rng(0).normal(size=(2, 3, 2, 4))  # controls, eval seeds, tasks, episodes
    controls, eval_seeds, tasks = ("none", "zero_reward"), [5, 7, 9], ["test-0003", "test-0001"]
    rows = tidy("HalfCheetahVel", "mamba", 8, 2, eval_seeds, tasks, returns, controls)
    assert len(rows) == returns.size
    for row in rows:
        assert list(row) == COLUMNS
        assert (row["family"], row["arch"], row["context_episodes"], row["seed"]) == ("HalfCheetahVel", "mamba", 8, 2)
        c, s, t = controls.index(row["control"]), eval_seeds.index(row["eval_seed"]), tasks.index(row["task"])
        assert row["return"] == returns[c, s, t, row["episode"]]
    keys = {(r["control"], r["eval_seed"], r["task"], r["episode"]) for r in rows}
    assert len(keys) == returns.size


def test_inference_rows_diagnose_the_episode_at_their_index():
    rng = np.random.default_rng(1)
    shape = (2, 2, 3, 4)  # controls, eval seeds, tasks, episodes
    obs_mean, obs_last = rng.normal(size=(*shape, 17)), rng.normal(size=(*shape, 17))
    tasks = [("test-0002", {"velocity": 0.5}), ("test-0000", {"velocity": 2.5}), ("test-0001", {"velocity": 1.0})]
    controls, seeds = ("none", "other_task_reward"), [3, 1]
    rows = inference_rows("HalfCheetahVel", "transformer", 4, 1, seeds, tasks, obs_mean, obs_last, controls)
    assert len(rows) == np.prod(shape) and all(list(r) == INFERENCE_COLUMNS for r in rows)
    ids = [tid for tid, _ in tasks]
    for r in rows:
        c, s, t = controls.index(r["control"]), seeds.index(r["eval_seed"]), ids.index(r["task"])
        achieved = obs_mean[c, s, t, r["episode"], 8]  # HalfCheetah's forward velocity
        assert (r["family"], r["arch"], r["context_episodes"], r["seed"]) == ("HalfCheetahVel", "transformer", 4, 1)
        assert r["quantity"] == "forward_velocity"
        assert r["target"] == tasks[t][1]["velocity"] and r["achieved"] == pytest.approx(achieved)
        assert r["error"] == pytest.approx(abs(achieved - tasks[t][1]["velocity"]))
    goals = [("test-0000", {"goal": [1.0, -2.0]}), ("test-0001", {"goal": [0.0, 3.0]})]
    rows = inference_rows("AntGoal", "mamba", 8, 0, [0], goals, obs_mean[:, :1, :2], obs_last[:, :1, :2], controls)
    for r in rows:
        c, t = controls.index(r["control"]), int(r["task"][-1])
        distance = np.hypot(*(obs_last[c, 0, t, r["episode"], :2] - goals[t][1]["goal"]))
        assert r["achieved"] == pytest.approx(distance) and r["error"] == pytest.approx(distance)


def test_source_inference_rows_read_each_history_episodes_last_observation(dataset):
    tasks = held_out_tasks(dataset)
    with open_histories(dataset) as f:
        horizon = int(f.attrs["horizon"])
        observations = {tid: f["tasks"][tid]["observations"][...] for tid, _ in tasks}
    rows = source_inference_rows(dataset, "PointNav", tasks, horizon)
    n_histories, steps = next(iter(observations.values())).shape[:2]
    assert len(rows) == len(tasks) * n_histories * steps // horizon
    goals = dict(tasks)
    for r in rows[:: max(1, len(rows) // 97)]:  # a spread of histories, tasks and episodes
        last = observations[r["task"]][r["seed"], (r["episode"] + 1) * horizon - 1]
        assert (r["family"], r["arch"], r["eval_seed"], r["control"]) == ("PointNav", "source", -1, "none")
        assert r["context_episodes"] == 0 and r["quantity"] == "final_distance_to_goal"
        assert r["achieved"] == pytest.approx(np.hypot(*(last[:2] - goals[r["task"]]["goal"])))


def test_references_write_the_random_and_source_diagnostics(cfg, dataset, tmp_path):
    cfg["evaluate"].update(episodes=3, seeds=[0, 2])
    evaluate_references(cfg, dataset, tmp_path / "ref.csv", progress=False, inference_path=tmp_path / "inf.csv")
    df = pd.read_csv(tmp_path / "inf.csv")
    assert list(df.columns) == INFERENCE_COLUMNS
    rnd, src = df[df["arch"] == "random"], df[df["arch"] == "source"]
    assert len(rnd) == 2 * 4 * 3 and set(rnd["eval_seed"]) == {0, 2}  # seeds x test tasks x episodes
    assert (df["family"] == "PointNav").all() and (df["context_episodes"] == 0).all() and (rnd["seed"] == 0).all()
    assert set(src["task"]) == {f"test-{i:04d}" for i in range(4)} and (src["eval_seed"] == -1).all()
    # the source's histories end nearer their goals than the random policy does
    last = src["episode"].max()
    assert src[src["episode"] == last]["achieved"].mean() < rnd["achieved"].mean()


def test_random_policy_is_uniform_on_the_action_box_and_follows_its_generator():
    prev_action = np.zeros((4000, 6), np.float32)
    draw = [random_policy(None, prev_action, None, None, torch.Generator().manual_seed(3)) for _ in range(2)]
    np.testing.assert_array_equal(draw[0], draw[1])  # the generator alone decides
    a = draw[0]
    assert a.shape == prev_action.shape and a.min() >= -1.0 and a.max() < 1.0
    # uniform on [-1, 1): mean 0, variance 1/3, a quarter of the mass in each quarter of the box
    assert abs(a.mean()) < 0.02 and abs(a.var() - 1 / 3) < 0.01
    np.testing.assert_allclose(np.histogram(a, bins=4, range=(-1, 1))[0] / a.size, 0.25, atol=0.01)


def test_source_inference_rows_average_each_episodes_observations(tmp_path):
    """HalfCheetahVel's diagnostic reads the mean forward velocity of each stored episode."""
    horizon, rng = 5, np.random.default_rng(2)
    obs = rng.normal(size=(2, 3 * horizon, 17)).astype(np.float32)  # 2 histories of 3 episodes
    with h5py.File(tmp_path / "h.h5", "w") as f:
        f.create_dataset("tasks/test-0000/observations", data=obs)
    task = {"velocity": 1.5}
    rows = source_inference_rows(tmp_path / "h.h5", "HalfCheetahVel", [("test-0000", task)], horizon)
    assert [(r["seed"], r["episode"]) for r in rows] == [(h, e) for h in range(2) for e in range(3)]
    for r in rows:
        velocity = obs[r["seed"], r["episode"] * horizon : (r["episode"] + 1) * horizon, 8].astype(np.float64).mean()
        assert r["achieved"] == pytest.approx(velocity, rel=1e-12) and r["target"] == 1.5
        assert r["error"] == pytest.approx(abs(velocity - 1.5), rel=1e-12)


def test_an_ad_models_env_steps_are_its_training_histories_and_the_experts(dataset):
    with h5py.File(dataset) as f:
        steps = sum(g["rewards"].size for g in f["tasks"].values() if g.attrs["split"] == "train")
        expert = int(f.attrs.get("expert_env_steps", 0))
    info = validate_file(dataset)
    assert train_env_steps(info, {"arch": "mamba"}) == steps + expert
    assert train_env_steps({**info, "expert_env_steps": 1234}, {"arch": "transformer"}) == steps + 1234
    assert train_env_steps(info, {"arch": "rl2", "meta": {"train_env_steps": 99}}) == 99
    two_histories = {"n_train": 3, "H": 2, "T": 50, "expert_env_steps": 7}  # tasks x histories x steps
    assert train_env_steps(two_histories, {"arch": "mamba"}) == 3 * 2 * 50 + 7


def test_ms_per_step_in_an_episode_is_its_seconds_over_its_steps():
    policy = ModelPolicy(build("mamba", 2, 2, d_model=8), 4, sample=False)
    policy.episode_seconds = [0.5, 0.2]
    assert policy.ms_per_step_in_episode(0, 50) == pytest.approx(10.0)
    assert policy.ms_per_step_in_episode(1, 40) == pytest.approx(5.0)


def test_the_evaluation_samples_actions_as_the_config_says(cfg, dataset, models, tmp_path):
    cfg["evaluate"].update(episodes=2, seeds=[0])
    returns = {}
    for sample in (True, False):
        cfg["evaluate"]["sample_actions"] = sample
        evaluate_model(cfg, dataset, models["mamba"], tmp_path / f"{sample}.csv", progress=False)
        returns[sample] = pd.read_csv(tmp_path / f"{sample}.csv")["return"].to_numpy()
    assert not np.allclose(returns[True], returns[False])


class RecordingPolicy:
    """Acts from what it sees (some actions outside the box, to be clipped) and records every input."""

    def __init__(self):
        self.calls = []

    def __call__(self, obs, prev_action, prev_reward, start, generator):
        i = len(self.calls)
        action = (1.7 * np.sin(3.0 * obs + 0.7 * i + np.arange(obs.shape[0])[:, None])).astype(np.float32)
        self.calls.append([x.copy() for x in (obs, prev_action, prev_reward, start, action)])
        return action


def test_rollout_against_pointnav_simulated_by_hand():
    """Every input the policy sees and every number rollout returns, rebuilt from the recorded actions
    with PointNav's definition (start at the origin, move by 0.1 x the clipped action, reward = -distance
    to the goal): the previous action and reward carry across episodes, the start flag marks each
    episode's first step, the controls change only the reward seen, returns are always the true ones."""
    goals = [[1.0, 0.0], [0.0, 1.0], [-0.6, 0.8]]
    tasks = [{"goal": g} for g in goals]
    controls, seeds, horizon, episodes = ("none", "zero_reward", "other_task_reward"), [0, 5], 4, 3
    policy = RecordingPolicy()
    returns, obs_mean, obs_last = rollout(
        "PointNav", tasks, horizon, episodes, seeds, policy, controls=controls, with_observations=True
    )
    assert returns.shape == (3, 2, 3, episodes) and obs_mean.shape == obs_last.shape == (3, 2, 3, episodes, 2)
    assert len(policy.calls) == horizon * episodes
    for row in range(3 * 2 * 3):
        c, s, j = np.unravel_index(row, (3, 2, 3))
        seen_goal = goals[(j + 1) % 3]  # the other-task control's derangement: task j sees task j+1's
        prev_action, prev_reward = np.zeros(2), 0.0
        for e in range(episodes):
            pos, total, seen_obs = np.zeros(2), 0.0, []
            for t in range(horizon):
                obs, p_action, p_reward, start, action = (x[row] for x in policy.calls[e * horizon + t])
                assert start == (1.0 if t == 0 else 0.0)
                np.testing.assert_allclose(obs, pos, atol=1e-6)
                np.testing.assert_allclose(p_action, prev_action, atol=1e-7)
                assert p_reward == pytest.approx(prev_reward, abs=1e-6)
                seen_obs.append(obs)
                clipped = np.clip(action, -1.0, 1.0)
                pos = pos + 0.1 * clipped
                reward = -np.linalg.norm(pos - goals[j])
                total += reward
                prev_action = clipped
                prev_reward = {
                    "none": reward,
                    "zero_reward": 0.0,
                    "other_task_reward": -np.linalg.norm(pos - seen_goal),
                }[controls[c]]
            assert returns[c, s, j, e] == pytest.approx(total, abs=1e-5)
            np.testing.assert_allclose(obs_mean[c, s, j, e], np.mean(seen_obs, 0), atol=1e-6)
            np.testing.assert_allclose(obs_last[c, s, j, e], seen_obs[-1], atol=1e-6)
    assert np.abs(np.concatenate([call[4] for call in policy.calls])).max() > 1.0  # clipping was exercised


def test_held_out_tasks_are_the_test_split_as_stored_and_a_dataset_without_them_is_refused(dataset, tmp_path):
    import json

    with h5py.File(dataset, "r") as f:
        stored = [(tid, json.loads(g.attrs["task"])) for tid, g in f["tasks"].items() if g.attrs["split"] == "test"]
    assert held_out_tasks(dataset) == stored and len(stored) == 4
    assert all(tid.startswith("test-") for tid, _ in stored)
    with pytest.raises(DatasetError, match="no test tasks to evaluate on; set tasks.n_test >= 1"):
        held_out_tasks(with_every_task_in("train", dataset, tmp_path / "no_test.h5"))


def test_model_policy_times_each_episode_and_steps_the_models_own_recurrence():
    """The policy's actions are the model's step outputs on its running state (here the mean action), and
    its clocks add up: total seconds = the episodes' seconds, one step counted per call."""
    torch.manual_seed(0)
    model = build("mamba", 2, 2, d_model=8)
    policy = ModelPolicy(model, 3, sample=False)
    assert not policy.model.training and policy.steps == 0 and policy.step_seconds == 0.0
    state = model.init_state(3)
    rng = np.random.default_rng(0)
    for call in range(7):
        inputs = [rng.normal(size=(3, 2)), rng.normal(size=(3, 2)), rng.normal(size=3), np.full(3, call % 3 == 0)]
        inputs = [x.astype(np.float32) for x in inputs]
        action = policy(*inputs, None)
        with torch.no_grad():
            mean, _, state = model.step(*[torch.from_numpy(x) for x in inputs], state)
        np.testing.assert_allclose(action, mean.numpy(), rtol=1e-5, atol=1e-6)
    assert policy.steps == 7 and len(policy.episode_seconds) == 3  # episodes start at calls 0, 3 and 6
    assert policy.step_seconds == pytest.approx(sum(policy.episode_seconds)) and policy.step_seconds > 0


class StepClock:
    """A perf_counter whose n-th reading advances by n milliseconds: the model's k-th step then measures
    (2k + 1) ms, so every episode has its own, known, cost."""

    def __init__(self):
        self.calls, self.now = 0, 0.0

    def perf_counter(self):
        self.now += self.calls * 1e-3
        self.calls += 1
        return self.now


def test_cost_file_against_a_known_clock_and_the_models_horizon(cfg, dataset, models, tmp_path, monkeypatch):
    import adbench.evaluate as evaluate_module
    from adbench.models import checkpoint

    # a model trained on 10-step episodes (the family's default and this dataset's are 50): its evaluation
    # episodes last 10 steps
    contents = checkpoint.load(models["mamba"])
    contents.pop("digest")
    contents["meta"]["horizon"] = horizon = 10
    checkpoint.save(tmp_path / "m.pt", contents)
    monkeypatch.setattr(evaluate_module, "time", StepClock())
    cfg["evaluate"].update(episodes=3, seeds=[0])
    evaluate_model(cfg, dataset, tmp_path / "m.pt", tmp_path / "e.csv", tmp_path / "c.csv", progress=False)
    cost = pd.read_csv(tmp_path / "c.csv").iloc[0]
    info = validate_file(dataset)
    assert info["T"] // info["E"] == 50
    step_ms = 2.0 * np.arange(3 * horizon) + 1.0
    assert cost["ms_per_step"] == pytest.approx(step_ms.mean())
    assert cost["ms_per_step_first_episode"] == pytest.approx(step_ms[:horizon].mean())
    assert cost["ms_per_step_last_episode"] == pytest.approx(step_ms[-horizon:].mean())
    model, _ = load_checkpoint(models["mamba"])
    batch = (1 + len(cfg["evaluate"]["controls"])) * 4  # controls x test tasks
    assert cost["state_mib"] == pytest.approx(state_mib(model.init_state(batch)))  # Mamba's state: fixed size
    assert cost["train_env_steps"] == info["n_train"] * info["H"] * info["T"] + info["expert_env_steps"]
    assert cost["source"] == info["source"] and cost["seed"] == 0
    assert cost["episode_stride"] == contents["meta"]["episode_stride"]  # where the figures place the source
    # the commits behind the row: the histories', the training's (this checkout's) and the evaluation's
    with h5py.File(dataset) as f:
        assert cost["dataset_commit"] == f.attrs["git_revision"]
    assert cost["model_commit"] == contents["meta"]["commit"] == git_revision() == cost["evaluate_commit"]


def test_each_episode_starts_from_its_own_seeded_state_the_same_under_every_control():
    """MuJoCo resets are noisy: an evaluation episode's initial state is drawn from (eval seed, episode,
    task), the same for every control so that controls are compared from the same start."""
    starts = []

    def recorder(obs, prev_action, prev_reward, start, generator):
        if start[0]:
            starts.append(obs.copy())
        return np.zeros((len(obs), 6), np.float32)

    tasks = sample_tasks("HalfCheetahVel", 2, 0)
    rollout("HalfCheetahVel", tasks, 2, 2, [0, 1], recorder, controls=("none", "zero_reward"))
    first, second = (s.reshape(2, 2, 2, -1) for s in starts)  # (control, seed, task, obs)
    np.testing.assert_array_equal(first[0], first[1])  # every control starts where the others do
    np.testing.assert_array_equal(second[0], second[1])
    # and its own for every (evaluation seed, task, episode)
    own = np.concatenate([first[0].reshape(4, -1), second[0].reshape(4, -1)])
    assert len({tuple(np.round(o, 6)) for o in own}) == 8


def test_task_switch_makes_the_next_task_the_true_one_half_way():
    """A policy that ignores what it sees acts the same under every control: under task_switch its returns
    are task j's before the switch and task j+1's (its own reset states) after it."""
    tasks = sample_tasks("PointNav", 4, 5)
    returns = rollout("PointNav", tasks, 50, 8, [0], EpisodeSchedulePolicy(), controls=("none", "task_switch"))
    none, switched = returns[0, 0], returns[1, 0]  # (tasks, episodes)
    np.testing.assert_allclose(switched[:, :4], none[:, :4])
    np.testing.assert_allclose(switched[:, 4:], np.roll(none, -1, axis=0)[:, 4:], rtol=1e-6)


class ResearchingClimber(RewardHillClimber):
    """The hill climber that searches again when an exploiting episode earns much less than the best it
    remembers (the task has changed)."""

    def __call__(self, obs, prev_action, prev_reward, start, generator):
        if start[0] and self.episode >= len(self.ANGLES) and self.t:
            dropped = self.current + prev_reward < self.returns.max(axis=1) - 20
            if dropped.any():  # every row restarts together: the batch shares one episode clock
                self.returns[:], self.episode = -np.inf, -1
        return super().__call__(obs, prev_action, prev_reward, start, generator)


def _recovery(returns, control: int):
    """Switch recovery (scores.run_scores' definition) of one control's runs, with its CI."""
    from adbench.measures import switch_episode

    episodes = returns.shape[-1]
    after = returns[control, ..., switch_episode(episodes) :]
    k = edge(after.shape[-1])
    gain = after[..., -k:].mean(-1) - after[..., :k].mean(-1)  # (eval seeds, tasks)
    return interval(np.swapaxes(gain, 0, 1)[None], "mean", 0)


def test_task_switch_recovery_fails_a_schedule_and_a_policy_that_commits_and_passes_a_searcher():
    tasks, episodes = sample_tasks("PointNav", 8, 3), 24
    controls = ("none", "task_switch")
    schedule = rollout("PointNav", tasks, 50, episodes, [0, 1], EpisodeSchedulePolicy(), controls=controls)
    committed = rollout("PointNav", tasks, 50, episodes, [0, 1], RewardHillClimber(2 * 2 * 8), controls=controls)
    searcher = rollout("PointNav", tasks, 50, episodes, [0, 1], ResearchingClimber(2 * 2 * 8), controls=controls)
    assert _recovery(schedule, 1)[1] <= 0.0  # its returns improved before the switch, by the schedule
    assert _recovery(committed, 1)[1] <= 0.0  # it found task j, and keeps heading there
    assert _recovery(searcher, 1)[1] > 5.0


def test_references_hold_every_floor_on_the_evaluated_tasks(cfg, dataset, tmp_path):
    """Random, zero-action and task-blind (PointNav's oracle told the training goals' mean) floors, each on
    every (eval seed, test task, episode); the task-blind floor beats random and the source ends above it."""
    evaluate_references(cfg, dataset, tmp_path / "ref.csv", progress=False)
    df = pd.read_csv(tmp_path / "ref.csv")
    floors = df[df["arch"] != "source"]
    per_floor = len(cfg["evaluate"]["seeds"]) * 4 * cfg["evaluate"]["episodes"]
    assert floors.groupby("arch").size().to_dict() == {"random": per_floor, "task_blind": per_floor, "zero": per_floor}
    assert set(floors["task"]) == {f"test-{i:04d}" for i in range(4)}
    level = floors.groupby("arch")["return"].mean()
    assert level["zero"] == pytest.approx(-50.0)  # it stays at the origin, a unit from every goal
    assert level["task_blind"] > level["random"]


def test_a_tuning_run_evaluates_the_validation_tasks(cfg, dataset, models, tmp_path):
    cfg["evaluate"].update(episodes=3, seeds=[0], split="val")
    evaluate_model(cfg, dataset, models["mamba"], tmp_path / "e.csv", progress=False)
    evaluate_references(cfg, dataset, tmp_path / "ref.csv", progress=False)
    val = {f"val-{i:04d}" for i in range(cfg["tasks"]["n_val"])}
    assert set(pd.read_csv(tmp_path / "e.csv")["task"]) == val
    refs = pd.read_csv(tmp_path / "ref.csv")
    assert set(refs.loc[refs["arch"] == "random", "task"]) == val


def test_mambas_sliding_context_acts_as_a_fresh_state_fed_only_the_last_episodes():
    """window 2, episodes of 3 steps: in episode 4 the sliding policy's actions are those of a fresh
    state fed episode 3's tokens then episode 4's; before the window fills it is the plain recurrence."""
    torch.manual_seed(0)
    model = build("mamba", 3, 2, d_model=8, n_layers=2).eval()
    rng = np.random.default_rng(1)
    episodes = [
        [
            (
                rng.normal(size=(2, 3)).astype(np.float32),
                rng.normal(size=(2, 2)).astype(np.float32),
                rng.normal(size=2).astype(np.float32),
                np.full(2, float(t == 0), np.float32),
            )
            for t in range(3)
        ]
        for _ in range(5)
    ]
    sliding, recurrent = ModelPolicy(model, 2, False, window_episodes=2), ModelPolicy(model, 2, False)
    actions = {"sliding": [], "recurrent": []}
    for episode in episodes:
        for token in episode:
            actions["sliding"].append(sliding(*token, None))
            actions["recurrent"].append(recurrent(*token, None))
    np.testing.assert_array_equal(np.stack(actions["sliding"][:6]), np.stack(actions["recurrent"][:6]))
    fresh = ModelPolicy(model, 2, False)
    expected = [fresh(*token, None) for token in episodes[3] + episodes[4]][3:]
    np.testing.assert_allclose(np.stack(actions["sliding"][12:]), np.stack(expected), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.stack(actions["sliding"][12:]), np.stack(actions["recurrent"][12:]))


def test_the_switch_comes_half_way_rounded_down():
    from adbench.measures import switch_episode

    assert [switch_episode(n) for n in (1, 2, 7, 24, 25)] == [1, 1, 3, 12, 12]
