"""Aggregate statistics over held-out tasks with 95% confidence intervals that contain every source of
variance a result has: training seeds, held-out tasks and evaluation runs.

A model's scores form a (training seeds x tasks x evaluation seeds) array. Every CI here is a
percentile bootstrap that resamples the three levels in turn (a hierarchical bootstrap): training
seeds with replacement, then held-out tasks with replacement (the same draw for every seed, as every
seed was evaluated on the same tasks), then the evaluation runs of each (seed, task) cell. With one
training seed the first level cannot vary, so a row says how many training seeds it has
(`training_seeds`) and the claims table calls no verdict on fewer than `claims.MIN_SEEDS`.

The statistics themselves are rliable's (Agarwal et al. 2021): the mean, the interquartile mean, the
optimality gap and the probability of improvement, computed on the (runs x tasks) matrix a resample
makes, where a run is one (training seed, evaluation seed) pair. Two models compared resample their
seeds and evaluation runs independently and share the task draw.
"""

import logging
import zlib

import numpy as np
import pandas as pd

logging.getLogger("absl").setLevel(logging.WARNING)  # rliable logs one INFO line per estimate
from rliable import metrics  # noqa: E402

BOOTSTRAP = 2000
CONFIDENCE = 0.95
LEVELS = ["seed", "task", "eval_seed"]


def row_seed(seed: int, *key) -> int:
    """A 32-bit seed for one table row, from the config's seed and the row's identity alone, so that a
    row's CIs do not move when other rows join the table."""
    words = [seed, zlib.crc32("/".join(str(k) for k in key).encode())]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def unit_array(units: pd.DataFrame, value: str) -> np.ndarray:
    """Units with columns seed, task, eval_seed and `value` -> a (seeds x tasks x eval seeds) array, each
    level in sorted order; every cell must be there."""
    cube = units.pivot_table(index="seed", columns=["task", "eval_seed"], values=value, aggfunc="mean")
    cube = cube.sort_index().sort_index(axis=1)
    tasks = cube.columns.get_level_values("task").unique()
    evals = cube.columns.get_level_values("eval_seed").unique()
    cube = cube.reindex(columns=pd.MultiIndex.from_product([tasks, evals], names=["task", "eval_seed"]))
    if cube.isna().any().any():
        missing = sorted({t for t, _ in cube.columns[cube.isna().any()]})
        raise ValueError(f"tasks {missing} lack some (seed, eval_seed) runs; rerun their evaluate rules")
    return cube.to_numpy().reshape(len(cube), len(tasks), len(evals))


def runs_by_tasks(array: np.ndarray) -> np.ndarray:
    """(seeds, tasks, evals) -> the (runs x tasks) matrix rliable reads, runs = (seed, eval seed) pairs."""
    s, t, e = array.shape[-3:]
    return np.swapaxes(array, -1, -2).reshape(*array.shape[:-3], s * e, t)


def _levels(rng: np.random.Generator, shape: tuple, tasks: np.ndarray) -> np.ndarray:
    """BOOTSTRAP resamples of one model's (seeds, tasks, evals) array, given the task draw (B, T)."""
    s, t, e = shape
    seeds = rng.integers(s, size=(BOOTSTRAP, s))
    evals = rng.integers(e, size=(BOOTSTRAP, s, t, e))
    return seeds[:, :, None, None], tasks[:, None, :, None], evals


def resample(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B, seeds, tasks, evals): the hierarchical bootstrap's resamples of one array."""
    tasks = rng.integers(array.shape[1], size=(BOOTSTRAP, array.shape[1]))
    return array[_levels(rng, array.shape, tasks)]


def resample_pair(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Resamples of two models' arrays over the same tasks: one task draw, seeds and runs drawn apart."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"two models compared need the same tasks: {x.shape[1]} vs {y.shape[1]}")
    tasks = rng.integers(x.shape[1], size=(BOOTSTRAP, x.shape[1]))
    return x[_levels(rng, x.shape, tasks)], y[_levels(rng, y.shape, tasks)]


AGGREGATES = {
    "mean": metrics.aggregate_mean,
    "iqm": metrics.aggregate_iqm,
    "optimality_gap": metrics.aggregate_optimality_gap,  # how far below 1 (the source) on average, clipped at 1
}


def _percentiles(values) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def interval(array: np.ndarray, aggregate: str, seed: int) -> tuple[float, float, float]:
    """(point estimate, CI low, CI high) of an aggregate of a (seeds x tasks x evals) array."""
    func = AGGREGATES[aggregate]
    draws = resample(array, np.random.default_rng(seed))
    return (float(func(runs_by_tasks(array))), *_percentiles([func(m) for m in runs_by_tasks(draws)]))


def improvement(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's `metrics.probability_of_improvement` (the Mann-Whitney U statistic over all pairs of runs,
    ties half, divided by the pairs, averaged over tasks) in one vectorised expression: it runs inside
    every bootstrap resample, where scipy's per-task call costs seconds. x, y: (runs x tasks)."""
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float((greater + 0.5 * ties).mean())


def _two_sample(x: np.ndarray, y: np.ndarray, stat, seed: int) -> tuple[float, float, float]:
    dx, dy = resample_pair(x, y, np.random.default_rng(seed))
    mx, my = runs_by_tasks(dx), runs_by_tasks(dy)
    point = stat(runs_by_tasks(x), runs_by_tasks(y))
    return (float(point), *_percentiles([stat(a, b) for a, b in zip(mx, my)]))


def probability_of_improvement(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float, float]:
    """P(X > Y): for each task, the probability that a run of X scores above a run of Y (Mann-Whitney U,
    ties counting half), averaged over tasks; with its hierarchical-bootstrap CI. x and y: (seeds x tasks
    x evals), the same tasks in the same columns."""
    return _two_sample(x, y, improvement, seed)


def difference(x: np.ndarray, y: np.ndarray, aggregate: str, seed: int) -> tuple[float, float, float]:
    """An aggregate (AGGREGATES) of X minus the same of Y over the same tasks, with its hierarchical-bootstrap CI."""
    func = AGGREGATES[aggregate]
    return _two_sample(x, y, lambda a, b: func(a) - func(b), seed)
