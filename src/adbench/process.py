"""Process set-up for the stages that run models (train, evaluate, the RL^2 baseline) and for the
benchmark that times them: torch's thread count and glibc's allocator.

glibc serves an allocation of 32 MB or more with a fresh mmap (and, below that, returns the heap's
free top to the system once it exceeds twice the last such size), so a long-context training step,
which makes and frees tensors of 8-64 MB many times over, pays for page faults on every one of them:
a 16k-token Mamba step spent ~1 s of its ~12 s in them (benchmarks/backbones.py, one thread). Here
allocations under 64 MB come from the heap and up to 256 MB of freed heap is kept for reuse, which
raised that step's peak memory by under 0.1 GiB. MALLOC_* variables in the environment take
precedence: where any is set, the allocator is left as they say.
"""

import ctypes
import os

import torch

MMAP_THRESHOLD = 64 << 20
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
