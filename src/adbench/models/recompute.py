"""Layer checkpointing for long contexts: keep only each layer's input, recompute the layer in backward.

The recompute runs over slices of the batch of at most RECOMPUTE_TOKENS tokens each, so the peak of a
layer's activations (and their gradients) is that of a slice, not of the whole batch: at long contexts a
Mamba layer's intermediate (batch, length, d_inner) tensors are what fills memory. Slices also keep
each tensor below glibc's mmap threshold (see `process`), so it is reused from the heap rather than
mapped and faulted in afresh. The transformer keeps whole-batch checkpointing (sliced, its attention
took more memory). Where the native kernels run, a Mamba block is checkpointed by `mamba_native`
instead, over the same slices. Measurements: docs/performance.md.
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
