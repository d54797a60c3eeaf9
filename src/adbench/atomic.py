"""Files appear whole or not at all: written under a temporary name, renamed into place when complete."""

import contextlib
import csv
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield `path` + ".tmp" to write to; it replaces `path` if the block completes and is removed if not
    (an interrupted job leaves no half-written output for Snakemake or a resumed run to mistake)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_csv(path, rows, columns: list) -> None:
    """A CSV of dict rows with the given columns, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
