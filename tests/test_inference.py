"""The task-inference diagnostic reads the simulator's own quantities; task features describe the task."""

import math

import numpy as np
import pytest

from adbench.tasks import BatchedTasks, make_env, sample_tasks
from adbench.tasks.inference import diagnose, task_features


def _episode(family, task, horizon=40, seed=0):
    """Stored observations of one random-action episode, and the simulator's qpos / qvel before each step."""
    env = make_env(family, task, horizon)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    observations, qpos, qvel = [], [], []
    for _ in range(horizon):
        observations.append(obs)
        qpos.append(env.data.qpos.copy())
        qvel.append(env.data.qvel.copy())
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
    return np.array(observations), np.array(qpos), np.array(qvel)


def test_half_cheetah_achieved_is_the_mean_forward_velocity():
    task = {"velocity": 2.5}
    obs, _, qvel = _episode("HalfCheetahVel", task)
    d = diagnose("HalfCheetahVel", [task], obs.mean(0, keepdims=True), obs[-1:])
    assert d.quantity == "forward_velocity"
    np.testing.assert_allclose(d.achieved, [qvel[:, 0].mean()], rtol=1e-5)
    np.testing.assert_allclose(d.error, [abs(qvel[:, 0].mean() - 2.5)], rtol=1e-5)


def test_ant_dir_achieved_is_the_angle_of_mean_planar_velocity():
    task = {"angle": 5.9}
    obs, _, qvel = _episode("AntDir", task)
    d = diagnose("AntDir", [task], obs.mean(0, keepdims=True), obs[-1:])
    angle = math.atan2(qvel[:, 1].mean(), qvel[:, 0].mean()) % (2 * math.pi)
    np.testing.assert_allclose(d.achieved, [angle], rtol=1e-5)
    gap = abs(angle - 5.9)
    np.testing.assert_allclose(d.error, [min(gap, 2 * math.pi - gap)], rtol=1e-5)
    assert 0 <= d.error[0] <= math.pi


def test_angular_error_wraps_around_the_circle():
    obs = np.zeros((2, 27))
    obs[:, 13], obs[:, 14] = math.cos(0.1), math.sin(0.1)  # travelling at angle 0.1
    d = diagnose("AntDir", [{"angle": 2 * math.pi - 0.1}, {"angle": 0.1 + math.pi}], obs, obs)
    np.testing.assert_allclose(d.error, [0.2, math.pi], atol=1e-9)


def test_ant_goal_achieved_is_the_last_distance_to_the_goal():
    task = {"goal": [-1.0, 2.0]}
    obs, qpos, _ = _episode("AntGoal", task)
    d = diagnose("AntGoal", [task], obs.mean(0, keepdims=True), obs[-1:])
    np.testing.assert_allclose(d.achieved, [math.dist(qpos[-1, :2], task["goal"])], rtol=1e-5)
    np.testing.assert_allclose(d.error, d.achieved)


def test_walker_has_no_target_and_reports_forward_velocity():
    task = sample_tasks("Walker2dParams", 1, 3)[0]
    obs, _, qvel = _episode("Walker2dParams", task)
    d = diagnose("Walker2dParams", [task], obs.mean(0, keepdims=True), obs[-1:])
    np.testing.assert_allclose(d.achieved, [qvel[:, 0].mean()], rtol=1e-5)
    assert np.isnan(d.target).all() and np.isnan(d.error).all()


def test_diagnose_works_per_row_of_a_batch():
    tasks = sample_tasks("HalfCheetahVel", 3, 0)
    obs = np.random.default_rng(0).normal(size=(3, 17))
    d = diagnose("HalfCheetahVel", tasks, obs, obs)
    np.testing.assert_allclose(d.target, [t["velocity"] for t in tasks])
    np.testing.assert_allclose(d.error, np.abs(obs[:, 8] - d.target))


@pytest.mark.parametrize("family", ["PointNav", "HalfCheetahVel", "AntDir", "AntGoal", "Walker2dParams"])
def test_task_features_tell_tasks_apart_and_are_bounded(family):
    tasks = sample_tasks(family, 6, 1)
    feats = np.stack([task_features(family, t) for t in tasks])
    assert feats.ndim == 2 and np.isfinite(feats).all()
    assert len({f.tobytes() for f in feats}) == 6
    assert np.abs(feats).max() <= 3.0 + 1e-9


def test_walker_features_are_the_log_scale_exponents():
    task = {k: v for k, v in make_env("Walker2dParams", sample_tasks("Walker2dParams", 1, 0)[0]).task.items()}
    feats = task_features("Walker2dParams", task)
    assert feats[0] == pytest.approx(math.log(task["body_mass"][0]) / math.log(1.5))
    assert feats[-1] == pytest.approx(math.log(task["dof_damping"][-1]) / math.log(1.3))


def test_batched_rollout_diagnostic_matches_single_envs():
    """The evaluation's running observation mean gives what the stored observations give."""
    from adbench.evaluate import rollout

    tasks = sample_tasks("HalfCheetahVel", 2, 5)
    actions = np.random.default_rng(1).uniform(-1, 1, (200, 6)).astype(np.float32)

    class Replay:
        t = 0

        def __call__(self, obs, *_):
            a = np.repeat(actions[self.t % 20][None], len(obs), 0)
            self.t += 1
            return a

    returns, mean, last = rollout("HalfCheetahVel", tasks, 20, 2, [0], Replay(), with_observations=True)
    assert mean.shape == (1, 1, 2, 2, 17) and last.shape == mean.shape
    env = BatchedTasks("HalfCheetahVel", tasks, 20)
    from adbench.seeding import derive_seed

    obs = env.reset(seeds=[derive_seed(0, "reset", 1, j) % 2**31 for j in range(2)])
    stored = []
    for t in range(20):
        stored.append(obs)
        obs, *_ = env.step(np.repeat(actions[t][None], 2, 0))
    stored = np.array(stored)
    np.testing.assert_allclose(mean[0, 0, :, 1], stored.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(last[0, 0, :, 1], stored[-1], rtol=1e-6)
