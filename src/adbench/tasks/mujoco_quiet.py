"""Route MuJoCo's C-level warnings to Python: no MUJOCO_LOG.TXT in the working directory, no noise.

MuJoCo 4.0 warns that the 'settotalmass' compiler attribute (used by gymnasium's half_cheetah.xml)
is deprecated; that one is dropped, any other warning becomes a Python RuntimeWarning.
"""

import warnings

import mujoco

_IGNORED = ("'settotalmass' is deprecated",)


def _on_warning(message: str) -> None:
    if not any(s in message for s in _IGNORED):
        warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)


def install() -> None:
    mujoco.set_mju_user_warning(_on_warning)
