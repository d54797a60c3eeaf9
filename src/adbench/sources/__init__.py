"""Source RL algorithms that produce learning histories, batched across tasks."""

from .ppo import PPOConfig, run_ppo

ALGORITHMS = {"ppo": (PPOConfig, run_ppo)}


def generate_histories(algorithm: str, settings: dict, family: str, tasks: list, horizon: int,
                       episodes: int, seed: int, progress=None) -> dict:
    """Run the source algorithm once per task; arrays have a leading axis over `tasks`."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown source algorithm {algorithm!r} (config source.algorithm); known: {sorted(ALGORITHMS)}")
    config_cls, run = ALGORITHMS[algorithm]
    return run(family, tasks, horizon, episodes, config_cls(**settings), seed, progress=progress)
