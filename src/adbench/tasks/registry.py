"""The registry of task families, task sampling and the deterministic train/test split."""

import gymnasium as gym
import numpy as np

from ..config import DEFAULT_HORIZONS
from . import mujoco_families as mj
from . import pointnav
from .base import Family, TaskError

FAMILIES = {
    "PointNav": Family(
        "PointNav",
        pointnav.PointNavEnv,
        pointnav.sample,
        pointnav.check_task,
        horizon=DEFAULT_HORIZONS["PointNav"],
        oracle=pointnav.oracle,
    ),
    **{
        env.family: Family(env.family, env, env.sample, env.check_task, horizon=DEFAULT_HORIZONS[env.family])
        for env in (mj.HalfCheetahVelEnv, mj.AntDirEnv, mj.AntGoalEnv, mj.Walker2dParamsEnv)
    },
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise TaskError(f"unknown task family {name!r}; known families: {sorted(FAMILIES)}")
    return FAMILIES[name]


def register_all() -> None:
    """Register every family as adbench/<Family>-v0 (a string entry point, so that its spec serialises)."""
    for fam in FAMILIES.values():
        if fam.env_id not in gym.registry:
            entry_point = f"{fam.env_class.__module__}:{fam.env_class.__qualname__}"
            gym.register(id=fam.env_id, entry_point=entry_point, kwargs={"horizon": fam.horizon})


def make_env(family: str, task: dict, horizon: int | None = None):
    """The unwrapped env of one task (no gymnasium wrappers: the batched stepper calls it directly)."""
    fam = get_family(family)
    return fam.env_class(task=fam.check_task(task), horizon=horizon or fam.horizon)


def sample_tasks(family: str, n: int, seed: int) -> list:
    """n tasks drawn from the family's task distribution with a seeded generator."""
    if n < 0:
        raise TaskError(f"{family}: number of tasks must be >= 0, got {n}")
    return get_family(family).sample(np.random.default_rng(seed), n)


def split_tasks(family: str, n_train: int, n_test: int, seed: int) -> tuple[list, list]:
    """Disjoint train and test tasks: one seeded draw of n_train + n_test, train first."""
    tasks = sample_tasks(family, n_train + n_test, seed)
    train, test = tasks[:n_train], tasks[n_train:]
    keys = {repr(t) for t in train}
    if any(repr(t) in keys for t in test):
        raise TaskError(f"{family}: train and test tasks overlap for seed {seed}; use another tasks.seed")
    return train, test


def validation_tasks(family: str, n_val: int, seed: int, taken: list) -> list:
    """n_val tasks of their own seeded draw, none equal to a task in `taken` (the train and test tasks):
    adding validation tasks leaves the train/test draw as it was."""
    keys = {repr(t) for t in taken}
    tasks = [t for t in sample_tasks(family, 2 * n_val + 8, seed) if repr(t) not in keys][:n_val]
    if len(tasks) < n_val:
        raise TaskError(f"{family}: validation tasks repeat train/test tasks for seed {seed}; use another tasks.seed")
    return tasks


def task_ids(split: str, n: int) -> list:
    return [f"{split}-{i:04d}" for i in range(n)]
