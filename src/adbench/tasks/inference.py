"""What a task asks and what an episode achieved: task features for a task-conditioned expert, and the
task-inference diagnostic, both per family.

The diagnostic is read from an episode's stored observations o_0 .. o_{T-1} alone (their mean and the
last one), so the source's histories and the in-context evaluation are measured the same way:

- HalfCheetahVel: mean forward velocity (qvel[0], observation 8) against the target velocity.
- AntDir: the angle of the mean planar velocity (qvel[0:2], observations 13-14) against the target
  direction; the error is the wrapped angular distance.
- AntGoal: the distance from the last observed x, y (observations 0-1) to the goal.
- Walker2dParams: mean forward velocity (observation 8); the task sets dynamics, not a target.
- PointNav: the distance from the last observed position to the goal.
"""

import math
from dataclasses import dataclass

import numpy as np

from .mujoco_families import WALKER_PARAMS


@dataclass(frozen=True)
class Diagnostic:
    quantity: str  # what `achieved` measures
    target: np.ndarray  # what the task asks (NaN where it sets dynamics, not a target)
    achieved: np.ndarray
    error: np.ndarray  # how far achieved is from target (NaN where no target)


def task_features(family: str, task: dict) -> np.ndarray:
    """The task as a vector, for an expert that is told the task (AD never sees it)."""
    if family == "HalfCheetahVel":
        return np.array([task["velocity"]])
    if family == "AntDir":
        return np.array([math.cos(task["angle"]), math.sin(task["angle"])])
    if family in ("AntGoal", "PointNav"):
        return np.asarray(task["goal"], dtype=np.float64)
    if family == "Walker2dParams":
        # log-scale factors in [-3, 3], one per scaled model parameter
        return np.concatenate(
            [
                np.log(np.asarray(task[k], dtype=np.float64)).ravel() / math.log(base)
                for k, base in WALKER_PARAMS.items()
            ]
        )
    raise ValueError(f"no task features for family {family!r}")


def project_features(family: str, features: np.ndarray) -> np.ndarray:
    """(n, dim) task features moved onto the family's own task set where a blend of two tasks leaves it:
    AntDir's (cos, sin) back onto the unit circle (a zero vector stays zero). Other families' task sets
    are convex in their features."""
    if family != "AntDir":
        return features
    norm = np.linalg.norm(features, axis=-1, keepdims=True)
    return np.where(norm > 1e-6, features / np.maximum(norm, 1e-6), features).astype(features.dtype)


def _wrapped(angle: np.ndarray) -> np.ndarray:
    return np.abs((angle + math.pi) % (2 * math.pi) - math.pi)


def diagnose(family: str, tasks: list, obs_mean: np.ndarray, obs_last: np.ndarray) -> Diagnostic:
    """Per episode: tasks[i] and its observations' mean obs_mean[i] and last obs_last[i] (n, obs_dim)."""
    nan = np.full(len(tasks), np.nan)
    if family == "HalfCheetahVel":
        target, achieved = np.array([t["velocity"] for t in tasks]), obs_mean[:, 8].astype(np.float64)
        return Diagnostic("forward_velocity", target, achieved, np.abs(achieved - target))
    if family == "AntDir":
        target = np.array([t["angle"] for t in tasks])
        achieved = np.arctan2(obs_mean[:, 14], obs_mean[:, 13]) % (2 * math.pi)
        return Diagnostic("direction_of_travel", target, achieved, _wrapped(achieved - target))
    if family in ("AntGoal", "PointNav"):
        goals = np.array([t["goal"] for t in tasks], dtype=np.float64)
        distance = np.linalg.norm(obs_last[:, :2] - goals, axis=1)
        return Diagnostic("final_distance_to_goal", np.zeros(len(tasks)), distance, distance)
    if family == "Walker2dParams":
        return Diagnostic("forward_velocity", nan, obs_mean[:, 8].astype(np.float64), nan)
    raise ValueError(f"no task-inference diagnostic for family {family!r}")
