"""What to sweep: the candidates (MA grid, block and layer patterns, HMA; :mod:`taxcut.spec.candidates`), how to
evaluate them, where to write."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from taxcut.errors import TaxcutError
from taxcut.io.yaml_file import read_yaml_mapping
from taxcut.spec.candidates import RECOMMENDED_PROFILES, CandidateGrid, expand_grid
from taxcut.spec.evaluation import EvaluationSpec
from taxcut.spec.execution import ExecutorSpec
from taxcut.spec.merge import describe_validation_error, read_spec_file, spec_from_dict
from taxcut.spec.spec_file import file_relative, model_relative


class SearchSpec(BaseModel):
    """A black-box multi-objective search (optuna, extra ``taxcut[search]``) over the K block ratios (``space:
    blocks``, each in [low, high]) or a LiNeS depth profile (``space: profile``: alpha in [low, high], beta in
    [-1, 1]; :mod:`taxcut.sweep.search`) that measures reward and tax directly, ``budget`` candidates in all
    (resumable through the results file). Each round asks ``batch`` proposals, evaluates them in parallel and
    tells their results (default: one per worker of the sweep's executor; set it to make the proposals
    independent of the cluster's size)."""

    model_config = ConfigDict(extra="forbid")

    budget: int = 20
    space: Literal["blocks", "profile"] = "blocks"
    blocks: int = 3
    sampler: Literal["nsga2", "tpe"] = "nsga2"
    seed: int = 0
    low: float = 0.0
    high: float = 1.0
    batch: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _space(self) -> SearchSpec:
        if self.space == "profile" and "blocks" in self.model_fields_set:
            raise ValueError("'blocks' applies to 'space: blocks' (a profile has two parameters, alpha and beta)")
        if not 0.0 <= self.low < self.high <= 1.0 and self.space == "profile":
            raise ValueError("'low' and 'high' bound the profile's alpha, a ratio: give 0 <= low < high <= 1")
        return self


class SweepSpec(BaseModel):
    """A whole sweep; ``out`` is a folder that receives results.jsonl, front.png, candidates.csv and .md."""

    model_config = ConfigDict(extra="forbid")

    sft: Path
    aligned: Path
    out: Path
    # a sweep without a candidates section: the MA grid and the LiNeS depth profiles that measured best for their
    # cost (docs/sweeps.md, RESULTS.md); a candidates section lists exactly what it wants (the grid by default)
    candidates: CandidateGrid = Field(default_factory=lambda: CandidateGrid(profiles=RECOMMENDED_PROFILES))
    evaluation: EvaluationSpec
    extrapolate: bool = False
    search: SearchSpec | None = None
    select: str | None = Field(
        None,
        description="name the best candidate under a budget, e.g. 'tax<=0.02'",
        json_schema_extra={"metavar": "EXPR"},
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the candidates are evaluated")
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    executor: ExecutorSpec = (
        ExecutorSpec()
    )  # in-process, or Ray workers (taxcut.execution); results do not depend on it
    # how results record the models they were measured on: sampled content hashes, or (full) the weight files'
    # whole-file SHA-256 too, read once at the sweep's start, so that `taxcut export --verify full` can check them
    input_hashes: Literal["sample", "full"] = "sample"
    # plan and merge the candidates although the two models' tokenizer files give the same text other ids (as
    # `merge --allow-tokenizer-mismatch`); results record it, so that `taxcut export` merges with the same allowance
    allow_tokenizer_mismatch: bool = False
    _source: Path | None = PrivateAttr(None)  # the spec file it was read from: never a destination

    @property
    def source(self) -> Path | None:
        return self._source

    @field_validator("allow_tokenizer_mismatch", mode="before")
    @classmethod
    def _strict_flag(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value

    @model_validator(mode="after")
    def _candidates_are_valid_merges(self) -> SweepSpec:
        if self.evaluation.reward is None or not self.evaluation.tasks:
            raise ValueError("a sweep measures reward and tax: its 'evaluation' needs a 'reward' section and 'tasks'")
        if self.candidates.mergekit is not None:  # its config read once, its models named by role
            self.candidates.mergekit.bind(self.sft, self.aligned)
        for candidate in expand_grid(self.candidates):
            if candidate.model is not None:
                continue
            try:
                candidate.merge_spec(
                    self.sft,
                    self.aligned,
                    extrapolate=self.extrapolate,
                    allow_tokenizer_mismatch=self.allow_tokenizer_mismatch,
                )
            except ValidationError as exc:
                raise ValueError(f"candidate {candidate.label}: {describe_validation_error(exc)}") from None
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
        """Read a sweep spec; its relative paths (models, out, data files) are relative to the file's folder."""
        path = Path(path)
        data = read_spec_file(path)  # sft, aligned, out
        grid = data.get("candidates")
        if isinstance(grid, dict):
            for key in ("models", "ratio_files"):
                if isinstance(grid.get(key), list):
                    relative = model_relative if key == "models" else file_relative  # a Hub ID stays as written
                    grid[key] = [relative(m, path.parent) for m in grid[key]]
            for key in ("data", "retain"):
                if isinstance(grid.get("hma"), dict) and grid["hma"].get(key) is not None:
                    grid["hma"][key] = file_relative(grid["hma"][key], path.parent)
            if isinstance(grid.get("mergekit"), dict) and grid["mergekit"].get("config") is not None:
                grid["mergekit"]["config"] = file_relative(grid["mergekit"]["config"], path.parent)
        data.update(overrides or {})
        spec = spec_from_dict(data, source=str(path), model=cls)
        spec = spec.model_copy(update={"evaluation": spec.evaluation.relative_to(path.parent)})
        spec._source = path
        return spec

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def load_evaluation(path: Path) -> EvaluationSpec:
    """An evaluation spec from a YAML file: either a sweep spec (its ``evaluation``) or a bare evaluation spec."""
    data = read_yaml_mapping(path)
    section = data.get("evaluation", data)
    if not isinstance(section, dict):
        raise TaxcutError(f"{path}: 'evaluation' must be a mapping with 'reward' and/or 'tasks'")
    return spec_from_dict(section, source=str(path), model=EvaluationSpec).relative_to(path.parent)
