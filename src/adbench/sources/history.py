"""The arrays of a batch of learning histories, as every source algorithm returns them."""

import numpy as np


def empty_history(
    learners: int,
    episodes: int,
    horizon: int,
    obs_dim: int,
    act_dim: int,
    expert_actions: bool = False,
    counterfactuals: int = 0,
) -> dict:
    """observations (K,T,obs), actions (K,T,act) (executed, clipped), rewards, terminated, truncated (K,T)
    with T = episodes x horizon, and final_observations (K,E,obs): the observation each episode ended in;
    with `expert_actions`, also those (K,T,act): a source expert's clean action for the true task; with
    C `counterfactuals`, counterfactual_rewards (K,T,C) and counterfactual_actions (K,T,C,act): each step's
    reward under C other tasks and the expert's clean action for them."""
    steps = episodes * horizon
    extra = {"expert_actions": np.zeros((learners, steps, act_dim), np.float32)} if expert_actions else {}
    if counterfactuals:
        extra["counterfactual_rewards"] = np.zeros((learners, steps, counterfactuals), np.float32)
        extra["counterfactual_actions"] = np.zeros((learners, steps, counterfactuals, act_dim), np.float32)
    return {
        **extra,
        "observations": np.zeros((learners, steps, obs_dim), np.float32),
        "actions": np.zeros((learners, steps, act_dim), np.float32),
        "rewards": np.zeros((learners, steps), np.float32),
        "terminated": np.zeros((learners, steps), bool),
        "truncated": np.zeros((learners, steps), bool),
        "final_observations": np.zeros((learners, episodes, obs_dim), np.float32),
    }


def record_step(hist: dict, t: int, obs, action, reward, terminated, truncated, next_obs) -> None:
    """Step t of every learner's history; at an episode's last step also the observation it ended in
    (the one the time limit cut off, before the reset)."""
    hist["observations"][:, t], hist["actions"][:, t] = obs, action
    hist["rewards"][:, t], hist["terminated"][:, t], hist["truncated"][:, t] = reward, terminated, truncated
    horizon = hist["observations"].shape[1] // hist["final_observations"].shape[1]
    if (t + 1) % horizon == 0:
        hist["final_observations"][:, t // horizon] = next_obs


def finish_history(hist: dict, episodes: int) -> dict:
    """Add episode_returns (K, E), the per-episode sums of the rewards."""
    k, steps = hist["rewards"].shape
    hist["episode_returns"] = hist["rewards"].reshape(k, episodes, steps // episodes).sum(-1)
    return hist
