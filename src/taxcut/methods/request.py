"""A merge request: what to merge, whatever spec it came from. The planner reads it; a method's ``prepare`` step may
return a new one (other ingredients, learned coefficients)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taxcut.methods.parameters import MethodParameters


@dataclass(frozen=True)
class ModelInput:
    """One input model: its folder (or adapter folder), its weight, and how messages name it."""

    role: str  # "sft", "aligned", "base", "model 2": names the input in messages ("the sft model folder ...")
    path: Path
    weight: float = 1.0

    @property
    def label(self) -> str:
        """``role`` as a noun phrase: "sft model", "model 2"."""
        return self.role if self.role.startswith("model") else f"{self.role} model"


@dataclass(frozen=True)
class MergeRequest:
    """A method, its inputs (the base first when the method takes one), its validated parameters, and where and
    how to write the result."""

    method: Any  # a taxcut.methods.registry.MergeMethod
    inputs: tuple[ModelInput, ...]
    parameters: MethodParameters
    out: Path | None = None
    dtype: str | None = None
    max_shard_bytes: int = 5 * 10**9
    side_files_from: int = 0  # the input whose config, tokenizer and chat template the output gets
    spec: Any = None  # the spec the request came from (recorded in provenance)
    evaluation: Any = None  # a held-out evaluation (taxcut.spec.evaluation.EvaluationSpec) for prepare steps
    prepared: dict[str, Any] = field(default_factory=dict)  # what a prepare step learned (recorded in provenance)

    @property
    def base(self) -> ModelInput | None:
        return self.inputs[0] if self.method.needs_base else None

    @property
    def models(self) -> tuple[ModelInput, ...]:
        return self.inputs[1:] if self.method.needs_base else self.inputs

    def replace(self, **changes: Any) -> MergeRequest:
        return dataclasses.replace(self, **changes)

    def with_models(self, models: list[ModelInput]) -> MergeRequest:
        """The same request over other models (the base kept)."""
        base = (self.inputs[0],) if self.method.needs_base else ()
        return self.replace(inputs=base + tuple(models))
