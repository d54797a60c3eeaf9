"""The arrays of a batch of learning histories, as every source algorithm returns them."""

import numpy as np


def empty_history(learners: int, steps: int, obs_dim: int, act_dim: int) -> dict:
    """observations (K,T,obs), actions (K,T,act) (executed, clipped), rewards, terminated, truncated (K,T)."""
    return {
        "observations": np.zeros((learners, steps, obs_dim), np.float32),
        "actions": np.zeros((learners, steps, act_dim), np.float32),
        "rewards": np.zeros((learners, steps), np.float32),
        "terminated": np.zeros((learners, steps), bool),
        "truncated": np.zeros((learners, steps), bool),
    }


def finish_history(hist: dict, episodes: int) -> dict:
    """Add episode_returns (K, E), the per-episode sums of the rewards."""
    k, steps = hist["rewards"].shape
    hist["episode_returns"] = hist["rewards"].reshape(k, episodes, steps // episodes).sum(-1)
    return hist
