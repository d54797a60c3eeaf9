"""Noise distillation (AD-epsilon): an expert per task rolled out with noise annealed from 1 to 0.

After Zisman et al. 2023, "Emergence of in-context reinforcement learning from noise distillation"
(corl-team's ad-eps): instead of a learner's history, a fixed expert acts, and with probability
epsilon a uniformly random action replaces its action; epsilon falls linearly from 1 at the first
episode to 0 at (1 - clean_fraction) of the history and stays 0. For continuous actions the noise
may instead be Gaussian, added to the expert's action with standard deviation epsilon * noise_std:
a Gaussian action head can then represent each step's action distribution (expert action, current
noise level; exactly with the clipped head, as actions are clipped to the box), where the uniform
mixture it can only blur. Beside the executed actions the histories store the expert's clean action
for the true task at every step (`expert_actions`), the target of `train.target: expert`, and, with
`counterfactuals` K > 0, the rewards each executed step would have earned under K other tasks and the
expert's clean actions for them (`counterfactual_rewards`, `counterfactual_actions`): windows relabelled
to another task, for `train.target: counterfactual`. The return rises by the schedule alone, so a model
that imitates it needs no rewards to "improve": the controls tell the two apart.
"""

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..seeding import derive_seed
from ..tasks import BatchedTasks, get_family
from ..tasks.inference import project_features, task_features
from .history import empty_history, finish_history, record_step
from .ppo import PPOConfig, train_ppo
from .task_expert import TaskExpert


@dataclass
class NoiseDistillConfig:
    expert: str = "oracle"
    """'oracle' (the family's analytic expert, where it has one), 'ppo' (a PPO learner per task, trained
    first), 'task_ppo' (one task-conditioned PPO learner over all training tasks, see `task_expert`) or
    'steer' (AntGoal: AntDir's task-conditioned expert told the direction to the goal, see `steering`)."""
    expert_episodes: int = 200
    """PPO training episodes per task for the 'ppo' and 'task_ppo' experts (not part of the history)."""
    expert_tasks: str = "train"
    """'task_ppo': what the expert trained on ('train': the training tasks; 'fresh': a new draw each rollout,
    see `task_expert.train_task_expert`); the rollout of histories does not depend on it."""
    clean_fraction: float = 0.1
    """final fraction of the history rolled out with no noise."""
    noise: str = "uniform"
    """'uniform': with probability epsilon a uniform random action replaces the expert's; 'gaussian': the
    expert's action plus N(0, (epsilon * noise_std)^2) noise, clipped to the action box."""
    noise_std: float = 1.0
    """the Gaussian noise's standard deviation at epsilon = 1."""
    task_noise: float = 0.0
    """'task_ppo' and 'steer': the expert is told a task between the true one and a task drawn afresh each episode,
    (1 - w) f_true + w f_drawn with w = task_noise * epsilon in feature space, so that early episodes pursue
    other tasks and the histories show behaviour being corrected towards the true task (0: always the true task).
    Blends are projected back onto the family's task set (`tasks.inference.project_features`)."""
    search: bool = False
    """'task_ppo' and 'steer': the told task searches from the returns instead of converging on the true one,
    which is never told: each episode blends the told task that has earned the best episode return so far with
    a fresh draw, by task_noise * epsilon, so that the histories change behaviour when returns are low and
    keep it when they are high (the clean tail acts on the best task found)."""
    counterfactuals: int = 0
    """K other tasks per history (drawn once per history from the family's task distribution, by a generator
    of their own, so that the recorded history does not change): at every step, the reward the executed step
    would have earned under each and the expert's clean action for each at the same observation. Families
    whose task changes the reward, with an expert that can be told any task ('oracle', 'task_ppo', 'steer')."""


def steering(walker: TaskExpert, goals: np.ndarray):
    """AntGoal's expert from AntDir's: at every step, AntDir's expert told the direction from the ant's
    x, y (AntGoal's observations 0-1; the rest is AntDir's observation) to the goal. `goals`: (K, 2),
    or a callable returning them (the goals told this episode)."""

    def expert(obs: np.ndarray) -> np.ndarray:
        told = goals() if callable(goals) else goals
        to_goal = told - obs[:, :2]
        angles = np.arctan2(to_goal[:, 1], to_goal[:, 0]) % (2 * np.pi)
        features = np.stack([task_features(walker.family, {"angle": float(a)}) for a in angles]).astype(np.float32)
        return walker.mean_action(obs[:, 2:], features)

    return expert


def epsilon(episode: int, episodes: int, clean_fraction: float) -> float:
    noisy = max(1.0, (1.0 - clean_fraction) * episodes)
    return max(0.0, 1.0 - episode / noisy)


