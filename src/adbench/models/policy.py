"""The AD policy: step embedding -> backbone -> action head, shared by every architecture.

A token is (observation_t, action_{t-1}, reward_{t-1}, episode-start flag), normalised with the
training data's statistics (stored in the model). The head is Gaussian (mean, state-dependent
log-std, NLL loss), a Gaussian clipped to the action box, a mixture of M diagonal Gaussians (where the
action given the context has several modes, e.g. directions the model cannot yet tell apart, which a
single Gaussian averages), or deterministic (MSE).

Every source records the action it executed, clipped to [-1, 1], and the evaluation clips what the
model samples. With much noise (e.g. Gaussian noise of std 2 at the start of a noise-distillation
history) most recorded actions sit on the bounds; a plain Gaussian fits them as a narrower spread, so
its clipped samples are milder than the data's. The 'clipped_gaussian' head is trained on the exact
likelihood of a clipped Gaussian sample (a censored Gaussian): the density inside the box, the
probability mass beyond a bound for an action on it.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0
HEADS = ("gaussian", "clipped_gaussian", "gaussian_mixture", "mse")
ACTION_BOUND = 1.0  # every family's action box is [-1, 1]
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_nll(target, mean, log_std):
    """-log N(target; mean, exp(log_std)^2) per element, less its constant log(2 pi) / 2."""
    return 0.5 * ((target - mean) / log_std.exp()) ** 2 + log_std


def clipped_gaussian_nll(target, mean, log_std):
    """-log p(target) per element, for target = clip(N(mean, exp(log_std)^2), -1, 1)."""
    std = log_std.exp()
    inside = gaussian_nll(target, mean, log_std) + _HALF_LOG_2PI
    at_upper = -torch.special.log_ndtr((mean - ACTION_BOUND) / std)  # P(sample >= 1)
    at_lower = -torch.special.log_ndtr((-ACTION_BOUND - mean) / std)  # P(sample <= -1)
    return torch.where(target >= ACTION_BOUND, at_upper, torch.where(target <= -ACTION_BOUND, at_lower, inside))


def mixture_nll(target, mean, log_std, logits):
    """-log p(target) under a mixture of diagonal Gaussians, less its constant act_dim log(2 pi) / 2:
    target (..., A), mean and log_std (..., M, A), logits (..., M) -> (...)."""
    per_component = -gaussian_nll(target.unsqueeze(-2), mean, log_std).sum(-1)
    return -torch.logsumexp(torch.log_softmax(logits, -1) + per_component, -1)


class ADPolicy(nn.Module):
    def __init__(
        self, obs_dim: int, act_dim: int, backbone: nn.Module, d_model: int, head: str = "gaussian", components: int = 4
    ):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown action head {head!r} (config model.head); use one of {', '.join(HEADS)}")
        self.obs_dim, self.act_dim, self.head_kind = obs_dim, act_dim, head
        self.components = components if head == "gaussian_mixture" else 1
        self.embed = nn.Linear(obs_dim + act_dim + 2, d_model)
        self.backbone = backbone
        outputs = {"mse": act_dim, "gaussian_mixture": components * (2 * act_dim + 1)}.get(head, 2 * act_dim)
        self.head = nn.Linear(d_model, outputs)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("reward_stats", torch.tensor([0.0, 1.0]))

    def set_input_statistics(self, stats: dict) -> None:
        self.obs_mean.copy_(torch.tensor(stats["obs_mean"]))
        self.obs_std.copy_(torch.tensor(stats["obs_std"]))
        self.reward_stats.copy_(torch.tensor([stats["reward_mean"], stats["reward_std"]]))

    def tokens(self, obs, prev_action, prev_reward, episode_start):
        r = (prev_reward - self.reward_stats[0]) / self.reward_stats[1]
        x = torch.cat(
            [(obs - self.obs_mean) / self.obs_std, prev_action, r[..., None], episode_start[..., None]], dim=-1
        )
        return self.embed(x)

    def _head(self, h) -> tuple:
        out = self.head(h)
        if self.head_kind == "mse":
            return out, None
        logits = None
        if self.head_kind == "gaussian_mixture":
            logits, out = out[..., : self.components], out[..., self.components :]
            out = out.unflatten(-1, (self.components, 2 * self.act_dim))
        mean, log_std = out.chunk(2, dim=-1)
        # squash into [LOG_STD_MIN, LOG_STD_MAX] smoothly (as in CORL's and CleanRL's SAC actors)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return (mean, log_std) if logits is None else (mean, log_std, logits)

    def forward(self, obs, prev_action, prev_reward, episode_start) -> tuple:
        """Whole sequences (b, l, ...) -> the head's parameters: action mean and log-std, (b, l, act_dim)
        (log-std None for the MSE head); the mixture's per component, (b, l, M, act_dim), and its logits (b, l, M)."""
        return self._head(self.backbone(self.tokens(obs, prev_action, prev_reward, episode_start)))

    def loss(self, batch: dict) -> torch.Tensor:
        head = self(batch["obs"], batch["prev_action"], batch["prev_reward"], batch["episode_start"])
        target = batch["action"]
        if self.head_kind == "mse":
            return F.mse_loss(head[0], target)
        if self.head_kind == "clipped_gaussian":
            return clipped_gaussian_nll(target, *head).mean()
        if self.head_kind == "gaussian_mixture":
            return mixture_nll(target, *head).mean() / self.act_dim
        return gaussian_nll(target, *head).sum(-1).mean() / self.act_dim

    def init_state(self, batch: int, device=None):
        return self.backbone.init_state(batch, device)

    def step(self, obs, prev_action, prev_reward, episode_start, state):
        """One token per sequence (b, ...) -> (*the head's parameters, new state): (mean, log_std, state),
        or (mean, log_std, logits, state) for the mixture."""
        h, state = self.backbone.step(self.tokens(obs, prev_action, prev_reward, episode_start), state)
        return (*self._head(h), state)

    @torch.no_grad()
    def act(self, head: tuple, sample: bool, generator=None):
        """An action per row (b, act_dim) from the head's parameters for one step: a sample, or the mean (the
        mixture: a component drawn by its weight, or the most probable one, then its sample or mean)."""
        mean, log_std, *logits = head
        if log_std is None:
            return mean
        if logits:
            probs = torch.softmax(logits[0], -1)
            chosen = torch.multinomial(probs, 1, generator=generator) if sample else probs.argmax(-1, keepdim=True)
            index = chosen[..., None].expand(-1, 1, mean.shape[-1])
            mean, log_std = mean.gather(-2, index)[:, 0], log_std.gather(-2, index)[:, 0]
        if not sample:
            return mean
        return mean + log_std.exp() * torch.randn(mean.shape, generator=generator, device=mean.device)
