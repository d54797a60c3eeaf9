"""What every online meta-RL baseline shares: the recurrent token reader, trials on the batched
stepper, the trainer's resumable state, the meta-training loop and the `baseline-train` stage.

A baseline reads the AD token (observation, previous action, previous reward, episode-start flag)
through a GRU whose hidden state is reset only when a trial starts: a trial is N consecutive episodes
of one task, and what the hidden state carries across them is the in-context learner. Each update
runs one trial on every training task at once, then the baseline's own update (`Trainer.update`).
Within a trial, episode ends are not terminal: the discounted return runs across episodes, which is
what rewards exploring early to earn later.

Every baseline has the AD policy's evaluation interface (`init_state`, `step`, `act`), so the
evaluate stage runs it through the same code, controls included.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import config as cfglib
from .. import process
from ..atomic import atomic_path, write_csv
from ..data import open_histories, task_table, validate_file
from ..measures import edge
from ..models import checkpoint
from ..progress import say
from ..provenance import git_revision
from ..resume import load_progress, save_progress
from ..seeding import derive_seed
from ..sources.batched_nets import RunningMeanStd
from ..sources.ppo import PPOSettings, RewardScaler, clipped_losses, gae, next_values
from ..tasks import BatchedTasks

# Every baseline's trials reset their tasks from the same seeds (the label RL^2 was published with),
# so that baselines meet the same start states.
RESET_LABEL = "rl2-reset"


@dataclass
class TrialSettings(PPOSettings):
    """The source's PPO settings (other defaults), plus what every baseline's training has: the GRU's
    width, the trial structure and the budget."""

    hidden: int = 128
    """the GRU's width."""
    update_epochs: int = 4
    updates: int = 100
    """updates; each runs one trial on every training task."""
    trial_episodes: int = 24
    """episodes per trial (the GRU's state is reset between trials)."""
    checkpoint_every: int = 25


class TokenGRU(nn.Module):
    """Token -> linear+tanh -> GRU, with the input statistics (running mean/std of observations and
    rewards, frozen at each rollout) as buffers, so that a checkpoint carries them; a state-independent
    Gaussian log-std. Subclasses add heads and define `recurrent_step` -> (mean, value, hidden)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, clip_obs: float):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden, self.clip_obs = obs_dim, act_dim, hidden, clip_obs
        self.embed = nn.Linear(obs_dim + act_dim + 2, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("reward_std", torch.ones(()))

    def set_statistics(self, obs_rms: RunningMeanStd, reward_rms: RunningMeanStd) -> None:
        self.obs_mean.copy_(torch.as_tensor(obs_rms.mean[0], dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(np.sqrt(obs_rms.var[0] + 1e-8), dtype=torch.float32))
        self.reward_std.copy_(torch.as_tensor(np.sqrt(reward_rms.var[0, 0] + 1e-8), dtype=torch.float32))

    def normalised_obs(self, obs):
        return ((obs - self.obs_mean) / self.obs_std).clamp(-self.clip_obs, self.clip_obs)

    def normalised_reward(self, reward):
        return (reward / self.reward_std).clamp(-self.clip_obs, self.clip_obs)

    def tokens(self, obs, prev_action, prev_reward, episode_start):
        x = [
            self.normalised_obs(obs),
            prev_action,
            self.normalised_reward(prev_reward)[..., None],
            episode_start[..., None],
        ]
        return torch.tanh(self.embed(torch.cat(x, -1)))

    def read(self, obs, prev_action, prev_reward, episode_start, h0):
        """Sequences (b, l, ...) from hidden state h0 (b, hidden) -> hidden states after each token (b, l, hidden)."""
        y, _ = self.gru(self.tokens(obs, prev_action, prev_reward, episode_start), h0[None])
        return y

    def read_step(self, obs, prev_action, prev_reward, episode_start, h):
        """One token per sequence (b, ...) -> the new hidden state (b, hidden)."""
        x = self.tokens(obs, prev_action, prev_reward, episode_start)
        return torch.gru_cell(
            x, h, self.gru.weight_ih_l0, self.gru.weight_hh_l0, self.gru.bias_ih_l0, self.gru.bias_hh_l0
        )

    def init_state(self, batch: int, device=None):
        return torch.zeros(batch, self.hidden, device=device)

    def step(self, obs, prev_action, prev_reward, episode_start, state):
        """The AD policy's evaluation interface: (mean, log_std, new state)."""
        mean, _, state = self.recurrent_step(obs, prev_action, prev_reward, episode_start, state)
        return mean, self.log_std.expand_as(mean), state

    @torch.no_grad()
    def act(self, head: tuple, sample: bool, generator=None):
        mean, log_std = head
        if not sample:
            return mean
        return mean + log_std.exp() * torch.randn(mean.shape, generator=generator, device=mean.device)


