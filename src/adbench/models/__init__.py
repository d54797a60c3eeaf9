"""Sequence backbones (Mamba S6, causal transformer) behind one interface, and the AD policy."""

import torch

from . import checkpoint
from .checkpoint import ModelError
from .mamba import MambaBackbone, mamba_layer_params
from .policy import ADPolicy
from .scan import selective_scan, selective_scan_ref  # noqa: F401  (public: the scan and its reference)
from .transformer import TransformerBackbone, transformer_layer_params

ARCHITECTURES = ("mamba", "transformer")


def matched_mlp_hidden(d_model: int, d_state: int, d_conv: int, expand: int) -> int:
    """Transformer MLP width that gives a layer the same parameter count as a Mamba layer."""
    attn = transformer_layer_params(d_model, 0)
    return max(1, round((mamba_layer_params(d_model, d_state, d_conv, expand) - attn) / (2 * d_model)))


def build(
    arch: str,
    obs_dim: int,
    act_dim: int,
    d_model: int = 64,
    n_layers: int = 2,
    d_state: int = 16,
    d_conv: int = 4,
    expand: int = 2,
    n_heads: int = 4,
    head: str = "gaussian",
    mixture_components: int = 4,
    window: int = 1024,
    checkpoint_layers: bool = False,
) -> ADPolicy:
    """An AD policy of the given architecture; `window` (tokens) is the transformer's attention span;
    `checkpoint_layers` recomputes each layer in backward (memory for long contexts)."""
    if arch == "mamba":
        backbone = MambaBackbone(
            d_model, n_layers, d_state=d_state, d_conv=d_conv, expand=expand, checkpoint_layers=checkpoint_layers
        )
    elif arch == "transformer":
        backbone = TransformerBackbone(
            d_model,
            n_layers,
            n_heads,
            matched_mlp_hidden(d_model, d_state, d_conv, expand),
            window,
            checkpoint_layers=checkpoint_layers,
        )
    else:
        raise ModelError(f"unknown architecture {arch!r}; known architectures: {list(ARCHITECTURES)}")
    return ADPolicy(obs_dim, act_dim, backbone, d_model, head, mixture_components)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_mib(state) -> float:
    """MiB held by a recurrent inference state (Mamba's conv and SSM states, a transformer's KV cache, a
    GRU's hidden state): every tensor in it, however nested in tuples, lists and dicts."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size() / 2**20
    if isinstance(state, dict):
        return state_mib(list(state.values()))
    if isinstance(state, (list, tuple)):
        return sum(state_mib(s) for s in state)
    return 0.0  # a position counter and the like


def save_checkpoint(path, model: ADPolicy, arch: str, model_config: dict, extra: dict | None = None) -> None:
    checkpoint.save(
        path,
        {
            "arch": arch,
            "obs_dim": model.obs_dim,
            "act_dim": model.act_dim,
            "model_config": model_config,
            "state_dict": model.state_dict(),
            **(extra or {}),
        },
    )


def read_checkpoint(path, expect_arch: str | None = None) -> dict:
    """A checkpoint's contents (weights_only: no code is unpickled), checked against its digest and to be one
    of ours."""
    ckpt = checkpoint.load(path)
    if not isinstance(ckpt, dict) or "arch" not in ckpt or "state_dict" not in ckpt:
        raise ModelError(f"{path}: not an adbench checkpoint (no 'arch'/'state_dict')")
    if expect_arch is not None and ckpt["arch"] != expect_arch:
        raise ModelError(f"{path}: checkpoint is a {ckpt['arch']!r} model, expected {expect_arch!r}")
    return ckpt


def from_checkpoint(ckpt: dict) -> ADPolicy:
    """The AD policy a checkpoint's contents describe, with its weights."""
    model = build(ckpt["arch"], ckpt["obs_dim"], ckpt["act_dim"], **ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model


def load_checkpoint(path, expect_arch: str | None = None) -> tuple[ADPolicy, dict]:
    """Rebuild an AD policy from a checkpoint file."""
    ckpt = read_checkpoint(path, expect_arch)
    return from_checkpoint(ckpt), ckpt
