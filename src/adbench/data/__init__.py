"""Learning histories on disk: the HDF5 schema, an atomic writer, a validating reader, the AD window sampler."""

from .reader import open_histories, task_table, validate_file
from .sampler import WindowSampler, input_statistics, make_tokens, window_span
from .schema import SCHEMA_VERSION, DatasetError
from .writer import atomic_h5, write_root_attrs, write_task

__all__ = [
    "SCHEMA_VERSION",
    "DatasetError",
    "WindowSampler",
    "atomic_h5",
    "input_statistics",
    "make_tokens",
    "open_histories",
    "task_table",
    "validate_file",
    "window_span",
    "write_root_attrs",
    "write_task",
]
