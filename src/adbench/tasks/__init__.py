"""Meta-RL task families (gymnasium envs, registered on import), task sampling and a batched stepper."""

from . import mujoco_quiet

mujoco_quiet.install()

from .base import Family, TaskError  # noqa: E402
from .batched import BatchedTasks  # noqa: E402
from .registry import (  # noqa: E402
    FAMILIES,
    get_family,
    make_env,
    register_all,
    sample_tasks,
    split_tasks,
    task_ids,
    validation_tasks,
)

register_all()

__all__ = [
    "FAMILIES",
    "BatchedTasks",
    "Family",
    "TaskError",
    "get_family",
    "make_env",
    "sample_tasks",
    "split_tasks",
    "task_ids",
    "validation_tasks",
]
