"""Source-algorithm throughput: our batched PPO (K independent learners in one process) against
stable-baselines3's PPO (one learner), same networks (64-64 tanh), rollout length, minibatch size
and epochs, on HalfCheetahVel. Env-steps per second including the PPO updates, one thread each.

    pip install stable-baselines3==2.9.2   # the peer, for this benchmark only
    python benchmarks/sources.py [--sizes 1 8 32] [--updates 2]
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


def ours(k: int, updates: int) -> float:
    cfg = PPOConfig(learning_rate=3e-4, rollout_episodes=ROLLOUT_EPISODES, update_epochs=EPOCHS,
                    minibatches=ROLLOUT_EPISODES * HORIZON // MINIBATCH)
    tasks = sample_tasks(FAMILY, k, 0)
    t0 = time.perf_counter()
    run_ppo(FAMILY, tasks, HORIZON, updates * ROLLOUT_EPISODES, cfg, seed=0)
    return k * updates * ROLLOUT_EPISODES * HORIZON / (time.perf_counter() - t0)


def sb3(updates: int) -> float:
    from stable_baselines3 import PPO
    env = gym.wrappers.TimeLimit(make_env(FAMILY, sample_tasks(FAMILY, 1, 0)[0]), HORIZON)
    n_steps = ROLLOUT_EPISODES * HORIZON
    model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=MINIBATCH, n_epochs=EPOCHS, device="cpu", seed=0,
                policy_kwargs={"net_arch": [64, 64], "activation_fn": torch.nn.Tanh})
    t0 = time.perf_counter()
    model.learn(total_timesteps=updates * n_steps)
    return updates * n_steps / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--updates", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    base = sb3(args.updates)
    print(f"{'implementation':26} {'K tasks':>8} {'env-steps/s':>12} {'x sb3':>7}")
    print(f"{'stable-baselines3 PPO':26} {1:8d} {base:12.0f} {1.0:7.2f}", flush=True)
    for k in args.sizes:
        r = ours(k, args.updates)
        print(f"{'adbench batched PPO':26} {k:8d} {r:12.0f} {r / base:7.2f}", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
