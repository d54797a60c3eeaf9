"""Damaged files are rejected in one line, never loaded as something nobody wrote (random bytes overwritten)."""

import shutil

import h5py
import numpy as np
import pytest
import torch

from adbench.data import DatasetError, validate_file
from adbench.models import ModelError, build, read_checkpoint, save_checkpoint

COPIES = 120


def _damaged_copies(original, tmp_path, n, seed):
    size = original.stat().st_size
    rng = np.random.default_rng(seed)
    for i in range(n):
        copy = tmp_path / f"copy-{i}{original.suffix}"
        shutil.copyfile(original, copy)
        offset = int(rng.integers(0, max(1, size - 16)))
        with open(copy, "r+b") as fh:
            fh.seek(offset)
            fh.write(rng.integers(0, 256, size=16, dtype=np.uint8).tobytes())
        yield copy


def _arrays(path) -> dict:
    with h5py.File(path, "r") as f:
        return {f"{tid}/{name}": d[...] for tid, g in f["tasks"].items() for name, d in g.items()}


def test_damaged_datasets_are_rejected_in_one_line_or_unchanged(dataset, tmp_path):
    reference = _arrays(dataset)
    rejected = 0
    for copy in _damaged_copies(dataset, tmp_path, COPIES, seed=0):
        try:
            validate_file(copy)
        except DatasetError as e:
            assert "\n" not in str(e) and str(copy) in str(e)
            rejected += 1
            continue
        got = _arrays(copy)  # accepted: what it holds must be what was written
        assert got.keys() == reference.keys()
        for key, value in reference.items():
            np.testing.assert_array_equal(got[key], value)
    assert rejected > COPIES // 2


def test_damaged_checkpoints_are_rejected_in_one_line_or_unchanged(tmp_path):
    torch.manual_seed(0)
    model = build("mamba", 3, 2, d_model=16, n_layers=1)
    original = tmp_path / "model.pt"
    save_checkpoint(original, model, "mamba", {"d_model": 16, "n_layers": 1}, {"meta": {"seed": 0}})
    reference = read_checkpoint(original)["state_dict"]
    for copy in _damaged_copies(original, tmp_path, COPIES, seed=1):
        try:
            ckpt = read_checkpoint(copy)
        except ModelError as e:
            assert "\n" not in str(e) and str(copy) in str(e)
            continue
        for key, value in reference.items():
            torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=0, atol=0)


def test_a_checkpoint_whose_weights_were_changed_fails_its_digest(tmp_path):
    model = build("transformer", 3, 2, d_model=16, n_layers=1)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, "transformer", {"d_model": 16, "n_layers": 1})
    contents = torch.load(path, weights_only=True)
    key = next(iter(contents["state_dict"]))
    contents["state_dict"][key] = contents["state_dict"][key] + 1e-6
    torch.save(contents, path)
    with pytest.raises(ModelError, match="do not match the checkpoint's digest"):
        read_checkpoint(path)


def test_history_datasets_carry_chunk_checksums(dataset):
    with h5py.File(dataset, "r") as f:
        g = next(iter(f["tasks"].values()))
        assert all(d.fletcher32 for d in g.values())


def test_checkpoints_written_before_lists_were_walked_still_load(tmp_path):
    """A checkpoint whose entries are tensors, dicts and plain lists digests as it always has (its lists
    as JSON), so files written by earlier versions load; a list holding tensors is digested item by item."""
    import hashlib
    import json

    from adbench.models import checkpoint

    contents = {"family": "AntDir", "dims": [27, 8, 2], "w": torch.ones(3)}
    h = hashlib.sha256()  # the digest as it was computed before lists were walked
    for key in sorted(contents):
        h.update(key.encode())
        value = contents[key]
        if isinstance(value, torch.Tensor):
            h.update(f"{value.dtype}{tuple(value.shape)}".encode() + value.numpy().tobytes())
        else:
            h.update(json.dumps(value, sort_keys=True).encode())
    torch.save({**contents, "digest": h.hexdigest()}, tmp_path / "old.pt")
    assert checkpoint.load(tmp_path / "old.pt")["dims"] == [27, 8, 2]
    a, b = {"x": [torch.zeros(2), 1]}, {"x": [torch.ones(2), 1]}
    assert checkpoint.digest(a) != checkpoint.digest(b)
