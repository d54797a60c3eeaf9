import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from adbench.tasks import FAMILIES, BatchedTasks, TaskError, make_env, sample_tasks, split_tasks


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_registered_env_passes_gymnasium_checker(family):
    task = sample_tasks(family, 1, 0)[0]
    env = gym.make(f"adbench/{family}-v0", task=task)
    check_env(env.unwrapped)
    _, info = env.reset(seed=0)
    assert info["task"] == FAMILIES[family].check_task(task)


def test_pointnav_reward_is_minus_distance_after_the_move():
    env = make_env("PointNav", {"goal": [0.0, 1.0]})
    env.reset(seed=0)
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5, 1.0]))
    np.testing.assert_allclose(obs, [0.05, 0.1], atol=1e-7)
    assert reward == pytest.approx(-np.hypot(0.05, 0.9))
    assert not terminated and not truncated
    other = make_env("PointNav", {"goal": [1.0, 0.0]})
    other.reset(seed=0)
    assert other.step(np.array([0.5, 1.0]))[1] == pytest.approx(-np.hypot(0.95, 0.1))


def test_actions_are_clipped_and_episodes_last_the_horizon():
    env = make_env("PointNav", {"goal": [0.0, 1.0]}, horizon=7)
    env.reset()
    for t in range(7):
        obs, _, terminated, truncated, _ = env.step(np.array([5.0, -5.0]))
        assert not terminated
        assert truncated == (t == 6)
    np.testing.assert_allclose(obs, [0.7, -0.7], atol=1e-6)


def test_split_is_deterministic_disjoint_and_seed_dependent():
    train, test = split_tasks("PointNav", 10, 5, seed=3)
    assert (train, test) == split_tasks("PointNav", 10, 5, seed=3)
    assert not {repr(t) for t in train} & {repr(t) for t in test}
    assert split_tasks("PointNav", 10, 5, seed=4)[0] != train
    for t in train + test:
        g = np.array(t["goal"])
        assert np.linalg.norm(g) == pytest.approx(1.0) and g[1] >= 0


@pytest.mark.parametrize(
    "task, words",
    [
        ({}, ["PointNav", "missing key 'goal'"]),
        ({"goal": [1.0]}, ["PointNav", "'goal'", "2 finite numbers"]),
        ({"goal": [0.0, -1.0]}, ["PointNav", "'goal'", "upper unit half-circle"]),
        ([0, 1], ["PointNav", "must be a dict"]),
    ],
)
def test_malformed_tasks_are_rejected_in_one_line(task, words):
    with pytest.raises(TaskError) as err:
        make_env("PointNav", task)
    assert "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_unknown_family_names_the_known_ones():
    with pytest.raises(TaskError, match="unknown task family 'Cheetah'.*PointNav"):
        sample_tasks("Cheetah", 1, 0)


def test_batched_stepper_matches_single_envs():
    tasks = sample_tasks("PointNav", 3, 1)
    batch = BatchedTasks("PointNav", tasks, horizon=5)
    singles = [make_env("PointNav", t, 5) for t in tasks]
    obs = batch.reset(seed=0)
    for env in singles:
        env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.uniform(-1, 1, size=(3, 2)).astype(np.float32)
        obs, rew, term, trunc = batch.step(a)
        for i, env in enumerate(singles):
            o, r, te, tr, _ = env.step(a[i])
            np.testing.assert_array_equal(obs[i], o)
            assert rew[i] == pytest.approx(r) and term[i] == te and trunc[i] == tr
    assert trunc.all()


# --- the MuJoCo families ---

MUJOCO = ["HalfCheetahVel", "AntDir", "AntGoal", "Walker2dParams"]


def _rollout(env, actions):
    """Yield (action, reward, info, qpos_before, qpos_after) for each step."""
    for a in actions:
        before = env.data.qpos.copy()
        _, reward, terminated, _, info = env.step(a)
        assert not terminated
        yield a, reward, info, before, env.data.qpos.copy()


def test_half_cheetah_vel_reward_is_the_velocity_error_and_control_cost():
    rng = np.random.default_rng(0)
    for velocity in (0.5, 2.5):
        env = make_env("HalfCheetahVel", {"velocity": velocity})
        env.reset(seed=1)
        for a, reward, _, before, after in _rollout(env, rng.uniform(-1, 1, (30, 6))):
            v_x = (after[0] - before[0]) / env._env.dt
            assert reward == pytest.approx(-abs(v_x - velocity) - 0.05 * np.sum(a**2), abs=1e-9)


def test_ant_dir_reward_is_the_velocity_along_the_direction():
    rng = np.random.default_rng(0)
    angle = 2.0
    env = make_env("AntDir", {"angle": angle})
    obs, _ = env.reset(seed=1)
    assert obs.shape == (27,)
    for a, reward, _, before, after in _rollout(env, rng.uniform(-1, 1, (30, 8))):
        v = (after[:2] - before[:2]) / env._env.dt
        expected = v @ [np.cos(angle), np.sin(angle)] - 0.5 * np.sum(a**2) + 1.0
        assert reward == pytest.approx(expected, abs=1e-6)


