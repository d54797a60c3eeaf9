"""A run's scores, read from the tidy evaluation tables: its first and final returns (`measures`), the
floors every score is measured from, and the normalised final return (0 the strongest floor, 1 the
source's final episodes), task by task. The summary, the comparisons and the claims all score from here."""

import numpy as np
import pandas as pd

from .measures import edge, switch_episode

# One evaluation run: within a model (RUN), and across models and controls (UNIT)
RUN = ["seed", "eval_seed", "task"]
UNIT = ["family", "arch", "context_episodes", "control", *RUN]
# The trivial policies every score is measured from (the reference rule's rows): a uniform random
# policy, one that outputs zeros, and one that acts well on the family's average task but is not told
# the task (see `floors`). Scores run from the strongest of them, per family.
FLOORS = ("random", "zero", "task_blind")


def first_and_final(df: pd.DataFrame, start: int = 0) -> pd.DataFrame:
    """Per evaluation run (UNIT): mean return of the first and the last 10% (at least one) of its episodes
    from episode `start` on."""
    df = df[df["episode"] >= start]
    n = int(df["episode"].max()) + 1 - start
    k = edge(n)
    first = df[df["episode"] < start + k].groupby(UNIT)["return"].mean().rename("first")
    last = df[df["episode"] >= start + n - k].groupby(UNIT)["return"].mean().rename("final")
    return pd.concat([first, last], axis=1).reset_index()


def run_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per evaluation run (UNIT): `first` and `final` returns (the first and last 10% of its episodes);
    under the task_switch control, of the episodes after the switch, whose gain is the recovery."""
    switched = df["control"] == "task_switch"
    parts = [first_and_final(df[~switched])]
    if switched.any():
        parts.append(first_and_final(df[switched], switch_episode(int(df["episode"].max()) + 1)))
    return pd.concat(parts, ignore_index=True)


def final_episodes(df: pd.DataFrame, by) -> pd.DataFrame:
    """The rows in the last 10% of episodes (at least one) of each group `by`: what "final" means here."""
    n = df.groupby(by)["episode"].transform("max") + 1
    return df[df["episode"] >= n - n.map(edge)]


def held_out(refs: pd.DataFrame) -> pd.DataFrame:
    """Rows on the evaluated tasks only (those anything but the source ran on: the test tasks, or the
    validation tasks of a tuning run); the source's other curves are for the learning-curve figure."""
    evaluated = refs.loc[refs["arch"] != "source", "task"].unique()
    return refs[refs["task"].isin(evaluated)]


MIN_GAP_FRACTION = 0.1


def floor_levels(refs: pd.DataFrame) -> pd.DataFrame:
    """Per family and evaluated task: each floor's mean return (a column per floor the references have)."""
    refs = held_out(refs)
    floors = refs[refs["arch"].isin(FLOORS)]
    return floors.pivot_table(index=["family", "task"], columns="arch", values="return", aggfunc="mean").reset_index()


def best_floor(levels: pd.DataFrame) -> pd.Series:
    """Per family: the name of the floor with the highest mean return over the evaluated tasks."""
    present = [f for f in FLOORS if f in levels]
    return levels.groupby("family")[present].mean().idxmax(axis=1)


def task_levels(refs: pd.DataFrame) -> pd.DataFrame:
    """Per evaluated task: the best floor's mean return (`floor`, named in `floor_name`), the source's final
    (last 10% of its history episodes), whether its family has a scale (`scaled`) and the gap the
    normalised score divides by. A task whose source-floor gap is below MIN_GAP_FRACTION of the family's
    median gap (the source barely beat the floor there, or did worse) is divided by that instead, so that
    it neither explodes nor flips the score's sign. A family whose source does not beat its best floor on
    average over the tasks has no scale: a score from the floor to a source below it would run backwards,
    so its gap is NaN and so are its normalised scores."""
    levels = floor_levels(refs)
    names = best_floor(levels)
    refs = held_out(refs)
    src = refs[refs["arch"] == "source"]
    src_final = final_episodes(src, "family").groupby(["family", "task"])["return"].mean().rename("source_final")
    levels = levels.merge(src_final.reset_index(), on=["family", "task"], how="left")
    levels["floor_name"] = levels["family"].map(names)
    levels["floor"] = [levels.at[i, name] for i, name in levels["floor_name"].items()]
    gap = levels["source_final"] - levels["floor"]
    by_family = gap.groupby(levels["family"])
    least = MIN_GAP_FRACTION * by_family.transform(lambda g: np.median(np.abs(g)))
    scaled = by_family.transform("mean") > 0
    return levels.assign(scaled=scaled, gap=np.maximum(gap, least).where(scaled))


def normalized_units(models: pd.DataFrame, refs: pd.DataFrame) -> pd.DataFrame:
    """run_scores with each unit's normalised final return: (final - best floor) / gap, with its task's levels
    (NaN in a family without a scale, `task_levels`)."""
    levels = task_levels(refs)[["family", "task", "floor", "source_final", "gap"]]
    units = run_scores(models).merge(levels, on=["family", "task"], how="left", validate="many_to_one")
    missing = units[["floor", "source_final"]].isna().any(axis=1)
    if missing.any():
        tasks = sorted(units.loc[missing, "task"].unique())
        raise ValueError(f"no floor or source reference for tasks {tasks}; rerun the reference rule")
    normalized = (units["final"] - units["floor"]) / units["gap"]
    return units.assign(normalized=normalized).drop(columns=["floor", "source_final", "gap"])
