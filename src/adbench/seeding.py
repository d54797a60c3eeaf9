"""Derive independent, stable integer seeds from the config seed and names."""

import zlib

import numpy as np


def derive_seed(base: int, *keys) -> int:
    """A 63-bit seed from `base` and any keys (strings or ints), stable across runs and platforms.

    Python's hash() is salted per process, so names are turned into integers with crc32.
    """
    spawn_key = tuple(k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys)
    seq = np.random.SeedSequence(entropy=int(base), spawn_key=spawn_key)
    return int(seq.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], dtype=np.uint64))
