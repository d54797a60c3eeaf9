"""The histories and dataset stages: run the source algorithm on a shard of tasks, merge shards into one file."""

import torch

from . import config as cfglib
from .atomic import atomic_path
from .data import atomic_h5, open_histories, validate_file, write_root_attrs, write_task
from .measures import edge
from .models import checkpoint
from .progress import say
from .provenance import git_revision, package_versions
from .seeding import derive_seed
from .sources import PPOConfig, TaskExpert, generate_histories, train_task_expert
from .tasks import split_tasks, task_ids, validation_tasks

SECTIONS = ["tasks", "source"]


def all_tasks(cfg: dict, family: str) -> list:
    """[(task_id, split, task)] for a family: train, test, then validation tasks (their own draw)."""
    t = cfg["tasks"]
    train, test = split_tasks(family, t["n_train"], t["n_test"], derive_seed(t["seed"], "tasks", family))
    val = validation_tasks(family, t["n_val"], derive_seed(t["seed"], "validation tasks", family), train + test)
    return [
        (tid, split, task)
        for split, tasks in (("train", train), ("test", test), ("val", val))
        for tid, task in zip(task_ids(split, len(tasks)), tasks)
    ]


def shard_tasks(cfg: dict, family: str, shard: int) -> list:
    """The (task_id, split, task) of one shard (`config.shard_sizes`)."""
    sizes = cfglib.shard_sizes(cfg)
    if not 0 <= shard < len(sizes):
        raise ValueError(
            f"shard {shard} out of range: {family} has {len(sizes)} shards at "
            f"source.tasks_per_shard={cfg['source']['tasks_per_shard']}"
        )
    start = sum(sizes[:shard])
    return all_tasks(cfg, family)[start : start + sizes[shard]]


def expert_env_steps(cfg: dict, family: str) -> int:
    """Environment steps spent training the task-conditioned expert (0 where there is none)."""
    if not cfglib.needs_expert(cfg):
        return 0
    horizon = cfglib.horizon(cfg, family)
    return cfg["tasks"]["n_train"] * cfg["source"]["noise_distill"]["expert_episodes"] * horizon


def expert_digest(cfg: dict) -> str:
    """What defines a task-conditioned expert: the tasks and the source's seed, threads, PPO settings and
    expert budget, not how its histories are rolled out (their length, noise)."""
    src = cfg["source"]
    return cfglib.digest(
        {
            # the expert learns the training tasks only: validation tasks do not change it
            "tasks": {k: v for k, v in cfg["tasks"].items() if k != "n_val"},
            "seed": src["seed"],
            "threads": src["threads"],
            "ppo": src["ppo"],
            "expert": {k: src["noise_distill"][k] for k in ("expert", "expert_episodes", "expert_tasks")},
        }
    )


def train_expert(cfg: dict, family: str, out_path, progress=None) -> None:
    """The task-conditioned expert of `source.noise_distill.expert: task_ppo`, trained on the training tasks only."""
    src = cfg["source"]
    if not cfglib.needs_expert(cfg):
        raise ValueError(
            "the expert stage runs only with source.algorithm noise_distill and source.noise_distill.expert task_ppo"
        )
    torch.set_num_threads(src["threads"])
    train = [task for _, split, task in all_tasks(cfg, family) if split == "train"]
    horizon = cfglib.horizon(cfg, family)
    trained_on_fresh = src["noise_distill"]["expert_tasks"] == "fresh"
    expert, returns = train_task_expert(
        family,
        train,
        horizon,
        src["noise_distill"]["expert_episodes"],
        PPOConfig(**src["ppo"]),
        derive_seed(src["seed"], "expert", family),
        progress,
        src["threads"],
        fresh_tasks=trained_on_fresh,
    )
    last = edge(returns.shape[1])
    trained_on = "fresh draws of tasks" if trained_on_fresh else "training tasks"
    say(
        f"task expert {family}: mean return over {trained_on}, first {last} episodes "
        f"{returns[:, :last].mean():.1f}, last {last} {returns[:, -last:].mean():.1f}",
        progress,
    )
    with atomic_path(out_path) as tmp:  # saved with a digest of its contents, like every checkpoint
        checkpoint.save(
            tmp,
            {
                **expert.state_dict(),
                "config_digest": expert_digest(cfg),
                "env_steps": expert_env_steps(cfg, family),
                "train_returns": torch.from_numpy(returns),
            },
        )


