"""Online meta-RL baselines, trained on the same tasks as AD and evaluated by the same code."""

from .online import OnlineTrainer, meta_train, run
from .rl2 import ARCH as RL2
from .rl2 import RL2Config, RL2Policy, RL2Trainer
from .varibad import ARCH as VARIBAD
from .varibad import VariBADConfig, VariBADPolicy, VariBADTrainer

# each baseline's trainer, by its config section and `arch` name
BASELINES = {RL2: RL2Trainer, VARIBAD: VariBADTrainer}


def policy_from_checkpoint(ckpt: dict):
    """A trained baseline's policy from its checkpoint (`online.save_policy`)."""
    policy = BASELINES[ckpt["arch"]].Policy(ckpt["obs_dim"], ckpt["act_dim"], **ckpt["model_config"])
    policy.load_state_dict(ckpt["state_dict"])
    return policy


__all__ = [
    "BASELINES",
    "RL2",
    "VARIBAD",
    "OnlineTrainer",
    "RL2Config",
    "RL2Policy",
    "RL2Trainer",
    "VariBADConfig",
    "VariBADPolicy",
    "VariBADTrainer",
    "meta_train",
    "policy_from_checkpoint",
    "run",
]
