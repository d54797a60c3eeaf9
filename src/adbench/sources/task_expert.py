"""A task-conditioned expert: one PPO learner over all training tasks, told each task's parameters.

The expert behind AD-epsilon histories on families with no analytic oracle. Zisman et al. (2023)
train an expert per task; one learner whose input is the observation followed by the task's features
(`tasks.inference.task_features`) shares what it learns about locomotion across tasks, and acts on
held-out tasks by the same features. It is `BatchedPPO` with a single learner whose sample axis runs
over the tasks; advantages are estimated per task, in time order, before the tasks are pooled.
"""

import dataclasses

import numpy as np
import torch
from tqdm import tqdm

from ..tasks import BatchedTasks, get_family
from ..tasks.inference import task_features
from .ppo import LOG_2PI, BatchedPPO, PPOConfig, RewardScaler, gae, next_values


class TaskExpert:
    """A Gaussian actor-critic on (observation, task features); `act` samples, `mean_action` is the expert."""

    def __init__(self, family: str, obs_dim: int, act_dim: int, feature_dim: int, cfg: PPOConfig, seed: int):
        self.family, self.obs_dim, self.act_dim, self.feature_dim = family, obs_dim, act_dim, feature_dim
        self.agent = BatchedPPO(1, obs_dim + feature_dim, act_dim, cfg, seed)
        self.rng = np.random.default_rng(seed + 3)  # exploration noise

    def inputs(self, obs: np.ndarray, features: np.ndarray) -> np.ndarray:
        """(N, obs_dim), (N, feature_dim) -> (1, N, obs_dim + feature_dim): one learner, N samples."""
        return np.concatenate([obs, features], axis=1)[None]

    def act(self, x: np.ndarray):
        """Sample actions for x (1, N, d), updating the observation normaliser: (action, log_prob, value)."""
        agent = self.agent
        agent.obs_rms.update(x.astype(np.float64))
        z = agent._normalized(x)
        mean = agent.actor.forward_numpy(z)[0]
        log_std = agent.log_std.detach().numpy()[0]
        noise = self.rng.standard_normal(mean.shape, dtype=np.float32)
        log_prob = (-0.5 * noise**2 - log_std - 0.5 * LOG_2PI).sum(-1)
        return mean + np.exp(log_std) * noise, log_prob, agent.critic.forward_numpy(z)[0, :, 0]

    def value(self, x: np.ndarray) -> np.ndarray:
        return self.agent.critic.forward_numpy(self.agent._normalized(x))[0, :, 0]

    def mean_action(self, obs: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The deterministic expert (no normaliser update)."""
        return self.agent.actor.forward_numpy(self.agent._normalized(self.inputs(obs, features)))[0]

    def state_dict(self) -> dict:
        a = self.agent
        return {
            "family": self.family,
            "dims": [self.obs_dim, self.act_dim, self.feature_dim],
            "ppo": dataclasses.asdict(a.cfg),
            "actor": a.actor.state_dict(),
            "critic": a.critic.state_dict(),
            "log_std": a.log_std.detach().clone(),
            "obs_mean": torch.from_numpy(a.obs_rms.mean),
            "obs_var": torch.from_numpy(a.obs_rms.var),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "TaskExpert":
        expert = cls(state["family"], *state["dims"], PPOConfig(**state["ppo"]), seed=0)
        a = expert.agent
        a.actor.load_state_dict(state["actor"])
        a.critic.load_state_dict(state["critic"])
        with torch.no_grad():
            a.log_std.copy_(state["log_std"])
        a.obs_rms.mean, a.obs_rms.var = state["obs_mean"].numpy(), state["obs_var"].numpy()
        return expert


def train_task_expert(
    family: str,
    tasks: list,
    horizon: int,
    episodes: int,
    cfg: PPOConfig,
    seed: int,
    progress=None,
    threads: int = 1,
    fresh_tasks: bool = False,
) -> tuple[TaskExpert, np.ndarray]:
    """Train one expert on all `tasks` at once for `episodes` episodes of each. Returns the expert and its
    training returns (tasks, episodes). With `fresh_tasks`, every rollout after the first replaces the
    tasks by a new draw of as many from the family's distribution (a stream seeded by `seed`), so that
    the expert's task input covers the distribution rather than a few points of it; a row of the returns
    is then a slot, not one task."""
    if episodes % cfg.rollout_episodes:
        raise ValueError(
            f"source.noise_distill.expert_episodes ({episodes}) must be a multiple of "
            f"source.ppo.rollout_episodes ({cfg.rollout_episodes})"
        )
    torch.manual_seed(seed)
    env = BatchedTasks(family, tasks, horizon, threads)
    features = np.stack([task_features(family, t) for t in env.tasks]).astype(np.float32)
    expert = TaskExpert(family, env.obs_dim, env.act_dim, features.shape[1], cfg, seed)
    n, steps_per_rollout = env.num_tasks, cfg.rollout_episodes * env.horizon
    scaler = RewardScaler(n, cfg.gamma, cfg.clip_reward)  # per task: returns differ in scale across tasks
    returns = np.zeros((n, episodes))
    num_updates = episodes // cfg.rollout_episodes
    obs = env.reset(seed=seed % (2**31))
    bar = tqdm(
        range(num_updates), desc=f"task expert {family} x{n}", file=progress, mininterval=5, disable=not progress
    )
    draws = np.random.default_rng([seed, 1])  # the fresh tasks and their first states: apart from the policy's
    episode = 0
    for update in bar:
        if fresh_tasks and update:
            env.set_tasks(range(n), get_family(family).sample(draws, n))
            features = np.stack([task_features(family, t) for t in env.tasks]).astype(np.float32)
            obs = env.reset(seed=int(draws.integers(2**31 - n)))
        buf = {key: [] for key in ("x", "actions", "log_probs", "values", "rewards", "episode_end")}
        final_values = {}  # step -> V(final observation) where the time limit cut the episode
        for i in range(steps_per_rollout):
            x = expert.inputs(obs, features)
            action, logp, value = expert.act(x)
            next_obs, reward, term, trunc = env.step(np.clip(action, -1.0, 1.0))
            returns[:, episode] += reward
            end = term | trunc
            if trunc.any():
                final_values[i] = torch.from_numpy(expert.value(expert.inputs(next_obs, features)) * trunc)
            for key, v in zip(buf, (x[0], action, logp, value, scaler(reward.astype(np.float64), end), end)):
                buf[key].append(v)
            if end.all():
                obs, episode = env.reset(), episode + 1
            else:
                obs = next_obs
        b = {
            key: torch.as_tensor(np.stack(v, 1), dtype=torch.bool if key == "episode_end" else torch.float32)
            for key, v in buf.items()
            if key != "x"
        }
        last_value = torch.from_numpy(expert.value(expert.inputs(obs, features)))
        nxt = next_values(b["values"], b["episode_end"], last_value, final_values)
        adv = gae(b["rewards"], b["values"], nxt, b["episode_end"], cfg.gamma, cfg.gae_lambda)  # per task, (N, T)
        pooled = lambda t: t.reshape(1, n * steps_per_rollout, *t.shape[2:])  # noqa: E731
        expert.agent.optimize(
            np.stack(buf["x"], 1).reshape(1, n * steps_per_rollout, -1),
            pooled(b["actions"]),
            pooled(b["log_probs"]),
            pooled(adv),
            pooled(b["values"]),
            lr_frac=1.0 - update / num_updates,
        )
        bar.set_postfix(last_return=f"{returns[:, episode - 1].mean():.1f}", refresh=False)
    return expert, returns
