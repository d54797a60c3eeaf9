"""The progress file AD training and RL^2 resume from: used only for the same settings and when intact."""

import io

import torch

from adbench.resume import load_progress, save_progress


def test_progress_is_read_back_for_the_same_settings_only(tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 250, "metrics": [{"loss": 0.5}], "rng": [1, 2]}
    save_progress(path, "digest-a", state)
    back = load_progress(path, "digest-a")
    assert back["step"] == 250 and back["metrics"] == [{"loss": 0.5}] and back["rng"] == [1, 2]
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    log = io.StringIO()
    assert load_progress(path, "digest-b", log) is None
    assert "other settings; starting afresh" in log.getvalue()
    assert load_progress(tmp_path / "absent.pt", "digest-a") is None


def test_a_damaged_progress_file_starts_the_run_afresh(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_progress(path, "d", {"model": {"w": torch.ones(1000)}, "step": 5})
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\x00" * 16  # inside the tensor bytes
    path.write_bytes(bytes(data))
    log = io.StringIO()
    assert load_progress(path, "d", log) is None
    assert "starting afresh" in log.getvalue()