def _trial_seeds(seed: int, update: int, episode: int, k: int) -> list:
    return [derive_seed(seed, RESET_LABEL, update, episode, j) % 2**31 for j in range(k)]


def collect_trial(env: BatchedTasks, policy: TokenGRU, episodes: int, seed: int, update: int, generator) -> dict:
    """One trial of `episodes` episodes on every task of `env`; (K, T, ...) tensors in time order.

    Also returns the hidden state before every step (truncated BPTT starts its segments from them)."""
    k, horizon = env.num_tasks, env.horizon
    steps = episodes * horizon
    buf = {
        "obs": torch.zeros(k, steps, env.obs_dim),
        "prev_action": torch.zeros(k, steps, env.act_dim),
        "prev_reward": torch.zeros(k, steps),
        "episode_start": torch.zeros(k, steps),
        "actions": torch.zeros(k, steps, env.act_dim),
        "log_probs": torch.zeros(k, steps),
        "values": torch.zeros(k, steps),
        "rewards": torch.zeros(k, steps),
        "hidden": torch.zeros(k, steps, policy.hidden),
    }
    h = policy.init_state(k)
    prev_action, prev_reward = torch.zeros(k, env.act_dim), torch.zeros(k)
    std = policy.log_std.exp()
    t = 0
    with torch.no_grad():
        for ep in range(episodes):
            obs = torch.from_numpy(env.reset(seeds=_trial_seeds(seed, update, ep, k)))
            for i in range(horizon):
                start = torch.full((k,), 1.0 if i == 0 else 0.0)
                buf["hidden"][:, t] = h
                mean, value, h = policy.recurrent_step(obs, prev_action, prev_reward, start, h)
                noise = torch.randn(mean.shape, generator=generator)
                action = mean + std * noise
                executed = action.clamp(-1.0, 1.0)
                next_obs, reward, _, _ = env.step(executed.numpy())
                for key, v in (
                    ("obs", obs),
                    ("prev_action", prev_action),
                    ("prev_reward", prev_reward),
                    ("episode_start", start),
                    ("actions", action),
                    ("values", value),
                ):
                    buf[key][:, t] = v
                buf["log_probs"][:, t] = (-0.5 * noise**2 - policy.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
                reward = torch.from_numpy(reward)
                buf["rewards"][:, t] = reward
                obs, prev_action, prev_reward = torch.from_numpy(next_obs), executed, reward
                t += 1
    return buf


def trial_ends(k: int, steps: int) -> torch.Tensor:
    """(K, steps) terminal flags of one trial per row: only its last step; the episodes inside a trial
    are one meta-episode, whose discounted return runs across their boundaries."""
    ends = torch.zeros(k, steps, dtype=torch.bool)
    ends[:, -1] = True
    return ends


def trial_advantages(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """GAE over whole trials (K, steps): bootstrapped across episode ends inside a trial, 0 after its end."""
    ends = trial_ends(*rewards.shape)
    return gae(rewards, values, next_values(values, ends, torch.zeros(rewards.shape[0]), {}), ends, gamma, lam)


class OnlineTrainer:
    """Meta-training state shared by the baselines: the policy, Adam over its RL parameters, input
    normalisers, reward scaler and one torch generator, all saved in a resumable checkpoint.

    A subclass names its ARCH (the config section and the `arch` column), its Config and Policy,
    builds the policy (`make_policy`) and writes `update`; `EXTRA_METRICS` are the update statistics
    beyond the PPO losses, `extra_state` what else its checkpoint carries."""

    ARCH = ""
    Config = None
    Policy = None
    EXTRA_METRICS: tuple = ()

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, cfg, seed: int):
        self.cfg, self.seed = cfg, seed
        torch.manual_seed(derive_seed(seed, f"{self.ARCH}-init"))
        self.policy = self.make_policy(obs_dim, act_dim, cfg)
        self.optimizer = torch.optim.Adam(self.rl_parameters(), lr=cfg.learning_rate, eps=1e-5)
        self.obs_rms, self.reward_rms = RunningMeanStd(1, obs_dim), RunningMeanStd(1, 1)
        self.reward_scaler = RewardScaler(num_tasks, cfg.gamma, cfg.clip_reward)
        self.generator = torch.Generator().manual_seed(derive_seed(seed, f"{self.ARCH}-noise"))
        self.update_index, self.env_steps, self.seconds, self.metrics = 0, 0, 0.0, []

    def make_policy(self, obs_dim: int, act_dim: int, cfg) -> TokenGRU:
        raise NotImplementedError

    def rl_parameters(self):
        """What the policy-gradient loss trains (all of the policy unless a subclass says otherwise)."""
        return self.policy.parameters()

    def check(self, horizon: int) -> None:
        """Raise ValueError where the settings cannot run trials of this horizon."""

    def update(self, buf: dict) -> dict:
        raise NotImplementedError

    def annealed(self, base_lr: float) -> float:
        return base_lr * (1.0 - self.update_index / self.cfg.updates) if self.cfg.anneal_lr else base_lr

    def advantages(self, buf: dict) -> tuple:
        """(advantages, returns) of one rollout's trials, from rewards scaled by the running return's std."""
        cfg = self.cfg
        trial_end = trial_ends(*buf["rewards"].shape)
        scaled = np.stack(
            [self.reward_scaler(r, e) for r, e in zip(buf["rewards"].T.double().numpy(), trial_end.T.numpy())], 1
        )
        adv = trial_advantages(torch.as_tensor(scaled, dtype=torch.float32), buf["values"], cfg.gamma, cfg.gae_lambda)
        return adv, adv + buf["values"]

    def ppo_step(self, mean, value, d: dict, dims: tuple) -> dict:
        """One PPO gradient step on a minibatch `d` (stored actions, log-probs, values, advantages,
        returns) from the policy's fresh `mean` and `value`, averaged over `dims`; its losses."""
        cfg = self.cfg
        dist = torch.distributions.Normal(mean, self.policy.log_std.exp())
        logp = dist.log_prob(d["actions"]).sum(-1)
        pg_loss, v_loss = clipped_losses(
            logp, d["log_probs"], d["adv"], value, d["values"], d["returns"], cfg.clip_coef, dims=dims
        )
        entropy = dist.entropy().sum(-1).mean()
        loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.rl_parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        return {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(), "entropy": entropy.item()}

    def observe(self, buf: dict) -> None:
        """Update the input statistics from a finished rollout; the next rollout (and the policy) use them."""
        self.obs_rms.update(buf["obs"].reshape(1, -1, self.policy.obs_dim).double().numpy())
        self.reward_rms.update(buf["rewards"].reshape(1, -1, 1).double().numpy())
        self.policy.set_statistics(self.obs_rms, self.reward_rms)

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, s: dict) -> None:
        pass

    def state(self) -> dict:
        rms = lambda r: {"mean": torch.from_numpy(r.mean), "var": torch.from_numpy(r.var), "count": r.count}  # noqa: E731
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "obs_rms": rms(self.obs_rms),
            "reward_rms": rms(self.reward_rms),
            "scaler": {
                "discounted": torch.from_numpy(self.reward_scaler.discounted),
                **rms(self.reward_scaler.ret_rms),
            },
            "generator": self.generator.get_state(),
            "update": self.update_index,
            "env_steps": self.env_steps,
            "seconds": self.seconds,
            "metrics": self.metrics,
            **self.extra_state(),
        }

    def load_state(self, s: dict) -> None:
        self.policy.load_state_dict(s["policy"])
        self.optimizer.load_state_dict(s["optimizer"])
        for rms, saved in (
            (self.obs_rms, s["obs_rms"]),
            (self.reward_rms, s["reward_rms"]),
            (self.reward_scaler.ret_rms, s["scaler"]),
        ):
            rms.mean, rms.var, rms.count = saved["mean"].numpy(), saved["var"].numpy(), saved["count"]
        self.reward_scaler.discounted = s["scaler"]["discounted"].numpy()
        self.generator.set_state(s["generator"])
        self.update_index, self.env_steps, self.seconds, self.metrics = (
            s["update"],
            s["env_steps"],
            s["seconds"],
            s["metrics"],
        )
        self.load_extra_state(s)

    def model_config(self) -> dict:
        """The policy's constructor arguments beyond (obs_dim, act_dim), for its checkpoint."""
        p = self.policy
        return {"hidden": p.hidden, "clip_obs": p.clip_obs}