def test_ant_goal_reward_is_the_l1_distance_and_keeps_xy_in_the_observation():
    rng = np.random.default_rng(0)
    goal = [1.5, -2.0]
    env = make_env("AntGoal", {"goal": goal})
    env.reset(seed=1)
    for a, reward, _, _, after in _rollout(env, rng.uniform(-1, 1, (30, 8))):
        assert reward == pytest.approx(-np.abs(after[:2] - goal).sum() - 0.1 * np.sum(a**2) + 1.0, abs=1e-9)
    obs = env.step(np.zeros(8))[0]
    assert obs.shape == (29,)
    np.testing.assert_allclose(obs[:2], env.data.qpos[:2])


@pytest.mark.parametrize("family", ["HalfCheetahVel", "AntDir", "AntGoal"])
def test_rewards_differ_across_tasks_for_the_same_actions(family):
    tasks = sample_tasks(family, 2, 5)
    actions = np.random.default_rng(0).uniform(-1, 1, (20, 6 if family == "HalfCheetahVel" else 8))
    returns = []
    for task in tasks:
        env = make_env(family, task)
        env.reset(seed=0)
        returns.append(sum(env.step(a)[1] for a in actions))
    assert abs(returns[0] - returns[1]) > 1e-3


def test_walker_params_scale_the_model_as_sampled_and_independently():
    from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

    base = Walker2dEnv().model
    tasks = sample_tasks("Walker2dParams", 2, 0)
    envs = [make_env("Walker2dParams", t) for t in tasks]
    for env, task in zip(envs, tasks):
        for key in ("body_mass", "body_inertia", "geom_friction", "dof_damping"):
            np.testing.assert_allclose(getattr(env.model, key), getattr(base, key) * np.asarray(task[key]))
    scales = np.asarray(tasks[0]["body_mass"])
    assert scales.min() >= 1.5**-3 and scales.max() <= 1.5**3 and scales.std() > 0
    assert np.asarray(tasks[0]["dof_damping"]).max() <= 1.3**3
    # a third env of the first task has exactly the first env's physics: nothing leaked between tasks
    again = make_env("Walker2dParams", tasks[0])
    np.testing.assert_array_equal(again.model.body_mass, envs[0].model.body_mass)
    # dynamics differ: the same actions from the same start give different states
    finals = []
    for env in (envs[0], envs[1]):
        env.reset(seed=0)
        for _ in range(20):
            obs = env.step(np.full(6, 0.5))[0]
        finals.append(obs)
    assert np.abs(finals[0] - finals[1]).max() > 1e-3


def test_walker_reward_is_the_base_env_reward():
    """Forward velocity + 1 while healthy (0.8 < z < 2, |angle| < 1) - 0.001 |a|^2, as Walker2d-v5."""
    env = make_env("Walker2dParams", sample_tasks("Walker2dParams", 1, 0)[0])
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    healthy_seen = set()
    for a, reward, _, before, after in _rollout(env, rng.uniform(-1, 1, (150, 6))):
        healthy = 0.8 < after[1] < 2.0 and -1.0 < after[2] < 1.0
        healthy_seen.add(healthy)
        expected = (after[0] - before[0]) / env._env.dt + float(healthy) - 1e-3 * np.sum(a**2)
        assert reward == pytest.approx(expected, abs=1e-9)
    assert healthy_seen == {True, False}  # random actions make the walker fall: both branches checked


def test_observations_are_the_v5_observations():
    """The fast transition reads the same observation gymnasium's v5 env would return."""
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

    ours, theirs = make_env("HalfCheetahVel", {"velocity": 1.0}), HalfCheetahEnv()
    np.testing.assert_array_equal(ours.reset(seed=3)[0], theirs.reset(seed=3)[0])
    for a in np.random.default_rng(0).uniform(-1, 1, (20, 6)):
        o1, o2 = ours.step(a)[0], theirs.step(a)[0]
        np.testing.assert_allclose(o1, o2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", MUJOCO)
def test_episodes_last_200_steps_without_termination(family):
    env = make_env(family, sample_tasks(family, 1, 0)[0])
    env.reset(seed=0)
    for t in range(200):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample() * 3)
        assert not terminated and truncated == (t == 199)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_seed_same_rollout_different_seed_different(family):
    def run(seed):
        batch = BatchedTasks(family, sample_tasks(family, 2, 0))
        obs = [batch.reset(seed=seed)]
        rng = np.random.default_rng(0)
        for _ in range(10):
            obs.append(batch.step(rng.uniform(-1, 1, (2, batch.act_dim)))[0])
        return np.stack(obs)

    np.testing.assert_array_equal(run(3), run(3))
    assert sample_tasks(family, 3, 1) == sample_tasks(family, 3, 1) != sample_tasks(family, 3, 2)
    if family != "PointNav":  # PointNav always starts at the origin
        assert not np.array_equal(run(3), run(4))


