"""Result tables -> the benchmark's figures and summary tables (reads only the tidy CSVs)."""

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

SECTIONS = ["dataset"]
SUMMARY_COLUMNS = ["family", "arch", "context_episodes", "runs", "first_return", "final_return", "gain",
                   "gain_ci_low", "gain_ci_high", "normalized_final_iqm", "normalized_ci_low", "normalized_ci_high"]
BOOTSTRAP = 2000


def edge(episodes: int) -> int:
    """How many episodes make the first / last 10% of a run (at least one)."""
    return max(1, math.ceil(0.1 * episodes))


def bootstrap_ci(values: np.ndarray, stat, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile bootstrap CI of stat over the units in `values`."""
    idx = rng.integers(len(values), size=(BOOTSTRAP, len(values)))
    stats = np.array([stat(values[i]) for i in idx])
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def iqm(x: np.ndarray) -> float:
    """Interquartile mean (Agarwal et al. 2021, rliable): the mean of the middle 50%."""
    x = np.sort(x)
    lo, hi = int(np.floor(0.25 * len(x))), int(np.ceil(0.75 * len(x)))
    return float(x[lo:max(hi, lo + 1)].mean())


def load(paths: list) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    if not np.all(np.isfinite(df["return"])):
        raise ValueError("evaluation tables contain non-finite returns; rerun the evaluate rules")
    return df


def run_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per evaluation run (seed, eval_seed, task): mean return of the first and last 10% of episodes."""
    n = int(df["episode"].max()) + 1
    k = edge(n)
    keys = ["family", "arch", "context_episodes", "seed", "eval_seed", "task"]
    first = df[df["episode"] < k].groupby(keys)["return"].mean().rename("first")
    last = df[df["episode"] >= n - k].groupby(keys)["return"].mean().rename("final")
    return pd.concat([first, last], axis=1).reset_index()


def summarize(models: pd.DataFrame, refs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scores = run_scores(models)
    rows = []
    for family, fam in scores.groupby("family"):
        ref = refs[refs["family"] == family]
        random_level = ref[ref["arch"] == "random"]["return"].mean()
        src = ref[ref["arch"] == "source"]
        src_final = src[src["episode"] >= src["episode"].max() + 1 - edge(int(src["episode"].max()) + 1)]["return"].mean()
        for (arch, ctx), g in fam.groupby(["arch", "context_episodes"]):
            gain = (g["final"] - g["first"]).to_numpy()
            norm = ((g["final"] - random_level) / (src_final - random_level)).to_numpy()
            rows.append({"family": family, "arch": arch, "context_episodes": ctx, "runs": len(g),
                         "first_return": g["first"].mean(), "final_return": g["final"].mean(), "gain": gain.mean(),
                         **dict(zip(["gain_ci_low", "gain_ci_high"], bootstrap_ci(gain, np.mean, rng))),
                         "normalized_final_iqm": iqm(norm),
                         **dict(zip(["normalized_ci_low", "normalized_ci_high"], bootstrap_ci(norm, iqm, rng)))})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def plot_in_context(models: pd.DataFrame, refs: pd.DataFrame, stride: int, path: Path) -> None:
    """Return vs in-context episode per family: each arch x context, with random and source for reference."""
    n = int(models["episode"].max()) + 1
    models = models.assign(label=models["arch"] + " ctx " + models["context_episodes"].astype(str))
    src = refs[refs["arch"] == "source"].assign(label="source (history episode / stride)")
    src = src.assign(episode=src["episode"] / stride)
    src = src[src["episode"] <= n - 1]
    rnd = refs[refs["arch"] == "random"].assign(label="random")
    data = pd.concat([models, src, rnd], ignore_index=True)
    families = sorted(data["family"].unique())
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        sns.lineplot(data=data[data["family"] == family], x="episode", y="return", hue="label",
                     errorbar=("ci", 95), n_boot=500, seed=0, ax=ax)
        ax.set(title=family, xlabel="in-context episode", ylabel="episode return")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _write_table(df: pd.DataFrame, csv_path: Path, md_path: Path) -> None:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, csv_path)
    header = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    body = "".join("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |\n"
                   for row in df.itertuples(index=False))
    md_path.write_text(header + body)


def make_all(cfg: dict, model_csvs: list, reference_csvs: list, figure_path, summary_csv, summary_md) -> pd.DataFrame:
    models, refs = load(model_csvs), load(reference_csvs)
    plot_in_context(models, refs, cfg["dataset"]["episode_stride"], Path(figure_path))
    summary = summarize(models, refs)
    _write_table(summary, Path(summary_csv), Path(summary_md))
    return summary
