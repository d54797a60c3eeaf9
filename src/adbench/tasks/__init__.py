"""Meta-RL task families (gymnasium envs, registered on import), task sampling and a batched stepper."""

from .base import Family, TaskError
from .batched import BatchedTasks
from .registry import FAMILIES, get_family, make_env, register_all, sample_tasks, split_tasks, task_ids

register_all()

__all__ = [
    "FAMILIES", "BatchedTasks", "Family", "TaskError", "get_family", "make_env",
    "sample_tasks", "split_tasks", "task_ids",
]
