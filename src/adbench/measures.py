"""What every score is read over: the first and last tenth of a run's episodes, and the evaluation's
controls, which separate in-context RL from replaying a history's schedule.

A run's "first" and "final" returns are the means over its first and last `edge(n)` of n episodes
(a tenth, at least one): for AD and the floors in the evaluation, for the source over its history,
for RL^2 over each training trial.

Each control changes what the model experiences while returns are always scored on the true task:
- `none`: the true task and its rewards;
- `zero_reward`: the model sees zeros as rewards;
- `other_task_reward`: the model sees the reward the same step would have earned under another held-out
  task (a fixed cyclic derangement: task j sees task j+1's);
- `task_switch`: the true task changes half way through the in-context episodes (task j becomes task
  j+1, as in the derangement); a policy that searches from rewards recovers after the switch, one that
  replays a schedule does not.
"""

import math

EDGE_FRACTION = 0.1


def edge(episodes: int) -> int:
    """How many episodes make the first / last tenth of a run of `episodes` (at least one)."""
    return max(1, math.ceil(EDGE_FRACTION * episodes))


CONTROLS = ("none", "zero_reward", "other_task_reward", "task_switch")


def switch_episode(episodes: int) -> int:
    """The in-context episode at which `task_switch` changes the true task: half way (at least 1)."""
    return max(1, episodes // 2)
