"""The learning-history HDF5 contract (ARCHITECTURE.md): names, dtypes and ranks of every dataset."""

SCHEMA_VERSION = 2  # 2: final_observations

# name -> (dtype, rank); shapes are (H, T, dim), (H, T), (H, E) or (H, E, dim)
DATASETS = {
    "observations": ("float32", 3),
    "actions": ("float32", 3),
    "rewards": ("float32", 2),
    "terminated": ("bool", 2),
    "truncated": ("bool", 2),
    "episode_returns": ("float32", 2),
    "final_observations": ("float32", 3),  # the observation each episode ended in (after its last step)
}
# Present where the source has an expert (noise_distill): its clean action for the true task at every
# step, the target of `train.target: expert` (the recorded action stays the model's previous-action input);
# with source.noise_distill.counterfactuals C > 0, each step's reward under C other tasks, (H, T, C), and the
# expert's clean action for them, (H, T, C, act_dim): the windows of `train.target: counterfactual`.
OPTIONAL_DATASETS = {
    "expert_actions": ("float32", 3),
    "counterfactual_rewards": ("float32", 3),
    "counterfactual_actions": ("float32", 4),
}
SPLITS = ("train", "test", "val")
ROOT_ATTRS = (
    "family",
    "schema_version",
    "source_algorithm",
    "source_settings",
    "config_digest",
    "package_versions",
    "horizon",
    "episodes",
)


class DatasetError(ValueError):
    """A history file that does not meet the contract."""
