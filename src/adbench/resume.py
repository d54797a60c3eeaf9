"""Training that resumes: a run's progress saved every few steps, read back only when its settings match.

The progress file is written atomically with an integrity digest (`models.checkpoint`); it belongs to
one run's settings (a digest of them), so a run with other settings, or a damaged file, starts afresh
and says so in the log. AD training (`train.py`) and the RL^2 baseline use it alike.
"""

from pathlib import Path

from .atomic import atomic_path
from .models import checkpoint
from .progress import say


def save_progress(path: Path, settings_digest: str, state: dict) -> None:
    with atomic_path(path) as tmp:
        checkpoint.save(tmp, {"settings_digest": settings_digest, "state": state})


def load_progress(path: Path, settings_digest: str, progress=None) -> dict | None:
    """The saved state where `path` holds the progress of a run with these settings, else None."""
    if not path.exists():
        return None
    try:
        saved = checkpoint.load(path)
    except checkpoint.ModelError as e:
        say(f"{e}: starting afresh", progress)
        return None
    if saved.get("settings_digest") != settings_digest:
        say(f"{path}: progress of a run with other settings; starting afresh", progress)
        return None
    return saved["state"]
