"""PointNav: a 2-D point that must find a goal on the upper unit half-circle from rewards alone.

After PEARL's point-robot (rlkit `envs/point_robot.py`): start at the origin, reward = -distance to
the goal. Actions live in [-1, 1]^2 like the MuJoCo families and move the point by 0.1 * action
(PEARL clips its actions to [-0.1, 0.1]). Not one of the paper's four families: a fast one for CI.
"""

import copy
import math

import gymnasium as gym
import numpy as np

from .base import TaskError, require_keys

STEP_SIZE = 0.1


def sample(rng: np.random.Generator, n: int) -> list:
    angles = rng.uniform(0.0, math.pi, size=n)
    return [{"goal": [float(math.cos(a)), float(math.sin(a))]} for a in angles]


def check_task(task) -> dict:
    require_keys("PointNav", task, ("goal",))
    goal = np.asarray(task["goal"], dtype=np.float64)
    if goal.shape != (2,) or not np.all(np.isfinite(goal)):
        raise TaskError(f"PointNav: task key 'goal' must be 2 finite numbers [x, y], got {task['goal']!r}")
    if abs(np.linalg.norm(goal) - 1.0) > 1e-6 or goal[1] < -1e-9:
        raise TaskError(
            f"PointNav: task key 'goal' must lie on the upper unit half-circle (|g| = 1, y >= 0), got {goal.tolist()}"
        )
    return {"goal": [float(goal[0]), float(goal[1])]}


def oracle(task: dict, obs: np.ndarray) -> np.ndarray:
    """Head straight for the goal at full speed and stop on it (knows the task: an expert, not a learner)."""
    return np.clip((np.asarray(task["goal"]) - obs) / STEP_SIZE, -1.0, 1.0).astype(np.float32)


class PointNavEnv(gym.Env):
    """The task (goal) is fixed at construction and never shown in the observation (the position)."""

    metadata = {"render_modes": []}

    def __init__(self, task=None, horizon: int = 50):
        self.task = check_task(task if task is not None else {"goal": [0.0, 1.0]})
        self.horizon = int(horizon)
        self._goal = np.asarray(self.task["goal"], dtype=np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._pos = np.zeros(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._pos = np.zeros(2)
        self._t = 0
        return self._pos.astype(np.float32), {"task": copy.deepcopy(self.task)}

    def transition(self, action):
        """One step without the info dict: (obs, reward, truncated, info). What the batched stepper calls."""
        self._pos = self._pos + STEP_SIZE * np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._t += 1
        reward = -float(np.linalg.norm(self._pos - self._goal))
        return self._pos.astype(np.float32), reward, self._t >= self.horizon, {}

    reward_varies = True

    def reward_under(self, task: dict) -> float:
        """What the last step would have earned under another task (the reward-ablation control)."""
        return -float(np.linalg.norm(self._pos - np.asarray(task["goal"])))

    def step(self, action):
        obs, reward, truncated, _ = self.transition(action)
        return obs, reward, False, truncated, {"task": copy.deepcopy(self.task)}
