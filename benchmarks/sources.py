"""Source-algorithm throughput: our batched PPO (K independent learners in one process) against
stable-baselines3's PPO (one learner), same networks (64-64 tanh), rollout length, minibatch size
and epochs, on HalfCheetahVel. Env-steps per second including the PPO updates, at each thread
count (torch intra-op threads; ours also steps its K simulators on that many threads, which
sb3's single env cannot).

    pip install stable-baselines3==2.9.2   # the peer, for this benchmark only
    python benchmarks/sources.py [--sizes 1 8 32] [--threads 1 2] [--updates 2] [--repeats 3]

The rows of one thread count run interleaved, --repeats times, and the median is printed with the
range: this machine's speed drifts by 10-20% over minutes, and interleaving makes the ratio to sb3
robust to it.
"""

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from adbench.sources import PPOConfig, run_ppo
from adbench.tasks import make_env, sample_tasks

FAMILY, HORIZON = "HalfCheetahVel", 200
ROLLOUT_EPISODES, MINIBATCH, EPOCHS = 10, 64, 10  # sb3's 2048-step rollouts, as close as 200-step episodes allow


def ours(k: int, updates: int, threads: int) -> float:
    cfg = PPOConfig(
        learning_rate=3e-4,
        rollout_episodes=ROLLOUT_EPISODES,
        update_epochs=EPOCHS,
        minibatches=ROLLOUT_EPISODES * HORIZON // MINIBATCH,
    )
    tasks = sample_tasks(FAMILY, k, 0)
    t0 = time.perf_counter()
    run_ppo(FAMILY, tasks, HORIZON, updates * ROLLOUT_EPISODES, cfg, seed=0, threads=threads)
    return k * updates * ROLLOUT_EPISODES * HORIZON / (time.perf_counter() - t0)


def sb3(updates: int) -> float:
    from stable_baselines3 import PPO

    env = gym.wrappers.TimeLimit(make_env(FAMILY, sample_tasks(FAMILY, 1, 0)[0]), HORIZON)
    n_steps = ROLLOUT_EPISODES * HORIZON
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=n_steps,
        batch_size=MINIBATCH,
        n_epochs=EPOCHS,
        device="cpu",
        seed=0,
        policy_kwargs={"net_arch": [64, 64], "activation_fn": torch.nn.Tanh},
    )
    t0 = time.perf_counter()
    model.learn(total_timesteps=updates * n_steps)
    return updates * n_steps / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--updates", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs of each; the median is reported")
    args = p.parse_args()
    print(f"{'implementation':24} {'threads':>7} {'K tasks':>7} {'env-steps/s (median, range)':>30} {'x sb3':>6}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs = {k: [] for k in ["sb3"] + args.sizes}
        for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits every row
            runs["sb3"].append(sb3(args.updates))
            for k in args.sizes:
                runs[k].append(ours(k, args.updates, threads))
        base = float(np.median(runs["sb3"]))
        for k, rates in runs.items():
            name, size = ("stable-baselines3 PPO", 1) if k == "sb3" else ("adbench batched PPO", k)
            med = float(np.median(rates))
            spread = f"{med:8.0f} ({min(rates):6.0f}-{max(rates):6.0f})"
            print(f"{name:24} {threads:7d} {size:7d} {spread:>30} {med / base:6.2f}", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
