"""Step K tasks of one family with one call, returning stacked arrays."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .registry import get_family, make_env


class BatchedTasks:
    """K independent envs (one per task) stepped in lockstep.

    Every family has a fixed horizon and no early termination, so all K episodes end together:
    `step` reports `truncated` for all at once and the caller calls `reset` to start the next.
    Each env's `transition` is called rather than `step`, skipping the per-step info dict.
    With `threads` > 1 (MuJoCo families) the envs are split into that many contiguous groups: the
    calling thread steps the physics of the first, helper threads the others, and MuJoCo releases
    the GIL inside mj_step, so physics runs on several cores. The helpers run nothing but mj_step
    (Python there would serialise on the GIL); each env's physics is only ever run by one thread at
    a time, in the same order, so results do not depend on `threads`.
    """

    def __init__(self, family: str, tasks: list, horizon: int | None = None, threads: int = 1):
        self.family = get_family(family)
        self.horizon = int(horizon or self.family.horizon)
        self.envs = [make_env(family, t, self.horizon) for t in tasks]
        self.tasks = [env.task for env in self.envs]
        self.num_tasks = len(self.envs)
        self.obs_dim = self.envs[0].observation_space.shape[0]
        self.act_dim = self.envs[0].action_space.shape[0]
        self._physics = hasattr(self.envs[0], "simulate")  # the MuJoCo families; PointNav steps in one go
        self.threads = max(1, min(int(threads), self.num_tasks)) if self._physics else 1
        bounds = np.linspace(0, self.num_tasks, self.threads + 1).astype(int)
        self._groups = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="physics") if self.threads > 1 else None

    def set_tasks(self, rows, tasks: list) -> None:
        """Give envs `rows` new tasks (one per row), in effect from their next `reset`: each is rebuilt, as a
        task may change the dynamics."""
        for i, task in zip(rows, tasks):
            self.envs[i] = make_env(self.family.name, task, self.horizon)
            self.tasks[i] = self.envs[i].task

    def reset(self, seed: int | None = None, seeds: list | None = None) -> np.ndarray:
        """Start the next episode of every task: env i seeded with seed + i, or with seeds[i]."""
        if seeds is None:
            seeds = [None] * self.num_tasks if seed is None else [seed + i for i in range(self.num_tasks)]
        return np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)]).astype(np.float32)

    def step(self, actions: np.ndarray):
        """Returns obs (K, obs_dim) float32, rewards (K,), terminated (K,) (always False), truncated (K,)."""
        if not self._physics:
            out = [env.transition(a) for env, a in zip(self.envs, np.asarray(actions))]
        else:
            actions = self.envs[0].clip_action(actions)  # the same box for every task of a family
            own = self._groups[0]
            for env, a in zip(self.envs[own.stop :], actions[own.stop :]):
                env.apply_action(a)
            # helper threads run only physics: Python work there would serialise on the GIL
            helpers = [self._pool.submit(self._simulate, rows) for rows in self._groups[1:]]
            for env, a in zip(self.envs[own], actions[own]):  # this thread's share overlaps the helpers
                env.apply_action(a)
                env.simulate()
            for h in helpers:
                h.result()
            out = [env.observe() for env in self.envs]
        obs = np.stack([o[0] for o in out]).astype(np.float32)
        rewards = np.array([o[1] for o in out], dtype=np.float32)
        truncated = np.array([o[2] for o in out], dtype=bool)
        return obs, rewards, np.zeros(self.num_tasks, dtype=bool), truncated

    def _simulate(self, rows: slice) -> None:
        for env in self.envs[rows]:
            env.simulate()

    @property
    def reward_varies(self) -> bool:
        return self.envs[0].reward_varies

    def rewards_under(self, tasks: list, rows=None) -> np.ndarray:
        """Rewards the last step of envs `rows` (default: all) would have earned under `tasks` (one per
        row), for a family whose task changes the reward; see each env's `reward_under`."""
        if not self.reward_varies:
            raise ValueError(f"{self.family.name} varies dynamics, not rewards: no counterfactual reward")
        envs = self.envs if rows is None else [self.envs[i] for i in rows]
        return np.array([env.reward_under(t) for env, t in zip(envs, tasks)], dtype=np.float32)
