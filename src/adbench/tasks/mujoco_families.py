"""The four continuous MuJoCo meta-RL families, on gymnasium's v5 environments.

A task is fixed at construction and never appears in the observation. Episodes last `horizon`
steps (200 by default, the PEARL / VariBAD horizon) with early termination off, so every episode
has the same length. Rewards (see shared/mission/task-families.md):

- HalfCheetahVel (VariBAD `half_cheetah_vel`, PEARL `half_cheetah_vel`): -|v_x - v*| - 0.05 |a|^2,
  v* ~ U[0, 3].
- AntDir (PEARL `ant_dir`, full circle): v_xy . (cos phi, sin phi) - 0.5 |a|^2 + 1, phi ~ U[0, 2 pi).
- AntGoal (PEARL `ant_goal`, ProMP `ant_rand_goal`): -|xy - g|_1 - 0.1 |a|^2 + 1, g uniform in the
  disc of radius 3 (angle U[0, 2 pi), radius 3 sqrt(U)); x, y stay in the observation.
- Walker2dParams (rand_param_envs `walker2d_rand_params`, used by MAML / PEARL): body masses,
  inertias and geom frictions scaled elementwise by 1.5^U(-3, 3), joint damping by 1.3^U(-3, 3);
  the base env's reward (forward velocity + healthy reward - 0.001 |a|^2).

Velocities are the torso's displacement over one control step (its free or slide joint
coordinates, qpos) divided by dt; gymnasium's Ant measures the torso body frame instead, which
lags the joint coordinates by one integration step. The survive bonus of the Ant families is a constant 1 per
step (PEARL's); with termination
off it shifts returns without changing the optimal policy. Ant observations exclude contact forces
(27 dims; AntGoal 29 with x, y).
"""

import copy
import math

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

from .base import TaskError, require_keys

MASS_BASE, DAMPING_BASE, LOG_SCALE_RANGE = 1.5, 1.3, 3.0
ANT_KWARGS = {"include_cfrc_ext_in_observation": False, "terminate_when_unhealthy": False}


def _number(family: str, task: dict, key: str, low: float, high: float, high_open=False) -> float:
    value = task[key]
    ok = isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)
    if not ok or value < low or value > high or (high_open and value >= high):
        bracket = ")" if high_open else "]"
        raise TaskError(f"{family}: task key {key!r} must be a number in [{low}, {high:.6g}{bracket}, got {value!r}")
    return float(value)


# --- rewards, as pure functions of what the simulator reports (the tests recompute them) ---


def half_cheetah_vel_reward(x_velocity: float, action: np.ndarray, velocity: float) -> float:
    return -abs(x_velocity - velocity) - 0.05 * float(action @ action)


def ant_dir_reward(xy_velocity: np.ndarray, action: np.ndarray, angle: float) -> float:
    along = xy_velocity[0] * math.cos(angle) + xy_velocity[1] * math.sin(angle)
    return float(along) - 0.5 * float(action @ action) + 1.0


def ant_goal_reward(xy: np.ndarray, action: np.ndarray, goal) -> float:
    return -float(abs(xy[0] - goal[0]) + abs(xy[1] - goal[1])) - 0.1 * float(action @ action) + 1.0


