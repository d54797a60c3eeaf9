"""Online meta-RL baselines, trained on the same tasks as AD and evaluated by the same code."""

from .rl2 import ARCH as RL2
from .rl2 import RL2Config, RL2Policy, meta_train, policy_from_checkpoint

BASELINES = (RL2,)

__all__ = ["BASELINES", "RL2", "RL2Config", "RL2Policy", "meta_train", "policy_from_checkpoint"]
