"""PPO with a Gaussian policy, K independent learners (one per task) trained in one process.

Follows CleanRL's `ppo_continuous_action.py`: tanh 64-64 actor and critic with orthogonal init,
state-independent log-std, observation normalisation and reward scaling with clipping, GAE(0.95),
clipped surrogate (0.2), clipped value loss, annealed learning rate, per-minibatch advantage
normalisation. Learners share nothing but the code path: weights, Adam state, normalisers and
gradient clipping are per learner (stacked along the first axis). Time-limit truncation bootstraps
from the value of the final observation (Pardo et al. 2018) rather than treating it as terminal.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..tasks import BatchedTasks
from .batched_nets import BatchedMLP, RunningMeanStd, clip_grad_norm_per_learner
from .history import empty_history, finish_history, record_step

LOG_2PI = math.log(2 * math.pi)


@dataclass
class PPOSettings:
    """What every PPO learner here shares (the source's and RL^2's)."""

    learning_rate: float = 3e-4
    """Adam step size (linearly annealed to 0 when anneal_lr)."""
    anneal_lr: bool = True
    update_epochs: int = 10
    minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    init_log_std: float = 0.0
    clip_obs: float = 10.0
    clip_reward: float = 10.0


@dataclass
class PPOConfig(PPOSettings):
    rollout_episodes: int = 2
    """episodes collected per learner between updates."""


class BatchedPPO:
    """K Gaussian actor-critics; `act` and `update` work on all learners at once."""

    def __init__(self, num: int, obs_dim: int, act_dim: int, cfg: PPOConfig, seed: int):
        self.cfg, self.num = cfg, num
        gen = torch.Generator().manual_seed(seed)
        sizes = [obs_dim, cfg.hidden, cfg.hidden]
        self.actor = BatchedMLP(num, sizes + [act_dim], out_gain=0.01, generator=gen)
        self.critic = BatchedMLP(num, sizes + [1], out_gain=1.0, generator=gen)
        self.log_std = torch.nn.Parameter(torch.full((num, 1, act_dim), cfg.init_log_std))
        self.params = list(self.actor.parameters()) + list(self.critic.parameters()) + [self.log_std]
        # fused: one kernel per tensor instead of a dozen ops (15% of an update's time at K = 32)
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.learning_rate, eps=1e-5, fused=True)
        self.obs_rms = RunningMeanStd(num, obs_dim)
        self.reward_scaler = RewardScaler(num, cfg.gamma, cfg.clip_reward)
        self.sample_rng = np.random.default_rng(seed + 1)  # exploration noise
        self.sample_gen = torch.Generator().manual_seed(seed + 2)  # minibatch order

    def _normalized(self, obs: np.ndarray) -> np.ndarray:  # (K, N, obs_dim) -> float32
        x = (obs - self.obs_rms.mean[:, None]) / np.sqrt(self.obs_rms.var[:, None] + 1e-8)
        return np.clip(x, -self.cfg.clip_obs, self.cfg.clip_obs).astype(np.float32)

    def normalize_obs(self, obs: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._normalized(obs))

    def log_prob(self, x: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(action | x) of the Gaussian policy, summed over action dims: (K, N). Written out
        rather than through torch.distributions, whose per-call checks cost more than the arithmetic."""
        z = (action - self.actor(x)) * (-self.log_std).exp()
        return (-0.5 * z * z - self.log_std).sum(-1) - 0.5 * LOG_2PI * z.shape[-1]

    def entropy(self) -> torch.Tensor:
        """The policy's entropy per learner (K,): state-independent, a function of log_std alone."""
        return (self.log_std[:, 0] + 0.5 + 0.5 * LOG_2PI).sum(-1)

    def act(self, obs: np.ndarray):
        """Sample one action per learner, in numpy. Returns (action, log_prob, value) for obs (K, obs_dim)."""
        self.obs_rms.update(obs[:, None].astype(np.float64))
        x = self._normalized(obs[:, None])
        mean = self.actor.forward_numpy(x)[:, 0]
        log_std = self.log_std.detach().numpy()[:, 0]
        noise = self.sample_rng.standard_normal(mean.shape, dtype=np.float32)
        action = mean + np.exp(log_std) * noise
        log_prob = (-0.5 * noise**2 - log_std - 0.5 * LOG_2PI).sum(-1)
        return action, log_prob, self.critic.forward_numpy(x)[:, 0, 0]

    def mean_action(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic policy (no normaliser update): what an expert rollout uses."""
        return self.actor.forward_numpy(self._normalized(obs[:, None]))[:, 0]

    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.critic.forward_numpy(self._normalized(obs[:, None]))[:, 0, 0]

    def update(self, batch: dict, lr_frac: float) -> dict:
        """PPO epochs on a rollout. batch tensors are (K, N, ...) in time order."""
        adv = gae(
            batch["rewards"],
            batch["values"],
            batch["next_values"],
            batch["episode_end"],
            self.cfg.gamma,
            self.cfg.gae_lambda,
        )
        return self.optimize(batch["obs"], batch["actions"], batch["log_probs"], adv, batch["values"], lr_frac)

    def optimize(self, obs: np.ndarray, actions, old_log_probs, adv, values, lr_frac: float) -> dict:
        """Clipped-surrogate epochs over (K, N, ...) samples whose advantages are already estimated."""
        cfg = self.cfg
        if cfg.anneal_lr:
            self.optimizer.param_groups[0]["lr"] = lr_frac * cfg.learning_rate
        returns = adv + values
        data = (self.normalize_obs(obs), actions, old_log_probs, adv, values, returns)
        n = adv.shape[1]
        mb = max(1, n // cfg.minibatches)
        stats = {}
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(n, generator=self.sample_gen)
            shuffled = [t[:, perm] for t in data]  # one gather per epoch; minibatches are then views
            for start in range(0, n, mb):
                x, b_actions, old_logp, b_adv, b_values, b_returns = (t[:, start : start + mb] for t in shuffled)
                logp = self.log_prob(x, b_actions)
                v = self.critic(x)[..., 0]
                pg_loss, v_loss = clipped_losses(
                    logp, old_logp, b_adv, v, b_values, b_returns, cfg.clip_coef, dims=(1,)
                )
                # Summing per-learner losses keeps each learner's gradient its own.
                loss = (pg_loss - cfg.ent_coef * self.entropy() + cfg.vf_coef * v_loss).sum()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_grad_norm_per_learner(self.params, cfg.max_grad_norm)
                self.optimizer.step()
        stats["pg_loss"] = float(pg_loss.mean().detach())
        stats["v_loss"] = float(v_loss.mean().detach())
        return stats


class RewardScaler:
    """Divide rewards by the running std of the discounted return (gym's NormalizeReward), per learner."""

    def __init__(self, num: int, gamma: float, clip: float):
        self.gamma, self.clip = gamma, clip
        self.ret_rms = RunningMeanStd(num, 1)
        self.discounted = np.zeros(num)

    def __call__(self, rewards: np.ndarray, episode_end: np.ndarray) -> np.ndarray:
        self.discounted = self.discounted * self.gamma + rewards
        self.ret_rms.update(self.discounted[:, None, None])
        self.discounted[episode_end] = 0.0
        return np.clip(rewards / np.sqrt(self.ret_rms.var[:, 0] + 1e-8), -self.clip, self.clip)


def clipped_losses(logp, old_logp, adv, v, v_old, returns, clip_coef: float, dims: tuple):
    """PPO's clipped surrogate and clipped value loss, averaged over `dims` (the rest are learners).

    Advantages are normalised over `dims` per minibatch, as in CleanRL."""
    adv = (adv - adv.mean(dims, keepdim=True)) / (adv.std(dims, keepdim=True) + 1e-8)
    ratio = (logp - old_logp).exp()
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean(dims)
    v_clipped = v_old + (v - v_old).clamp(-clip_coef, clip_coef)
    v_loss = 0.5 * torch.max((v - returns) ** 2, (v_clipped - returns) ** 2).mean(dims)
    return pg_loss, v_loss


def gae(rewards, values, next_values, episode_end, gamma, lam):
    """Generalised advantage estimation over (K, N); `next_values` already hold V(s') (0 if terminal)."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_values[:, t] - values[:, t]
        last = delta + gamma * lam * (~episode_end[:, t]) * last
        adv[:, t] = last
    return adv


def next_values(values, episode_end, last_value, final_values: dict) -> torch.Tensor:
    """V(s_{t+1}) for every step: the next step's value inside an episode, V(final obs) where the time
    limit cut it (0 where it terminated), and the value after the rollout's last step."""
    nxt = torch.cat([values[:, 1:], last_value[:, None]], dim=1)
    nxt = torch.where(episode_end, torch.zeros_like(nxt), nxt)
    for i, v in final_values.items():
        nxt[:, i] = torch.where(episode_end[:, i], v, nxt[:, i])
    return nxt


def run_ppo(
    family: str, tasks: list, horizon: int, episodes: int, cfg: PPOConfig, seed: int, progress=None, threads: int = 1
) -> dict:
    """Train one PPO learner per task for `episodes` episodes; return the learning histories
    (arrays with a leading learner axis, see `history.empty_history`). `threads` step the physics."""
    return train_ppo(family, tasks, horizon, episodes, cfg, seed, progress, threads)[0]


def train_ppo(
    family: str, tasks: list, horizon: int, episodes: int, cfg: PPOConfig, seed: int, progress=None, threads: int = 1
):
    """Like `run_ppo`, also returning the trained learners (BatchedPPO)."""
    if episodes % cfg.rollout_episodes:
        raise ValueError(
            f"source.episodes ({episodes}) must be a multiple of source.ppo.rollout_episodes ({cfg.rollout_episodes})"
        )
    torch.manual_seed(seed)
    env = BatchedTasks(family, tasks, horizon, threads)
    k, steps_per_rollout = env.num_tasks, cfg.rollout_episodes * env.horizon
    agent = BatchedPPO(k, env.obs_dim, env.act_dim, cfg, seed)
    hist = empty_history(k, episodes, env.horizon, env.obs_dim, env.act_dim)
    num_updates = episodes // cfg.rollout_episodes
    obs = env.reset(seed=seed % (2**31))
    bar = tqdm(range(num_updates), desc=f"ppo {family} x{k}", file=progress, mininterval=5, disable=not progress)
    t = 0
    for update in bar:
        buf = {key: [] for key in ("obs", "actions", "log_probs", "values", "rewards", "episode_end")}
        final_values = {}  # step index -> V(final observation) where an episode was cut by the time limit
        for i in range(steps_per_rollout):
            action, logp, value = agent.act(obs)
            executed = np.clip(action, -1.0, 1.0)
            next_obs, reward, term, trunc = env.step(executed)
            record_step(hist, t, obs, executed, reward, term, trunc, next_obs)
            end = term | trunc
            if trunc.any():
                final_values[i] = torch.from_numpy(agent.value(next_obs) * trunc)
            buf["obs"].append(obs)
            buf["actions"].append(action)
            buf["log_probs"].append(logp)
            buf["values"].append(value)
            buf["rewards"].append(
                torch.as_tensor(agent.reward_scaler(reward.astype(np.float64), end), dtype=torch.float32)
            )
            buf["episode_end"].append(torch.as_tensor(end))
            obs = env.reset() if end.all() else next_obs
            t += 1
        # observations stay numpy (normalised in `update`); the rest become (K, N) tensors
        batch = {key: torch.stack([torch.as_tensor(v) for v in vals], 1) for key, vals in buf.items() if key != "obs"}
        batch["obs"] = np.stack(buf["obs"], 1)
        batch["next_values"] = next_values(
            batch["values"], batch["episode_end"], torch.from_numpy(agent.value(obs)), final_values
        )
        agent.update(batch, lr_frac=1.0 - update / num_updates)
        recent = hist["rewards"][:, t - env.horizon : t].sum(1).mean()
        bar.set_postfix(last_return=f"{recent:.1f}", refresh=False)
    return finish_history(hist, episodes), agent
