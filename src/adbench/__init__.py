"""adbench: a reproducible benchmark for in-context RL by Algorithm Distillation."""

__version__ = "0.1.0"