class MujocoTaskEnv(gym.Env):
    """A v5 MuJoCo env with one fixed task, a fixed horizon and no termination."""

    metadata = {"render_modes": []}
    family: str
    base_class: type
    base_kwargs: dict = {}

    def __init__(self, task=None, horizon: int = 200):
        self._env = self.base_class(**self.base_kwargs)
        self.task = self.check_task(task if task is not None else self.default_task(self._env))
        self.horizon = int(horizon)
        self.observation_space = self._env.observation_space
        self.action_space = self._env.action_space
        self._t = 0
        # cached: gymnasium computes dt from the model on every access
        self._dt, self._frame_skip = self._env.dt, self._env.frame_skip
        self._low, self._high = self.action_space.low.astype(np.float64), self.action_space.high.astype(np.float64)
        self.apply_task()

    @staticmethod
    def default_task(env) -> dict:
        raise NotImplementedError

    def check_task(self, task) -> dict:
        raise NotImplementedError

    def apply_task(self) -> None:
        """Change the simulator for this task (dynamics families only)."""

    reward_varies = True  # the task changes the reward (False: it changes the dynamics)

    def task_reward(self, action: np.ndarray, velocity: np.ndarray, task: dict | None = None) -> float:
        """The family's reward after a step under `task` (default: this env's); velocity is
        (d qpos[0], d qpos[1]) / dt."""
        raise NotImplementedError

    def reward_under(self, task: dict) -> float | None:
        """What the last step would have earned under another task of a reward-varying family
        (the reward-ablation control); None for dynamics families, where it is not defined."""
        return self.task_reward(*self._last, task) if self.reward_varies else None

    @property
    def model(self):
        return self._env.model

    @property
    def data(self):
        return self._env.data

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        obs, _ = self._env.reset(seed=seed)
        self._t = 0
        return obs, {"task": copy.deepcopy(self.task)}

    def transition(self, action):
        """One control step without the info dict: (obs, reward, truncated, velocity).

        Steps MuJoCo directly (ctrl, then `frame_skip` physics steps) and reads the observation with
        the v5 env's own `_get_obs`; what the batched stepper calls, so single and batched envs agree.
        The three parts are separate so that the batched stepper can run `simulate` on threads.
        """
        self.apply_action(self.clip_action(action))
        self.simulate()
        return self.observe()

    def clip_action(self, action) -> np.ndarray:
        """Into the action box, float64; works on one action or a stack of them."""
        return np.minimum(np.maximum(np.asarray(action, dtype=np.float64), self._low), self._high)

    def apply_action(self, action: np.ndarray) -> None:
        """Set the controls to an already clipped action (see `clip_action`)."""
        self._before, self._action = self.data.qpos[:2].copy(), action
        self.data.ctrl[:] = action

    def simulate(self) -> None:
        """The physics of one control step; touches nothing but this env's MjData (GIL released)."""
        mujoco.mj_step(self.model, self.data, nstep=self._frame_skip)

    def observe(self):
        self._t += 1
        action, velocity = self._action, (self.data.qpos[:2] - self._before) / self._dt
        self._last = (action, velocity)
        return self._env._get_obs(), self.task_reward(action, velocity), self._t >= self.horizon, velocity

    def step(self, action):
        obs, reward, truncated, velocity = self.transition(action)
        info = {
            "task": copy.deepcopy(self.task),
            "x_position": float(self.data.qpos[0]),
            "x_velocity": float(velocity[0]),
        }
        return obs, reward, False, truncated, info


class HalfCheetahVelEnv(MujocoTaskEnv):
    family, base_class = "HalfCheetahVel", HalfCheetahEnv

    @staticmethod
    def sample(rng: np.random.Generator, n: int) -> list:
        return [{"velocity": float(v)} for v in rng.uniform(0.0, 3.0, size=n)]

    @staticmethod
    def default_task(env) -> dict:
        return {"velocity": 1.0}

    @classmethod
    def check_task(cls, task) -> dict:
        require_keys(cls.family, task, ("velocity",))
        return {"velocity": _number(cls.family, task, "velocity", 0.0, 3.0)}

    def task_reward(self, action, velocity, task=None):
        return half_cheetah_vel_reward(velocity[0], action, (task or self.task)["velocity"])


class AntDirEnv(MujocoTaskEnv):
    family, base_class, base_kwargs = "AntDir", AntEnv, ANT_KWARGS

    @staticmethod
    def sample(rng: np.random.Generator, n: int) -> list:
        return [{"angle": float(a)} for a in rng.uniform(0.0, 2 * math.pi, size=n)]

    @staticmethod
    def default_task(env) -> dict:
        return {"angle": 0.0}

    @classmethod
    def check_task(cls, task) -> dict:
        require_keys(cls.family, task, ("angle",))
        return {"angle": _number(cls.family, task, "angle", 0.0, 2 * math.pi, high_open=True)}

    def task_reward(self, action, velocity, task=None):
        return ant_dir_reward(velocity, action, (task or self.task)["angle"])


