"""The paper's three claims, judged on the normalised final return (from the strongest floor, `scores`):

1. `mamba_beats_transformer`: per family and context both were trained at, Mamba minus the transformer;
2. `longer_context_helps`: per family and architecture, the longest trained context minus the shortest;
3. `competitive_with_online`: per family, each AD architecture at its longest context minus the online
   meta-RL baseline (RL^2), judged as non-inferiority within `MARGIN`.

Each effect is a difference of the interquartile means of the normalised final returns (robust to the
few tasks whose small floor-to-source gap makes their scores large) with the hierarchical bootstrap's
95% CI (`statistics.difference`: training seeds and evaluation runs of each model resampled apart, the
held-out tasks drawn once for both). The verdict rule (docs/methods.md):
- fewer than MIN_SEEDS training seeds on either side: `inconclusive` (the CI cannot hold seed variance);
- claims 1 and 2: `supported` if the CI lies above 0, `contradicted` if below 0, else `inconclusive`;
- claim 3: `supported` if the CI lies above -MARGIN, `contradicted` if below -MARGIN, else `inconclusive`;
- a family without a scale (its source does not beat its best floor, `scores.task_levels`): `undefined`,
  with no effect (the score from the floor to such a source would run backwards).
"""

import numpy as np
import pandas as pd

from . import statistics
from .scores import normalized_units
from .tables import NO_CONTEXT, label

MIN_SEEDS = 3
MARGIN = 0.1  # of the floor-to-source range: "competitive" means not worse by more than this
CLAIMS = ("mamba_beats_transformer", "longer_context_helps", "competitive_with_online")
VERDICTS = ("supported", "inconclusive", "contradicted", "undefined")
COLUMNS = [
    "claim",
    "family",
    "comparison",
    "effect",
    "ci_low",
    "ci_high",
    "threshold",
    "training_seeds",
    "verdict",
]


def verdict(low: float, high: float, threshold: float, seeds: int) -> str:
    """The rule above, for an effect whose CI is [low, high] (NaN: no scale), judged against `threshold`."""
    if np.isnan(low) or np.isnan(high):
        return "undefined"
    if seeds < MIN_SEEDS:
        return "inconclusive"
    return "supported" if low > threshold else "contradicted" if high < threshold else "inconclusive"


def _pairs(keys) -> list:
    """(claim, family, (x key), (y key), threshold) of every comparison the evaluated models allow, given
    the (family, arch, context) keys of the models."""
    out = []
    families = sorted({f for f, _, _ in keys})
    for family in families:
        models = {(a, c) for f, a, c in keys if f == family}
        contexts = {a: sorted(c for a2, c in models if a2 == a and c != NO_CONTEXT) for a, _ in models}
        for c in sorted(set(contexts.get("mamba", [])) & set(contexts.get("transformer", []))):
            out.append(("mamba_beats_transformer", family, ("mamba", c), ("transformer", c), 0.0))
        ad = sorted(a for a, cs in contexts.items() if cs)
        for arch in ad:
            if len(contexts[arch]) > 1:
                longest, shortest = contexts[arch][-1], contexts[arch][0]
                out.append(("longer_context_helps", family, (arch, longest), (arch, shortest), 0.0))
        for baseline in sorted(a for a, c in models if c == NO_CONTEXT):
            for arch in ad:
                out.append(
                    ("competitive_with_online", family, (arch, contexts[arch][-1]), (baseline, NO_CONTEXT), -MARGIN)
                )
    return out


def claims(models: pd.DataFrame, refs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per claim x family x comparison: effect, CI, the threshold it is judged against, the fewer
    training seeds of the two models, and the verdict."""
    units = normalized_units(models, refs)
    units = units[units["control"] == "none"]
    groups = dict(list(units.groupby(["family", "arch", "context_episodes"])))
    rows = []
    for claim, family, x, y, threshold in _pairs(groups):
        gx, gy = groups[(family, *x)], groups[(family, *y)]
        seeds = min(gx["seed"].nunique(), gy["seed"].nunique())
        if gx["normalized"].isna().all():  # a family without a scale
            effect = low = high = np.nan
        else:
            ax, ay = (statistics.unit_array(g, "normalized") for g in (gx, gy))
            row_seed = statistics.row_seed(seed, claim, family, *x, *y)
            effect, low, high = statistics.difference(ax, ay, "iqm", row_seed)
        rows.append(
            {
                "claim": claim,
                "family": family,
                "comparison": f"{label(*x)} - {label(*y)}",
                "effect": effect,
                "ci_low": low,
                "ci_high": high,
                "threshold": threshold,
                "training_seeds": seeds,
                "verdict": verdict(low, high, threshold, seeds),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)
