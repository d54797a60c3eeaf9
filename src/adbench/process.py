"""Process set-up for the stages that run models (train, evaluate, the RL^2 baseline) and for the
benchmark that times them: torch's thread count and glibc's allocator.

glibc starts by serving every allocation over 128 KB with a fresh mmap, raising that threshold (up to
32 MB) only as such blocks are freed, and returns the heap's free top to the system once it exceeds
twice the threshold; a long-context training step, which makes and frees tensors of 8-32 MB many
times over, pays for page faults on each fresh page (~9 us each on this project's 2-core VM). Here the
threshold is 32 MB from the start and up to 256 MB of freed heap is kept for reuse: a 16k-token Mamba
step (benchmarks/backbones.py, one thread) 12.2-12.9 -> 11.3-11.4 s, peak unchanged (0.9 GiB); the
transformer's 16k step unchanged (two threads: 95 / 92 s, peak 1.39 GiB both). A 64 MB threshold was
as fast for Mamba but raised the transformer's peak by 0.3-0.6 GiB. MALLOC_* variables in the
environment take precedence: where any is set, the allocator is left as they say.
"""

import ctypes
import os

import torch

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def setup(threads: int) -> None:
    """torch's intra-op threads (the native scan kernels use the same count) and the allocator."""
    torch.set_num_threads(threads)
    tune_allocator()


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds; whether it was done (not on other C libraries, nor
    where MALLOC_* environment variables are set)."""
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