class AntGoalEnv(MujocoTaskEnv):
    family, base_class = "AntGoal", AntEnv
    base_kwargs = {**ANT_KWARGS, "exclude_current_positions_from_observation": False}

    @staticmethod
    def sample(rng: np.random.Generator, n: int) -> list:
        angle, radius = rng.uniform(0.0, 2 * math.pi, size=n), 3.0 * np.sqrt(rng.uniform(0.0, 1.0, size=n))
        return [{"goal": [float(r * math.cos(a)), float(r * math.sin(a))]} for a, r in zip(angle, radius)]

    @staticmethod
    def default_task(env) -> dict:
        return {"goal": [1.0, 1.0]}

    @classmethod
    def check_task(cls, task) -> dict:
        require_keys(cls.family, task, ("goal",))
        goal = (
            np.asarray(task["goal"], dtype=np.float64) if isinstance(task["goal"], (list, tuple, np.ndarray)) else None
        )
        if goal is None or goal.shape != (2,) or not np.all(np.isfinite(goal)) or np.linalg.norm(goal) > 3.0 + 1e-9:
            raise TaskError(
                f"{cls.family}: task key 'goal' must be [x, y] inside the disc of radius 3, got {task['goal']!r}"
            )
        return {"goal": [float(goal[0]), float(goal[1])]}

    def task_reward(self, action, velocity, task=None):
        return ant_goal_reward(self.data.qpos[:2], action, (task or self.task)["goal"])


WALKER_PARAMS = {
    "body_mass": MASS_BASE,
    "body_inertia": MASS_BASE,
    "geom_friction": MASS_BASE,
    "dof_damping": DAMPING_BASE,
}


class Walker2dParamsEnv(MujocoTaskEnv):
    family, base_class, base_kwargs = "Walker2dParams", Walker2dEnv, {"terminate_when_unhealthy": False}
    _shapes: dict = {}

    @classmethod
    def shapes(cls) -> dict:
        if not cls._shapes:
            model = Walker2dEnv().model
            cls._shapes = {k: getattr(model, k).shape for k in WALKER_PARAMS}
        return cls._shapes

    @classmethod
    def sample(cls, rng: np.random.Generator, n: int) -> list:
        return [
            {
                k: (base ** rng.uniform(-LOG_SCALE_RANGE, LOG_SCALE_RANGE, size=cls.shapes()[k])).tolist()
                for k, base in WALKER_PARAMS.items()
            }
            for _ in range(n)
        ]

    @staticmethod
    def default_task(env) -> dict:
        return {k: np.ones(getattr(env.model, k).shape).tolist() for k in WALKER_PARAMS}

    @classmethod
    def check_task(cls, task) -> dict:
        require_keys(cls.family, task, tuple(WALKER_PARAMS))
        out = {}
        for key, base in WALKER_PARAMS.items():
            value = np.asarray(task[key], dtype=np.float64)
            lo, hi = base**-LOG_SCALE_RANGE, base**LOG_SCALE_RANGE
            if value.shape != cls.shapes()[key]:
                raise TaskError(
                    f"{cls.family}: task key {key!r} must have shape {cls.shapes()[key]}, got {value.shape}"
                )
            if not np.all(np.isfinite(value)) or value.min() < lo - 1e-9 or value.max() > hi + 1e-9:
                raise TaskError(f"{cls.family}: task key {key!r} scale factors must lie in [{lo:.4g}, {hi:.4g}]")
            out[key] = value.tolist()
        return out

    def apply_task(self) -> None:
        # Each env loads its own MjModel, so scaling it never touches another task's physics.
        for key in WALKER_PARAMS:
            getattr(self.model, key)[:] = getattr(self.model, key) * np.asarray(self.task[key])
        mujoco.mj_setConst(self.model, self.data)

    reward_varies = False

    def task_reward(self, action, velocity, task=None):
        return float(self._env._get_rew(velocity[0], action)[0])  # the v5 env's own reward
