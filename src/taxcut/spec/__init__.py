"""The typed specs (pydantic, YAML round-trip): what to merge, how to evaluate, what to sweep."""

from taxcut.spec.evaluation import EvaluationSpec, RewardSpec, TaskSpec
from taxcut.spec.merge import (
    MergeSpec, NameRule, describe_validation_error, parse_size, read_spec_file, spec_from_dict,
)
from taxcut.spec.sweep import CandidateGrid, SweepSpec

__all__ = [
    "CandidateGrid", "EvaluationSpec", "MergeSpec", "NameRule", "RewardSpec", "SweepSpec", "TaskSpec",
    "describe_validation_error", "parse_size", "read_spec_file", "spec_from_dict",
]
