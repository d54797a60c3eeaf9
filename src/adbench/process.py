"""Process set-up for the stages that run models (train, evaluate, the RL^2 baseline) and for the
benchmark that times them: torch's thread count and glibc's allocator.

glibc starts by serving every allocation over 128 KB with a fresh mmap, raising that threshold (up to
32 MB) only as such blocks are freed, and returns the heap's free top to the system once it exceeds
twice the threshold. A long-context training step makes and frees tensors of 8-32 MB many times over
and would pay a page fault on every fresh page; so the threshold is 32 MB from the start and up to
256 MB of freed heap is kept for reuse (docs/performance.md has the measurements behind both numbers).
MALLOC_* variables in the environment take precedence: where any is set, the allocator is left as they say.
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