def run_noise_distill(
    family: str,
    tasks: list,
    horizon: int,
    episodes: int,
    cfg: NoiseDistillConfig,
    seed: int,
    ppo: PPOConfig,
    progress=None,
    threads: int = 1,
    task_expert: TaskExpert | None = None,
) -> dict:
    env = BatchedTasks(family, tasks, horizon, threads)
    if cfg.counterfactuals and (cfg.expert == "ppo" or not env.reward_varies):
        raise ValueError(
            f"source.noise_distill.counterfactuals needs a family whose task changes the reward and an expert "
            f"that can be told any task (oracle, task_ppo, steer); got {family} and {cfg.expert!r}"
        )
    acting_for = None  # tasks -> the expert's clean policy for them (experts that can be told any task)
    if cfg.expert == "oracle":
        oracle = get_family(family).oracle
        if oracle is None:
            raise ValueError(f"{family} has no analytic oracle; set source.noise_distill.expert to 'ppo'")
        acting_for = lambda told: lambda obs: np.stack([oracle(t, o) for t, o in zip(told, obs)])  # noqa: E731
        expert = clean = acting_for(env.tasks)
    elif cfg.expert == "ppo":
        agent = train_ppo(family, tasks, horizon, cfg.expert_episodes, ppo, seed, progress, threads)[1]
        expert = clean = agent.mean_action
    elif cfg.expert == "task_ppo":
        if task_expert is None or task_expert.family != family:
            raise ValueError(
                f"source.noise_distill.expert 'task_ppo' needs the trained {family} expert (the `expert` "
                f"stage's output, passed as --expert)"
            )
        true_features = told_features = _features(family, env.tasks)
        expert = lambda obs: task_expert.mean_action(obs, told_features)  # noqa: E731  (the task told this episode)
        acting_for = lambda told: _told(task_expert, _features(family, told))  # noqa: E731
        clean = acting_for(env.tasks)
    elif cfg.expert == "steer":
        if task_expert is None or family != "AntGoal" or task_expert.family != "AntDir":
            raise ValueError("source.noise_distill.expert 'steer' steers AntDir's trained expert on AntGoal (--expert)")
        true_features = told_features = _features(family, env.tasks)
        expert = steering(task_expert, lambda: told_features)  # the goals told this episode
        acting_for = lambda told: steering(task_expert, _features(family, told))  # noqa: E731
        clean = acting_for(env.tasks)
    else:
        raise ValueError(
            f"unknown source.noise_distill.expert {cfg.expert!r}; use 'oracle', 'ppo', 'task_ppo' or 'steer'"
        )
    rng = np.random.default_rng(seed)
    hist = empty_history(
        env.num_tasks,
        episodes,
        env.horizon,
        env.obs_dim,
        env.act_dim,
        expert_actions=True,
        counterfactuals=cfg.counterfactuals,
    )
    if cfg.counterfactuals:
        cf_rng = np.random.default_rng(derive_seed(seed, "counterfactual tasks"))
        cf_tasks = [get_family(family).sample(cf_rng, env.num_tasks) for _ in range(cfg.counterfactuals)]
        cf_experts = [acting_for(told) for told in cf_tasks]
    told_noise = cfg.expert in ("task_ppo", "steer") and cfg.task_noise > 0
    if cfg.search:
        if not told_noise:
            raise ValueError("source.noise_distill.search needs a task_ppo or steer expert and task_noise > 0")
        best = _features(family, get_family(family).sample(rng, env.num_tasks))  # a first guess, drawn
        best_return = np.full(env.num_tasks, -np.inf)
    t = 0
    for episode in tqdm(
        range(episodes), desc=f"noise distillation {family}", file=progress, mininterval=5, disable=not progress
    ):
        eps = epsilon(episode, episodes, cfg.clean_fraction)
        if told_noise:
            drawn = _features(family, get_family(family).sample(rng, env.num_tasks))
            w = cfg.task_noise * eps
            centre = best if cfg.search else true_features
            told_features = project_features(family, (1 - w) * centre + w * drawn)
        obs = env.reset(seed=int(rng.integers(2**31)))
        for _ in range(env.horizon):
            action = np.clip(expert(obs), -1.0, 1.0)
            # the true task's action, without noise: the told one's, unless the told task moves
            hist["expert_actions"][:, t] = np.clip(clean(obs), -1.0, 1.0) if told_noise else action
            if cfg.noise == "gaussian":
                action = np.clip(action + eps * cfg.noise_std * rng.standard_normal(action.shape), -1.0, 1.0)
            else:
                noisy = rng.random(env.num_tasks) < eps
                action[noisy] = rng.uniform(-1.0, 1.0, size=(int(noisy.sum()), env.act_dim))
            next_obs, reward, term, trunc = env.step(action)
            record_step(hist, t, obs, action, reward, term, trunc, next_obs)
            for k in range(cfg.counterfactuals):  # the same step, told another task
                hist["counterfactual_actions"][:, t, k] = np.clip(cf_experts[k](obs), -1.0, 1.0)
                hist["counterfactual_rewards"][:, t, k] = env.rewards_under(cf_tasks[k])
            obs, t = next_obs, t + 1
        if cfg.search:  # the returns are the search's only signal
            earned = hist["rewards"][:, t - env.horizon : t].sum(1)
            better = earned > best_return
            best[better], best_return[better] = told_features[better], earned[better]
    return finish_history(hist, episodes)


def _told(task_expert: TaskExpert, features: np.ndarray):
    """The task-conditioned expert's clean policy for the tasks of `features` (one row per env)."""
    return lambda obs: task_expert.mean_action(obs, features)


def _features(family: str, tasks: list) -> np.ndarray:
    return np.stack([task_features(family, t) for t in tasks]).astype(np.float32)
