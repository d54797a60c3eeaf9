"""Layer checkpointing for long contexts: keep only each layer's input, recompute the layer in backward.

The recompute runs over slices of the batch of at most RECOMPUTE_TOKENS tokens each, so the peak of a
layer's activations (and their gradients) is that of a slice, not of the whole batch: at 16k-token
contexts a Mamba layer's intermediate (batch, length, d_inner) tensors are what fills memory
(benchmarks/backbones.py, d_model 128, batch 8: 2.3 -> 1.4 GiB, and faster). Small slices are also
faster: glibc serves each allocation over 32 MB with a fresh mmap, page-faulted on first touch and
unmapped when freed, and a slice of 16k tokens keeps d_inner = 256 tensors at 16 MB, reused from the
heap instead (Mamba at 16k tokens: 19.6 s with 32k-token slices, 14.9 s with 16k). The transformer
keeps whole-batch checkpointing: sliced, its attention at 16k took twice the memory. Where the native
kernels run, a Mamba block is checkpointed by `mamba_native` instead, over the same slices.
"""

import math

import torch
from torch.utils.checkpoint import checkpoint

RECOMPUTE_TOKENS = 16384


def batch_slices(batch: int, length: int) -> list[slice]:
    """Slices of the batch of at most RECOMPUTE_TOKENS tokens each (at least one sequence each)."""
    parts = max(1, min(batch, math.ceil(batch * length / RECOMPUTE_TOKENS)))
    size = math.ceil(batch / parts)
    return [slice(start, min(start + size, batch)) for start in range(0, batch, size)]


def checkpointed(layer, x: torch.Tensor, *args) -> torch.Tensor:
    """layer(x, *args) with activations recomputed in backward, slice by slice along the batch."""
    slices = batch_slices(x.shape[0], x.shape[1])
    if len(slices) == 1:
        return checkpoint(layer, x, *args, use_reentrant=False)
    return torch.cat([checkpoint(layer, x[part], *args, use_reentrant=False) for part in slices])
