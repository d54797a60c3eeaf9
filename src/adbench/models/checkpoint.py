"""Checkpoint files that cannot load silently corrupt: their contents carry a digest that loading checks."""

import hashlib
import json

import torch


class ModelError(ValueError):
    """A checkpoint or model config that cannot be used; the message names the file or key."""


def _feed(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(str(key).encode())
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        try:  # plain data as JSON, as checkpoints have always been digested
            h.update(json.dumps(value, sort_keys=True).encode())
        except TypeError:  # a list holding tensors (an optimizer's or a generator's state): item by item
            h.update(f"[{len(value)}".encode())
            for item in value:
                _feed(h, item)
    else:
        h.update(json.dumps(value, sort_keys=True, default=repr).encode())


def digest(contents: dict) -> str:
    """SHA-256 of every entry but the digest itself: tensors by dtype, shape and bytes, the rest as JSON."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in contents.items() if k != "digest"})
    return h.hexdigest()


def save(path, contents: dict) -> None:
    """torch.save of `contents` with its digest."""
    torch.save({**contents, "digest": digest(contents)}, path)


def load(path) -> dict:
    """The contents of a checkpoint written by `save`, or ModelError in one line if it is unreadable or
    its contents do not match its digest."""
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and zipfile raise many kinds on damaged files
        raise ModelError(f"{path}: not a readable adbench checkpoint ({e.__class__.__name__}); retrain it") from None
    if not isinstance(contents, dict) or "digest" not in contents:
        raise ModelError(f"{path}: not an adbench checkpoint (no integrity digest); retrain it")
    try:
        ok = digest(contents) == contents["digest"]
    except Exception:  # damaged contents that unpickled into something a digest cannot read
        ok = False
    if not ok:
        raise ModelError(
            f"{path}: contents do not match the checkpoint's digest (the file is corrupt, or written by an "
            "older adbench); retrain it (delete it and rerun its rule)"
        )
    return contents
