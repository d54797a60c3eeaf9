"""Env-steps per second for every task family: one env, our batched stepper (K = 1, 8, 32) on one
thread and with its physics on 2 threads (`BatchedTasks(threads=2)`), and gymnasium's SyncVectorEnv
of the same K envs. Random actions.

    python benchmarks/tasks.py [--families ...] [--seconds 2]
"""

import argparse
import time

import gymnasium as gym
import numpy as np

from adbench.tasks import FAMILIES, BatchedTasks, make_env, sample_tasks


def rate(step, seconds: float, per_call: int) -> float:
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        calls += 1
    return calls * per_call / (time.perf_counter() - t0)


def measure(family: str, k: int, seconds: float) -> dict:
    tasks = sample_tasks(family, k, 0)
    rng = np.random.default_rng(0)
    env = make_env(family, tasks[0])
    env.reset(seed=0)
    act_dim = env.action_space.shape[0]

    def step_single():
        if env.step(rng.uniform(-1, 1, act_dim))[3]:
            env.reset()

    single = rate(step_single, seconds, 1) if k == 1 else None

    actions = rng.uniform(-1, 1, (k, act_dim)).astype(np.float32)

    def batched(threads: int) -> float:
        batch = BatchedTasks(family, tasks, threads=threads)
        batch.reset(seed=0)

        def step_batch():
            if batch.step(actions)[3].all():
                batch.reset()

        return rate(step_batch, seconds, k)

    ours, ours_2 = batched(1), batched(2)

    vec = gym.vector.SyncVectorEnv([lambda t=t: gym.wrappers.TimeLimit(make_env(family, t), 200) for t in tasks])
    vec.reset(seed=0)
    theirs = rate(lambda: vec.step(actions), seconds, k)
    vec.close()
    return {
        "family": family,
        "K": k,
        "single": single,
        "batched": ours,
        "batched_2_threads": ours_2,
        "sync_vector": theirs,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=sorted(FAMILIES))
    p.add_argument("--sizes", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args()
    print(
        f"{'family':16} {'K':>3} {'single env':>11} {'batched':>10} {'2 threads':>10} {'SyncVectorEnv':>14} "
        f"{'speed-up':>9}   (env-steps/s; speed-up: batched, one thread, over SyncVectorEnv)"
    )
    for family in args.families:
        for k in args.sizes:
            r = measure(family, k, args.seconds)
            single = f"{r['single']:11.0f}" if r["single"] else f"{'':11}"
            print(
                f"{family:16} {k:3d} {single} {r['batched']:10.0f} {r['batched_2_threads']:10.0f} "
                f"{r['sync_vector']:14.0f} "
                f"{r['batched'] / r['sync_vector']:8.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
