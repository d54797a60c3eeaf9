import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import gymnasium as gym
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


@pytest.mark.parametrize("task, words", [
    ({}, ["PointNav", "missing key 'goal'"]),
    ({"goal": [1.0]}, ["PointNav", "'goal'", "2 finite numbers"]),
    ({"goal": [0.0, -1.0]}, ["PointNav", "'goal'", "upper unit half-circle"]),
    ([0, 1], ["PointNav", "must be a dict"]),
])
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
