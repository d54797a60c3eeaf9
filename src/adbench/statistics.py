"""Aggregate statistics over held-out tasks with 95% confidence intervals.

Scores are arranged as rliable expects them, a (runs x tasks) matrix: a run is one (training seed,
evaluation seed) pair, a task one held-out task. rliable (Agarwal et al. 2021) computes the aggregates
(mean, interquartile mean, optimality gap, probability of improvement) and their stratified-bootstrap
CIs. The CIs of the aggregates resample tasks as well as the runs within each task
(`task_bootstrap=True`): held-out tasks are a draw from the family, and a claim about the family
must carry that draw's uncertainty. The probability of improvement resamples each model's runs within
each task independently (rliable's only form for two samples). The paired reward-driven gain keeps a
direct percentile bootstrap over its units (`bootstrap_ci`).
"""

import contextlib
import logging
import zlib

import numpy as np
import pandas as pd

logging.getLogger("absl").setLevel(logging.WARNING)  # rliable logs one INFO line per estimate
from rliable import library as rly  # noqa: E402
from rliable import metrics  # noqa: E402

BOOTSTRAP = 2000
CONFIDENCE = 0.95
RUN = ["seed", "eval_seed"]


def row_seed(seed: int, *key) -> int:
    """A 32-bit seed for one table row, from the config's seed and the row's identity alone, so that a
    row's CIs do not move when other rows join the table."""
    words = [seed, zlib.crc32("/".join(str(k) for k in key).encode())]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


@contextlib.contextmanager
def _numpy_seeded(seed: int):
    """rliable's resampling draws from numpy's global generator: seed it for the call, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def score_matrix(units: pd.DataFrame, value: str) -> np.ndarray:
    """Units with columns seed, eval_seed, task and `value` -> a (runs x tasks) matrix, tasks in sorted order."""
    matrix = units.pivot_table(index=RUN, columns="task", values=value, aggfunc="mean").sort_index(axis=1)
    if matrix.isna().any().any():
        missing = matrix.columns[matrix.isna().any()].tolist()
        raise ValueError(f"tasks {missing} lack some (seed, eval_seed) runs; rerun their evaluate rules")
    return matrix.to_numpy()


AGGREGATES = {
    "mean": metrics.aggregate_mean,
    "iqm": metrics.aggregate_iqm,
    "optimality_gap": metrics.aggregate_optimality_gap,  # how far below 1 (the source) on average, clipped at 1
}


def interval(matrix: np.ndarray, aggregate: str, seed: int) -> tuple[float, float, float]:
    """(point estimate, CI low, CI high) of an aggregate over a (runs x tasks) matrix."""
    func = AGGREGATES[aggregate]
    with _numpy_seeded(seed):
        point, ci = rly.get_interval_estimates(
            {"x": matrix},
            lambda m: np.array([func(m)]),
            task_bootstrap=True,
            reps=BOOTSTRAP,
            confidence_interval_size=CONFIDENCE,
        )
    return float(point["x"][0]), float(ci["x"][0, 0]), float(ci["x"][1, 0])


def improvement(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's `metrics.probability_of_improvement` (the Mann-Whitney U statistic over all pairs of runs,
    ties half, divided by the pairs, averaged over tasks) in one vectorised expression: it runs inside
    every bootstrap resample, where scipy's per-task call costs seconds."""
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float((greater + 0.5 * ties).mean())


def probability_of_improvement(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float, float]:
    """P(X > Y): for each task, the probability that a run of X scores above a run of Y (Mann-Whitney U,
    ties counting half), averaged over tasks; with its stratified-bootstrap CI. x and y: (runs x tasks),
    the same tasks in the same columns."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"P(X > Y) needs the same tasks for both: {x.shape[1]} vs {y.shape[1]} columns")
    with _numpy_seeded(seed):
        point, ci = rly.get_interval_estimates(
            {"xy": (x, y)},
            improvement,
            reps=BOOTSTRAP,
            confidence_interval_size=CONFIDENCE,
        )
    return float(point["xy"]), float(np.ravel(ci["xy"])[0]), float(np.ravel(ci["xy"])[1])


def bootstrap_ci(values: np.ndarray, stat, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile bootstrap CI of stat over the units in `values` (resampled with replacement)."""
    idx = rng.integers(len(values), size=(BOOTSTRAP, len(values)))
    stats = np.array([stat(values[i]) for i in idx])
    tail = 100 * (1 - CONFIDENCE) / 2
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))
