"""VariBAD (Zintgraf et al. 2020): a belief over the task, learnt by a VAE, and a policy acting on it.

The encoder reads the AD token through a GRU (`online.TokenGRU`, reset only between trials) into a
Gaussian posterior q(m | history) over a task latent m. The decoder predicts each step's reward from
its observation, its executed action and a latent drawn from the posterior at another step of the
same trial (the past and the future), so the posterior must hold what the rewards say about the task;
consecutive posteriors are tied by their KL divergence (the first to N(0, I)). The policy and the
value are MLPs over the normalised observation and the posterior's mean and log-variance, trained by
PPO with the belief held fixed: as in VariBAD's default, the policy gradient does not reach the
encoder. Trials run several episodes, the discounted return runs across them (the BAMDP horizon).

The VAE's steps sample their trials from a buffer of the last `vae_buffer` updates' trials, as the
original samples past rollouts, so the encoder is not refitted to each new policy's trials alone; its
learning rate anneals with the policy's. Left out: the decoder of next states.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .online import OnlineTrainer, TokenGRU, TrialSettings

ARCH = "varibad"
VAE_KEYS = ("obs", "prev_action", "prev_reward", "episode_start", "actions", "rewards")


@dataclass
class VariBADConfig(TrialSettings):
    """The VAE's settings beside the trials' (`hidden` is the encoder's GRU)."""

    latent_dim: int = 5
    policy_hidden: int = 64
    """width of the policy's and the value's two hidden layers."""
    decoder_hidden: int = 64
    vae_learning_rate: float = 0.003
    vae_updates: int = 16
    """VAE gradient steps per update, each over as many trials as a rollout has, drawn from the buffer."""
    vae_buffer: int = 10
    """updates whose trials the VAE's buffer holds (1: the current rollout's alone)."""
    vae_beliefs: int = 8
    """posteriors drawn per trial in a VAE step: the steps whose beliefs decode."""
    vae_decode: int = 64
    """the trial's transitions each of those beliefs decodes the reward of."""
    kl_weight: float = 0.1


def _mlp(sizes: list, activation, out_gain: float) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else 2**0.5)
        nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, activation()]
    return nn.Sequential(*layers)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (K, T, ...) at index (K, n) -> (K, n, ...)."""
    return x[torch.arange(x.shape[0])[:, None], index]


class VariBADPolicy(TokenGRU):
    """Encoder (token -> GRU -> posterior mean and log-variance), reward decoder, policy and value MLPs."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: int = 128,
        latent_dim: int = 5,
        policy_hidden: int = 64,
        decoder_hidden: int = 64,
        init_log_std: float = 0.0,
        clip_obs: float = 10.0,
    ):
        super().__init__(obs_dim, act_dim, hidden, clip_obs)
        self.latent_dim, self.policy_hidden, self.decoder_hidden = latent_dim, policy_hidden, decoder_hidden
        nn.init.orthogonal_(self.embed.weight, 2**0.5)
        nn.init.zeros_(self.embed.bias)
        self.posterior = nn.Linear(hidden, 2 * latent_dim)
        belief_in = obs_dim + 2 * latent_dim
        self.actor = _mlp([belief_in, policy_hidden, policy_hidden, act_dim], nn.Tanh, 0.01)
        self.critic = _mlp([belief_in, policy_hidden, policy_hidden, 1], nn.Tanh, 1.0)
        self.decoder = _mlp([obs_dim + act_dim + latent_dim, decoder_hidden, decoder_hidden, 1], nn.ReLU, 1.0)
        self.log_std = nn.Parameter(torch.full((act_dim,), init_log_std))

    def belief(self, h):
        """Hidden states (..., hidden) -> the posterior's (mean, log-variance) concatenated (..., 2 latent)."""
        mu, logvar = self.posterior(h).chunk(2, -1)
        return torch.cat([mu, logvar.clamp(-10.0, 5.0)], -1)

    def heads(self, obs, belief):
        x = torch.cat([self.normalised_obs(obs), belief], -1)
        return self.actor(x), self.critic(x)[..., 0]

    def recurrent_step(self, obs, prev_action, prev_reward, episode_start, h):
        """One token per sequence (b, ...) -> (mean, value, new hidden state)."""
        h = self.read_step(obs, prev_action, prev_reward, episode_start, h)
        mean, value = self.heads(obs, self.belief(h))
        return mean, value, h

    def decode(self, obs, action, latent):
        """The reward (in the encoder's normalised units) of `action` at `obs` in the task `latent`."""
        return self.decoder(torch.cat([self.normalised_obs(obs), action, latent], -1))[..., 0]

    def encoder_parameters(self):
        return [*self.embed.parameters(), *self.gru.parameters(), *self.posterior.parameters()]

    def rl_parameters(self):
        return [*self.actor.parameters(), *self.critic.parameters(), self.log_std]


def consecutive_kl(belief: torch.Tensor) -> torch.Tensor:
    """KL(q_t || q_{t-1}) of diagonal Gaussians along a trial (K, T, 2 latent) -> (K, T); q_{-1} = N(0, I)."""
    mu, logvar = belief.chunk(2, -1)
    prior_mu = torch.cat([torch.zeros_like(mu[:, :1]), mu[:, :-1]], 1)
    prior_logvar = torch.cat([torch.zeros_like(logvar[:, :1]), logvar[:, :-1]], 1)
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu) ** 2) / prior_logvar.exp() - 1.0).sum(-1)


