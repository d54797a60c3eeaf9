"""RL^2 (Duan et al. 2016; Wang et al. 2016): a recurrent actor-critic meta-trained with PPO across tasks.

The policy and the value read the GRU's hidden state (`online.TokenGRU`: the AD token, the state
reset only between trials), and the policy-gradient loss trains all of it: the in-context learner is
whatever the GRU learns to carry. Each update runs PPO epochs over the trials cut into segments of
`bptt_steps` (truncated BPTT from the hidden state the rollout stored at each segment's start).
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from .online import OnlineTrainer, TokenGRU, TrialSettings

ARCH = "rl2"


@dataclass
class RL2Config(TrialSettings):
    """The trials' settings, plus the segments of truncated BPTT."""

    bptt_steps: int = 50
    """segment length of truncated BPTT, in steps (a trial's length must be a multiple of it)."""


class RL2Policy(TokenGRU):
    """Token -> linear+tanh -> GRU -> (Gaussian mean, value); a state-independent log-std."""

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: int = 128, init_log_std: float = 0.0, clip_obs: float = 10.0
    ):
        super().__init__(obs_dim, act_dim, hidden, clip_obs)
        self.actor = nn.Linear(hidden, act_dim)
        self.critic = nn.Linear(hidden, 1)
        self.log_std = nn.Parameter(torch.full((act_dim,), init_log_std))
        for layer, gain in ((self.embed, math.sqrt(2)), (self.actor, 0.01), (self.critic, 1.0)):
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)

    def forward(self, obs, prev_action, prev_reward, episode_start, h0):
        """Sequences (b, l, ...) from hidden state h0 (b, hidden) -> mean (b, l, act), value (b, l), h (b, hidden)."""
        y, h = self.gru(self.tokens(obs, prev_action, prev_reward, episode_start), h0[None])
        return self.actor(y), self.critic(y)[..., 0], h[0]

    def recurrent_step(self, obs, prev_action, prev_reward, episode_start, h):
        """One token per sequence (b, ...) -> (mean, value, new hidden state)."""
        h = self.read_step(obs, prev_action, prev_reward, episode_start, h)
        return self.actor(h), self.critic(h)[..., 0], h


class RL2Trainer(OnlineTrainer):
    """PPO with truncated BPTT over trial segments; one generator draws the exploration noise and the
    minibatch order."""

    ARCH = ARCH
    Config = RL2Config
    Policy = RL2Policy

    def make_policy(self, obs_dim: int, act_dim: int, cfg: RL2Config) -> RL2Policy:
        return RL2Policy(obs_dim, act_dim, cfg.hidden, cfg.init_log_std, cfg.clip_obs)

    def check(self, horizon: int) -> None:
        if (self.cfg.trial_episodes * horizon) % self.cfg.bptt_steps:
            raise ValueError(
                f"rl2.bptt_steps ({self.cfg.bptt_steps}) must divide a trial's length in steps "
                f"({self.cfg.trial_episodes} episodes x {horizon} steps)"
            )

    def update(self, buf: dict) -> dict:
        """PPO epochs over the trial segments of one rollout."""
        cfg, policy = self.cfg, self.policy
        k, steps = buf["rewards"].shape
        self.optimizer.param_groups[0]["lr"] = self.annealed(cfg.learning_rate)
        adv, returns = self.advantages(buf)
        seg = cfg.bptt_steps
        n_seg = steps // seg

        def segments(x):  # (K, T, ...) -> (K * T/seg, seg, ...)
            return x.reshape(k * n_seg, seg, *x.shape[2:])

        data = {key: segments(v) for key, v in buf.items() if key != "hidden"}
        data.update(h0=buf["hidden"][:, ::seg].reshape(k * n_seg, -1), adv=segments(adv), returns=segments(returns))
        n = k * n_seg
        mb = max(1, n // cfg.minibatches)
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(n, generator=self.generator)
            for start in range(0, n, mb):
                d = {key: v[perm[start : start + mb]] for key, v in data.items()}
                mean, value, _ = policy(d["obs"], d["prev_action"], d["prev_reward"], d["episode_start"], d["h0"])
                stats = self.ppo_step(mean, value, d, dims=(0, 1))
        return stats
