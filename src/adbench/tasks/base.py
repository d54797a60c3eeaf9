"""What every task family provides: a name, a task sampler, a task validator and an env class."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class TaskError(ValueError):
    """A task dict or family name that the benchmark does not accept."""


@dataclass(frozen=True)
class Family:
    name: str
    env_class: type
    sample: Callable[[np.random.Generator, int], list]  # rng, n -> list of task dicts
    check_task: Callable[[dict], dict]  # raises TaskError, returns a normalised copy
    horizon: int  # default episode length in steps
    oracle: Callable[[dict, np.ndarray], np.ndarray] | None = None  # task, obs -> a competent action

    @property
    def env_id(self) -> str:
        return f"adbench/{self.name}-v0"


def require_keys(family: str, task, keys: tuple) -> None:
    """One-line error for a task that is not a dict or lacks a key."""
    if not isinstance(task, dict):
        raise TaskError(f"{family}: a task must be a dict with keys {list(keys)}, got {type(task).__name__}")
    missing = [k for k in keys if k not in task]
    if missing:
        raise TaskError(f"{family}: task is missing key {missing[0]!r}; a task has keys {list(keys)}")