@pytest.mark.parametrize(
    "family, task, words",
    [
        ("HalfCheetahVel", {"velocity": 3.5}, ["HalfCheetahVel", "'velocity'", "[0.0, 3]"]),
        ("HalfCheetahVel", {"speed": 1.0}, ["HalfCheetahVel", "missing key 'velocity'"]),
        ("AntDir", {"angle": -0.1}, ["AntDir", "'angle'", "[0.0, 6.28319)"]),
        ("AntGoal", {"goal": [3.0, 3.0]}, ["AntGoal", "'goal'", "radius 3"]),
        ("AntGoal", {"goal": [1.0, 2.0, 3.0]}, ["AntGoal", "'goal'"]),
        ("Walker2dParams", {"body_mass": [1.0]}, ["Walker2dParams", "missing key"]),
    ],
)
def test_malformed_mujoco_tasks_name_family_key_and_range(family, task, words):
    with pytest.raises(TaskError) as err:
        make_env(family, task)
    for w in words:
        assert w in str(err.value)


def test_walker_task_shapes_and_ranges_are_checked():
    task = sample_tasks("Walker2dParams", 1, 0)[0]
    with pytest.raises(TaskError, match=r"'dof_damping' must have shape \(9,\)"):
        make_env("Walker2dParams", {**task, "dof_damping": [1.0] * 3})
    with pytest.raises(TaskError, match=r"'body_mass' scale factors must lie in \[0.2963, 3.375\]"):
        make_env("Walker2dParams", {**task, "body_mass": [5.0] * 8})


def test_no_mujoco_log_file_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_env("HalfCheetahVel", {"velocity": 1.0}).reset(seed=0)
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


@pytest.mark.parametrize("family", ["PointNav", "HalfCheetahVel", "AntDir", "AntGoal"])
def test_reward_under_another_task_equals_that_tasks_reward_for_the_same_transition(family):
    """The counterfactual reward of the reward-ablation control: same state and action, other task."""
    a, b = sample_tasks(family, 2, 9)
    env_a, env_b = make_env(family, a), make_env(family, b)
    env_a.reset(seed=0)
    env_b.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, env_a.action_space.shape)
        env_a.step(action)
        reward_b = env_b.step(action)[1]  # same start, same actions: same transition
        assert env_a.reward_under(b) == pytest.approx(reward_b, abs=1e-9)


def test_dynamics_family_has_no_counterfactual_reward():
    batch = BatchedTasks("Walker2dParams", sample_tasks("Walker2dParams", 2, 0))
    batch.reset(seed=0)
    batch.step(np.zeros((2, 6)))
    assert not batch.reward_varies
    with pytest.raises(ValueError, match="varies dynamics"):
        batch.rewards_under(batch.tasks[::-1])


@pytest.mark.parametrize("family", ["HalfCheetahVel", "Walker2dParams"])
def test_threaded_physics_gives_the_same_rollout_as_one_thread_and_as_single_envs(family):
    tasks = sample_tasks(family, 5, 0)  # 5 tasks on 2 and 3 threads: uneven groups
    batches = [BatchedTasks(family, tasks, horizon=6, threads=n) for n in (1, 2, 3)]
    singles = [make_env(family, t, horizon=6) for t in tasks]
    first = [b.reset(seed=3) for b in batches]
    single_obs = np.stack([env.reset(seed=3 + i)[0] for i, env in enumerate(singles)]).astype(np.float32)
    for obs in first:
        np.testing.assert_array_equal(obs, single_obs)
    actions = np.random.default_rng(0).uniform(-1.5, 1.5, size=(6, 5, batches[0].act_dim))  # some out of the box
    for t, a in enumerate(actions):
        results = [b.step(a) for b in batches]
        steps = [env.step(x) for env, x in zip(singles, a)]
        for obs, rewards, terminated, truncated in results:
            np.testing.assert_array_equal(obs, np.stack([s[0] for s in steps]).astype(np.float32))
            np.testing.assert_array_equal(rewards, np.array([s[1] for s in steps], dtype=np.float32))
            assert not terminated.any() and truncated.all() == (t == 5)


@pytest.mark.parametrize("family", ["PointNav", "HalfCheetahVel", "AntDir", "AntGoal", "Walker2dParams"])
def test_validation_tasks_are_their_own_draw_apart_from_train_and_test(smoke_config, family):
    import copy

    from adbench.config import shard_sizes
    from adbench.histories import all_tasks

    cfg = copy.deepcopy(smoke_config)
    with_val = all_tasks(cfg, family)
    cfg["tasks"]["n_val"] = 0
    without = all_tasks(cfg, family)
    assert with_val[: len(without)] == without  # adding validation tasks leaves train and test as they were
    val = [task for _, split, task in with_val if split == "val"]
    assert len(val) == smoke_config["tasks"]["n_val"] and len({repr(t) for t in val}) == len(val)
    assert not {repr(t) for t in val} & {repr(t) for _, _, t in without}
    assert [tid for tid, split, _ in with_val if split == "val"] == [f"val-{i:04d}" for i in range(len(val))]
    # the validation tasks fill shards of their own after the train/test shards
    cfg["tasks"].update(n_train=5, n_test=2, n_val=4)
    cfg["source"]["tasks_per_shard"] = 3
    assert shard_sizes(cfg) == [3, 3, 1, 3, 1]
