"""The built-in merge methods (importing this module registers them)."""

from taxcut.methods import averaging, spherical, task_vectors  # noqa: F401
