import subprocess
import sys

import pytest

PROBE = """
import torch
from adbench import process
applied = process.tune_allocator()
process.setup(2)
print(applied, torch.get_num_threads())
"""


def _probe(env: dict) -> str:
    return subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
    ).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_setup_sets_threads_and_tunes_glibc_unless_the_environment_says_otherwise():
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    assert _probe(env) == ["True", "2"]
    assert _probe({**env, "MALLOC_ARENA_MAX": "2"}) == ["False", "2"]