def load_expert(path, cfg: dict, family: str) -> tuple[TaskExpert, int]:
    """The trained expert that rolls out `family`'s histories (its own, or the one it steers) and the
    environment steps its training took."""
    state = checkpoint.load(path)  # ModelError in one line if damaged
    owner = cfglib.expert_family(cfg, family)
    if state.get("family") != owner or (owner == family and state.get("config_digest") != expert_digest(cfg)):
        raise ValueError(f"{path}: not the {owner} expert of this config; delete it and rerun the workflow")
    return TaskExpert.from_state_dict(state), int(state["env_steps"])


def root_attrs(cfg: dict, family: str) -> dict:
    src = cfg["source"]
    return {
        "family": family,
        "source_algorithm": src["algorithm"],
        "source_settings": {k: v for k, v in src.items() if k not in ("algorithm", "tasks_per_shard", "threads")},
        "config_digest": cfglib.digest({s: cfg[s] for s in SECTIONS}),
        "package_versions": package_versions(),
        "git_revision": git_revision(),
        "horizon": cfglib.horizon(cfg, family),
        "episodes": src["episodes"],
        "histories_per_task": src["histories_per_task"],
        "expert_env_steps": expert_env_steps(cfg, family),
    }


def run_shard(cfg: dict, family: str, shard: int, out_path, progress=None, expert_path=None) -> None:
    """Learning histories of every task in one shard, written atomically to `out_path`; `expert_path` is
    the `expert` stage's output where the source needs it."""
    src = cfg["source"]
    torch.set_num_threads(src["threads"])  # float reductions, hence the histories, depend on it
    chunk = shard_tasks(cfg, family, shard)
    h = src["histories_per_task"]
    learners = [task for _, _, task in chunk for _ in range(h)]  # H independent learners per task
    attrs = root_attrs(cfg, family)
    owner = cfglib.expert_family(cfg, family)
    if owner is not None and expert_path is None:
        raise ValueError(
            f"source.noise_distill.expert {cfg['source']['noise_distill']['expert']}: give the trained "
            f"{owner} expert (--expert, the expert stage's output)"
        )
    expert = None
    if owner is not None:
        expert, attrs["expert_env_steps"] = load_expert(expert_path, cfg, family)
    hist = generate_histories(
        src,
        family,
        learners,
        attrs["horizon"],
        derive_seed(src["seed"], "histories", family, shard),
        progress=progress,
        task_expert=expert,
    )
    with atomic_h5(out_path) as f:
        write_root_attrs(f, {**attrs, "shard": shard})
        for i, (tid, split, task) in enumerate(chunk):
            write_task(f, tid, task, split, {k: v[i * h : (i + 1) * h] for k, v in hist.items()})


def merge_shards(cfg: dict, family: str, shard_paths: list, out_path) -> dict:
    """One dataset file per family from its shards (chunks and compression copied as they are)."""
    expected = [tid for tid, _, _ in all_tasks(cfg, family)]
    with atomic_h5(out_path) as f:
        write_root_attrs(f, root_attrs(cfg, family))
        dst = f.create_group("tasks", track_order=True)
        for path in shard_paths:
            with open_histories(path) as shard:
                if shard.attrs["family"] != family or shard.attrs["config_digest"] != f.attrs["config_digest"]:
                    raise ValueError(f"{path}: shard of another family or config; delete it and rerun the workflow")
                f.attrs["expert_env_steps"] = shard.attrs["expert_env_steps"]  # as the expert file said
                for tid in shard["tasks"]:
                    shard.copy(shard["tasks"][tid], dst, name=tid)
        got = list(dst)
        if sorted(got) != sorted(expected):
            raise ValueError(f"shards hold tasks {got}, expected {expected}")
    return validate_file(out_path)


def episode_returns(path, split: str) -> dict:
    """{task_id: (H, E) returns} of one split, read from the dataset alone."""
    with open_histories(path) as f:
        return {tid: g["episode_returns"][...] for tid, g in f["tasks"].items() if g.attrs["split"] == split}
