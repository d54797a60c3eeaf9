"""Every figure and table the figures stage writes, in one place: the stage writes them under these
names and the workflow's figures rule declares them from here (each with its report caption,
workflow/report/<name>.rst for a figure and <name>_table.rst for a table, and category).

Light on purpose: Snakemake imports it into every process it starts."""

from pathlib import Path

# name -> report category; every figure as PNG and PDF, every table as CSV and markdown
FIGURES = {
    "in_context_return": "In-context RL",
    "context_scaling": "In-context RL",
    "task_inference": "In-context RL",
    "cost": "Cost",
    "aggregate_scores": "Statistics",
    "probability_of_improvement": "Statistics",
    "claims": "Claims",
    "baseline_convergence": "Claims",
    "source_learning_curves": "Learning histories",
}
TABLES = {
    "summary": "Tables",
    "comparison": "Tables",
    "context_scaling": "Tables",
    "task_inference": "Tables",
    "source_improvement": "Tables",
    "claims": "Claims",
    "baseline_convergence": "Claims",
    "provenance": "Tables",
}


def figure(root, name: str) -> Path:
    """The PNG of a figure (its PDF lies beside it)."""
    if name not in FIGURES:
        raise KeyError(f"{name!r} is not a figure of outputs.FIGURES")
    return Path(root) / "figures" / f"{name}.png"


def table(root, name: str) -> tuple[Path, Path]:
    """The CSV and the markdown of a table."""
    if name not in TABLES:
        raise KeyError(f"{name!r} is not a table of outputs.TABLES")
    return Path(root) / "tables" / f"{name}.csv", Path(root) / "tables" / f"{name}.md"