class VariBADTrainer(OnlineTrainer):
    """PPO on the policy and value over single steps (the belief fixed as collected), then VAE steps on
    the encoder and decoder over the same trials; one generator draws the exploration noise, the
    minibatch order and the VAE's samples."""

    ARCH = ARCH
    Config = VariBADConfig
    Policy = VariBADPolicy
    EXTRA_METRICS = ("reward_loss", "kl")

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, cfg: VariBADConfig, seed: int):
        super().__init__(obs_dim, act_dim, num_tasks, cfg, seed)
        vae = [*self.policy.encoder_parameters(), *self.policy.decoder.parameters()]
        self.vae_optimizer = torch.optim.Adam(vae, lr=cfg.vae_learning_rate)
        self.vae_trials: list = []  # the last `vae_buffer` rollouts' trials (VAE_KEYS), oldest first

    def make_policy(self, obs_dim: int, act_dim: int, cfg: VariBADConfig) -> VariBADPolicy:
        return VariBADPolicy(
            obs_dim,
            act_dim,
            cfg.hidden,
            cfg.latent_dim,
            cfg.policy_hidden,
            cfg.decoder_hidden,
            cfg.init_log_std,
            cfg.clip_obs,
        )

    def rl_parameters(self):
        return self.policy.rl_parameters()

    def model_config(self) -> dict:
        p = self.policy
        return {
            "hidden": p.hidden,
            "latent_dim": p.latent_dim,
            "policy_hidden": p.policy_hidden,
            "decoder_hidden": p.decoder_hidden,
            "clip_obs": p.clip_obs,
        }

    def extra_state(self) -> dict:
        return {"vae_optimizer": self.vae_optimizer.state_dict(), "vae_trials": self.vae_trials}

    def load_extra_state(self, s: dict) -> None:
        self.vae_optimizer.load_state_dict(s["vae_optimizer"])
        self.vae_trials = s["vae_trials"]

    def remember(self, buf: dict) -> dict:
        """Add a rollout's trials to the VAE's buffer, dropping those beyond `vae_buffer` rollouts;
        the buffer's trials as one batch (n, T, ...)."""
        self.vae_trials = [*self.vae_trials, {key: buf[key] for key in VAE_KEYS}][-self.cfg.vae_buffer :]
        return {key: torch.cat([t[key] for t in self.vae_trials]) for key in VAE_KEYS}

    def beliefs(self, buf: dict) -> torch.Tensor:
        """The posterior at every step of every trial (K, T, 2 latent), read from the trial's start."""
        k = buf["obs"].shape[0]
        h = self.policy.read(
            buf["obs"], buf["prev_action"], buf["prev_reward"], buf["episode_start"], self.policy.init_state(k)
        )
        return self.policy.belief(h)

    def update(self, buf: dict) -> dict:
        cfg, policy = self.cfg, self.policy
        self.optimizer.param_groups[0]["lr"] = self.annealed(cfg.learning_rate)
        adv, returns = self.advantages(buf)
        with torch.no_grad():
            belief = self.beliefs(buf)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        data = {
            "obs": flat(buf["obs"]),
            "belief": flat(belief),
            "actions": flat(buf["actions"]),
            "log_probs": flat(buf["log_probs"]),
            "values": flat(buf["values"]),
            "adv": flat(adv),
            "returns": flat(returns),
        }
        n = data["obs"].shape[0]
        mb = max(1, n // cfg.minibatches)
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(n, generator=self.generator)
            for start in range(0, n, mb):
                d = {key: v[perm[start : start + mb]] for key, v in data.items()}
                mean, value = policy.heads(d["obs"], d["belief"])
                stats = self.ppo_step(mean, value, d, dims=(0,))
        self.vae_optimizer.param_groups[0]["lr"] = self.annealed(cfg.vae_learning_rate)
        reward_loss, kl = self.vae_update(self.remember(buf), batch=buf["rewards"].shape[0])
        return {
            **stats,
            "reward_loss": reward_loss,
            "kl": kl,
        }

    def vae_update(self, trials: dict, batch: int | None = None) -> tuple:
        """`vae_updates` steps of the negative ELBO, each over `batch` of the `trials` drawn without
        replacement (all of them where batch is None or not fewer): each step draws `vae_beliefs` steps
        per trial, a latent from each step's posterior, and decodes the rewards of `vae_decode` of the
        trial's transitions."""
        cfg, policy = self.cfg, self.policy
        n, steps = trials["rewards"].shape
        k = n if batch is None else min(batch, n)
        for _ in range(cfg.vae_updates):
            pick = None if k == n else torch.randperm(n, generator=self.generator)[:k]
            buf = trials if pick is None else {key: v[pick] for key, v in trials.items()}
            executed = buf["actions"].clamp(-1.0, 1.0)
            belief = self.beliefs(buf)
            kl = consecutive_kl(belief).mean()
            at = torch.randint(steps, (k, cfg.vae_beliefs), generator=self.generator)
            mu, logvar = _gather(belief, at).chunk(2, -1)
            latent = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=self.generator)
            of = torch.randint(steps, (k, cfg.vae_decode), generator=self.generator)
            shape = (k, cfg.vae_beliefs, cfg.vae_decode)
            predicted = policy.decode(
                _gather(buf["obs"], of)[:, None].expand(*shape, -1),
                _gather(executed, of)[:, None].expand(*shape, -1),
                latent[:, :, None].expand(*shape, -1),
            )
            target = policy.normalised_reward(_gather(buf["rewards"], of))[:, None].expand(shape)
            reward_loss = ((predicted - target) ** 2).mean()
            loss = reward_loss + cfg.kl_weight * kl
            self.vae_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.vae_optimizer.param_groups[0]["params"], cfg.max_grad_norm)
            self.vae_optimizer.step()
        return reward_loss.item(), kl.item()
