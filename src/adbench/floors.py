"""The floors: trivial policies on the evaluated tasks that every score is measured from.

- `random`: uniform random actions;
- `zero`: zero actions (on AntDir and AntGoal, whose rewards pay for staying alive, it beats random);
- `task_blind`: the family's expert acting well on the *average* task, never told the task: the
  analytic oracle (PointNav) told the mean of the training tasks, or the source's task-conditioned
  expert told the mean of the training tasks' features (AntGoal: the steering expert heading for the
  mean goal). Families with neither have no task-blind floor.

A policy that ignores rewards can reach the best of these; in-context RL must beat it. The names are
`scores.FLOORS`, the arch column of the reference rows.
"""

import numpy as np
import torch


def random_policy(obs, prev_action, prev_reward, start, generator):
    return torch.rand(prev_action.shape, generator=generator).numpy() * 2 - 1


def zero_policy(obs, prev_action, prev_reward, start, generator):
    return np.zeros_like(prev_action)


def mean_task(train_tasks: list) -> dict:
    """Each parameter of the training tasks averaged (not necessarily a task the family can draw)."""
    return {k: np.mean([np.asarray(t[k], dtype=np.float64) for t in train_tasks], axis=0) for k in train_tasks[0]}


def task_blind_policy(family: str, train_tasks: list, expert=None):
    """The expert told the training tasks' mean: the family's oracle where it has one, else `expert` (a
    `TaskExpert` told features; for AntGoal, AntDir's, steered); None where there is neither."""
    from .sources.noise_distill import steering
    from .tasks import get_family
    from .tasks.inference import task_features

    oracle = get_family(family).oracle
    if oracle is not None:
        told = mean_task(train_tasks)
        return lambda obs, *_: np.stack([oracle(told, o) for o in obs])
    if expert is None:
        return None
    features = np.mean([task_features(family, t) for t in train_tasks], axis=0).astype(np.float32)
    if expert.family != family:  # AntGoal's steering expert: the mean goal
        return lambda obs, *_: steering(expert, np.broadcast_to(features, (len(obs), len(features))))(obs)
    return lambda obs, *_: expert.mean_action(obs, np.broadcast_to(features, (len(obs), len(features))))