def meta_train(
    trainer_cls,
    family: str,
    tasks: list,
    horizon: int,
    cfg,
    seed: int,
    checkpoint: Path | None = None,
    settings_digest: str = "",
    progress=None,
    stop_after: int | None = None,
    threads: int = 1,
) -> OnlineTrainer:
    """Meta-train a baseline on `tasks`; resumes from `checkpoint` (same settings) and writes it every
    `checkpoint_every` updates. `stop_after` simulates an interruption after that many updates;
    `threads` step the physics (see `BatchedTasks`)."""
    env = BatchedTasks(family, tasks, horizon, threads)
    trainer = trainer_cls(env.obs_dim, env.act_dim, env.num_tasks, cfg, seed)
    trainer.check(env.horizon)
    saved = load_progress(checkpoint, settings_digest, progress) if checkpoint is not None else None
    if saved is not None:
        trainer.load_state(saved)
        say(f"resuming from {checkpoint} at update {trainer.update_index}", progress)
    bar = tqdm(
        total=cfg.updates,
        initial=trainer.update_index,
        desc=f"{trainer.ARCH} {family} x{env.num_tasks}",
        file=progress,
        mininterval=10,
        disable=not progress,
    )
    while trainer.update_index < cfg.updates:
        t0 = time.perf_counter()
        buf = collect_trial(env, trainer.policy, cfg.trial_episodes, seed, trainer.update_index, trainer.generator)
        stats = trainer.update(buf)
        trainer.observe(buf)
        trainer.update_index += 1
        trainer.env_steps += buf["rewards"].numel()
        trainer.seconds += time.perf_counter() - t0
        episode_returns = buf["rewards"].reshape(env.num_tasks, cfg.trial_episodes, env.horizon).sum(-1).mean(0)
        e = edge(cfg.trial_episodes)
        trainer.metrics.append(
            {
                "update": trainer.update_index,
                "env_steps": trainer.env_steps,
                "first_return": float(episode_returns[:e].mean()),
                "last_return": float(episode_returns[-e:].mean()),
                **stats,
            }
        )
        bar.update(1)
        bar.set_postfix(
            first=f"{trainer.metrics[-1]['first_return']:.1f}",
            last=f"{trainer.metrics[-1]['last_return']:.1f}",
            refresh=False,
        )
        done = trainer.update_index
        if checkpoint is not None and done % cfg.checkpoint_every == 0 and done < cfg.updates:
            save_progress(checkpoint, settings_digest, trainer.state())
        if stop_after is not None and done >= stop_after:
            raise KeyboardInterrupt(f"stopped after update {done} (stop_after)")
    bar.close()
    return trainer


