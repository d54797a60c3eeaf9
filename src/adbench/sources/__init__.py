"""Source algorithms that produce learning histories, batched across tasks."""

from .noise_distill import NoiseDistillConfig, run_noise_distill
from .ppo import PPOConfig, run_ppo, train_ppo
from .task_expert import TaskExpert, train_task_expert

ALGORITHMS = ("ppo", "noise_distill")


def generate_histories(
    source: dict,
    family: str,
    tasks: list,
    horizon: int,
    seed: int,
    progress=None,
    task_expert: TaskExpert | None = None,
) -> dict:
    """Run the configured source algorithm (config section `source`) once per task; `task_expert` is the
    trained expert where source.noise_distill.expert is 'task_ppo'.

    Returns arrays with a leading axis over `tasks` (see `history.empty_history`) and episode_returns.
    """
    algorithm, episodes, threads = source["algorithm"], source["episodes"], source["threads"]
    if algorithm == "ppo":
        return run_ppo(family, tasks, horizon, episodes, PPOConfig(**source["ppo"]), seed, progress, threads)
    if algorithm == "noise_distill":
        return run_noise_distill(
            family,
            tasks,
            horizon,
            episodes,
            NoiseDistillConfig(**source["noise_distill"]),
            seed,
            PPOConfig(**source["ppo"]),
            progress,
            threads,
            task_expert,
        )
    raise ValueError(f"unknown source algorithm {algorithm!r} (config source.algorithm); known: {list(ALGORITHMS)}")


__all__ = [
    "ALGORITHMS",
    "NoiseDistillConfig",
    "PPOConfig",
    "TaskExpert",
    "generate_histories",
    "run_noise_distill",
    "run_ppo",
    "train_ppo",
    "train_task_expert",
]
