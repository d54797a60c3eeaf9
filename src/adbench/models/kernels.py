"""Which implementation of Mamba's hot operations runs: the one place where that is decided.

- ``mamba_ssm``: CUDA tensors, where the `cuda` extra is installed: mamba_ssm's selective-scan kernel
  (the conv and the norm in PyTorch);
- ``native``: CPU float32 / float64 tensors, where the C kernels build (`scan_native`, with the
  system's C compiler on first use): the scan, the causal conv + SiLU and RMSNorm;
- ``torch``: everywhere else: the chunked PyTorch scan (`scan.py`), torch's conv1d and norm ops.

The environment variable ADBENCH_SCAN=native|torch forces one (``auto``, the default, picks as above).
The first choice for each device and dtype is logged.
"""

import logging
import os

import torch
import torch.nn.functional as F

from . import scan_native

CHOICES = ("auto", "native", "torch")
IMPLEMENTATIONS = ("mamba_ssm", "native", "torch")
log = logging.getLogger(__name__)
_said: set = set()


def forced() -> str:
    """ADBENCH_SCAN: 'auto' (the default) or the implementation it forces."""
    choice = os.environ.get("ADBENCH_SCAN", "auto")
    if choice not in CHOICES:
        raise ValueError(f"ADBENCH_SCAN={choice!r} is not one of {', '.join(CHOICES)}; unset it for 'auto'")
    return choice


def mamba_ssm_scan():
    """mamba_ssm's CUDA `selective_scan_fn`, or None where the package is not installed."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def choose(x: torch.Tensor, d_state: int = 0) -> str:
    """The implementation for tensors like x (and a state of d_state per channel): one of IMPLEMENTATIONS."""
    choice = forced()
    if x.device.type == "cuda":
        name = "mamba_ssm" if choice != "torch" and mamba_ssm_scan() is not None else "torch"
    elif choice != "torch" and d_state <= scan_native.MAX_STATE and scan_native.runs_on(x):
        name = "native"
    else:
        name = "torch"
    key = (x.device.type, x.dtype, name)
    if key not in _said:
        _said.add(key)
        log.info("Mamba kernels for %s %s: %s", x.device.type, str(x.dtype).removeprefix("torch."), name)
    return name


def conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, impl: str) -> torch.Tensor:
    """Mamba's silu(causal depthwise conv1d(x)) on channel-last x (b, l, d) -> (b, l, d)."""
    if impl == "native":
        return scan_native.NativeConvSilu.apply(x, weight, bias)
    conv = F.conv1d(x.transpose(1, 2), weight, bias, padding=weight.shape[-1] - 1, groups=x.shape[2])
    return F.silu(conv[..., : x.shape[1]]).transpose(1, 2)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, impl: str) -> torch.Tensor:
    """x * (mean(x^2 over the last dimension) + eps)^-1/2 * weight."""
    if impl == "native" and weight.dtype == x.dtype:
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return scan_native.NativeRMSNorm.apply(x, weight, eps)
        return scan_native.rms_norm_forward(x.contiguous(), weight, eps)[0]  # inference: no autograd Function
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
