"""Pick the torch device a stage runs its model on, from the config (`cpu`, `cuda`, `auto`)."""

import torch


def pick_device(name: str, key: str = "train.device") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is 'cuda' but no CUDA device is visible; set {key} to 'cpu' or 'auto'")
    return torch.device("cuda" if name in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
