"""The evaluation's controls: what separates in-context RL from replaying a history's schedule.

Each control changes what the model experiences while returns are always scored on the true task:
- `none`: the true task and its rewards;
- `zero_reward`: the model sees zeros as rewards;
- `other_task_reward`: the model sees the reward the same step would have earned under another held-out
  task (a fixed cyclic derangement: task j sees task j+1's);
- `task_switch`: the true task changes half way through the in-context episodes (task j becomes task
  j+1, as in the derangement); a policy that searches from rewards recovers after the switch, one that
  replays a schedule does not.
"""

CONTROLS = ("none", "zero_reward", "other_task_reward", "task_switch")


def switch_episode(episodes: int) -> int:
    """The in-context episode at which `task_switch` changes the true task: half way (at least 1)."""
    return max(1, episodes // 2)
