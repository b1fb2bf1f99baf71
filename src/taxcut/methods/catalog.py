"""The built-in merge methods (importing this module registers them)."""

from taxcut.methods import adamerging, averaging, spherical, task_vectors  # noqa: F401
