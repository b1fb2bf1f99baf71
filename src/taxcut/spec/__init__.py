"""The typed specs (pydantic, YAML round-trip): what to merge, how to evaluate, what to sweep, how to fit HMA."""

from taxcut.spec.candidates import Candidate, CandidateGrid, CandidateKind, HmaGrid
from taxcut.spec.evaluation import EvaluationSpec, RewardSpec, TaskSpec
from taxcut.spec.fit import FitOptions, FitRecord, FitSettings
from taxcut.spec.merge import (
    RATIO_FIELDS,
    MergeSpec,
    NameRule,
    RatioFields,
    describe_validation_error,
    parse_size,
    read_spec_file,
    spec_from_dict,
)
from taxcut.spec.sweep import SweepSpec

__all__ = [
    "RATIO_FIELDS",
    "Candidate",
    "CandidateGrid",
    "CandidateKind",
    "EvaluationSpec",
    "FitOptions",
    "FitRecord",
    "FitSettings",
    "HmaGrid",
    "MergeSpec",
    "NameRule",
    "RatioFields",
    "RewardSpec",
    "SweepSpec",
    "TaskSpec",
    "describe_validation_error",
    "parse_size",
    "read_spec_file",
    "spec_from_dict",
]