def save_policy(path, trainer: OnlineTrainer, meta: dict) -> None:
    p = trainer.policy
    checkpoint.save(
        path,
        {
            "arch": trainer.ARCH,
            "obs_dim": p.obs_dim,
            "act_dim": p.act_dim,
            "model_config": trainer.model_config(),
            "state_dict": p.state_dict(),
            "meta": meta,
        },
    )


METRICS = [
    "family",
    "arch",
    "seed",
    "update",
    "env_steps",
    "first_return",
    "last_return",
    "pg_loss",
    "v_loss",
    "entropy",
    "env_steps_per_s",
]


def run(trainer_cls, cfg: dict, dataset, seed: int, out_dir, progress=None, stop_after: int | None = None) -> Path:
    """The baseline-train stage: meta-train on the dataset's training tasks (the ones AD learns from),
    write out_dir/model.pt (with the env-step budget in its meta) and out_dir/metrics.csv."""
    arch = trainer_cls.ARCH
    settings = dict(cfg[arch])
    threads = settings.pop("threads")
    process.setup(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = validate_file(dataset)
    with open_histories(dataset) as f:
        horizon = int(f.attrs["horizon"])
        tasks = [task for _, split, task in task_table(f) if split == "train"]
    family = info["family"]
    settings_digest = cfglib.digest(
        {arch: cfg[arch], "family": family, "seed": seed, "tasks": tasks, "horizon": horizon}
    )
    bcfg = trainer_cls.Config(**settings)
    say(
        f"{arch} {family}: {len(tasks)} training tasks, trials of {bcfg.trial_episodes} x {horizon} steps, "
        f"{bcfg.updates} updates = {bcfg.updates * len(tasks) * bcfg.trial_episodes * horizon} env steps",
        progress,
    )
    trainer = meta_train(
        trainer_cls,
        family,
        tasks,
        horizon,
        bcfg,
        derive_seed(seed, arch, family),
        out_dir / "checkpoint.pt",
        settings_digest,
        progress,
        stop_after,
        threads,
    )
    rate = trainer.env_steps / max(trainer.seconds, 1e-9)
    meta = {
        "family": family,
        "context_episodes": 0,
        "seed": seed,
        "horizon": horizon,
        "train_env_steps": trainer.env_steps,
        "trial_episodes": bcfg.trial_episodes,
        "parameters": sum(p.numel() for p in trainer.policy.parameters()),
        "commit": git_revision(),
    }
    with atomic_path(out_dir / "model.pt") as tmp:
        save_policy(tmp, trainer, meta)
    rows = ({"family": family, "arch": arch, "seed": seed, **row, "env_steps_per_s": rate} for row in trainer.metrics)
    write_csv(out_dir / "metrics.csv", rows, METRICS[:-1] + list(trainer_cls.EXTRA_METRICS) + METRICS[-1:])
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    say(f"{arch} {family}: {trainer.env_steps} env steps at {rate:.0f} env-steps/s (rollouts and updates)", progress)
    return out_dir / "model.pt"
