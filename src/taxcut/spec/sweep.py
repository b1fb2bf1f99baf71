"""What to sweep: the candidates (MA grid, block and layer patterns), how to evaluate them, where to write."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from taxcut.errors import TaxcutError
from taxcut.spec.evaluation import EvaluationSpec
from taxcut.spec.merge import (
    NameRule, _read_yaml_mapping, describe_validation_error, file_relative, read_spec_file, spec_from_dict,
)

DEFAULT_GRID = [round(0.1 * i, 1) for i in range(11)]


class CandidateGrid(BaseModel):
    """``alphas``: the MA grid; ``block_patterns``: per-block ratio lists (HMA-style, same split rule and
    ``block_bounds`` as ``taxcut merge``); ``layer_patterns``: per-layer lists; ``rules`` apply to every candidate;
    ``models``: other checkpoints of the same architecture evaluated as they are (e.g. early-stopping
    checkpoints of the RLHF run, to compare with averaging). The SFT model (a = 0) is always evaluated: the tax is
    measured from it."""

    model_config = ConfigDict(extra="forbid")

    alphas: list[float] = DEFAULT_GRID
    block_patterns: list[list[float]] = []
    block_bounds: list[tuple[int, int]] | None = None
    layer_patterns: list[list[float]] = []
    rules: list[NameRule] = []
    models: list[Path] = []
    ratio_files: list[Path] = []  # ratios files of `taxcut fit` (or any merge spec): their ratios are candidates
    hma: HmaGrid | None = None


class HmaGrid(BaseModel):
    """Fit one HMA candidate per ``alphas`` value (cached by its inputs) with ``taxcut fit``'s settings."""

    model_config = ConfigDict(extra="forbid")

    data: Path
    alphas: list[float] = [round(0.1 * i, 1) for i in range(1, 10)]
    blocks: int = 3
    eps: float = 0.05
    reg: float | list[float] = 0.0
    scope: Literal["all", "paper"] = "all"
    epochs: int = 1
    batch_size: int = 8
    lr: float = 0.05
    seed: int = 0


class SearchSpec(BaseModel):
    """A black-box multi-objective search over the K block ratios (optuna, extra ``taxcut[search]``) that measures
    reward and tax directly, ``budget`` candidates in all (resumable through the results file)."""

    model_config = ConfigDict(extra="forbid")

    budget: int = 20
    blocks: int = 3
    sampler: Literal["nsga2", "tpe"] = "nsga2"
    seed: int = 0
    low: float = 0.0
    high: float = 1.0


class SweepSpec(BaseModel):
    """A whole sweep; ``out`` is a folder that receives results.jsonl, front.png, candidates.csv and .md."""

    model_config = ConfigDict(extra="forbid")

    sft: Path
    aligned: Path
    out: Path
    candidates: CandidateGrid = CandidateGrid()
    evaluation: EvaluationSpec
    extrapolate: bool = False
    search: SearchSpec | None = None
    select: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] | None = None

    @model_validator(mode="after")
    def _candidates_are_valid_merges(self) -> SweepSpec:
        if self.evaluation.reward is None or not self.evaluation.tasks:
            raise ValueError("a sweep measures reward and tax: its 'evaluation' needs a 'reward' section and 'tasks'")
        from taxcut.sweep.candidates import expand_grid

        for candidate in expand_grid(self.candidates):
            if candidate.model is not None:
                continue
            try:
                candidate.merge_spec(self.sft, self.aligned, extrapolate=self.extrapolate)
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
                    grid[key] = [file_relative(m, path.parent) for m in grid[key]]
            if isinstance(grid.get("hma"), dict) and "data" in grid["hma"]:
                grid["hma"]["data"] = file_relative(grid["hma"]["data"], path.parent)
        data.update(overrides or {})
        spec = spec_from_dict(data, source=str(path), model=cls)
        return spec.model_copy(update={"evaluation": spec.evaluation.relative_to(path.parent)})

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def load_evaluation(path: Path) -> EvaluationSpec:
    """An evaluation spec from a YAML file: either a sweep spec (its ``evaluation``) or a bare evaluation spec."""
    data = _read_yaml_mapping(path)
    section = data.get("evaluation", data)
    if not isinstance(section, dict):
        raise TaxcutError(f"{path}: 'evaluation' must be a mapping with 'reward' and/or 'tasks'")
    return spec_from_dict(section, source=str(path), model=EvaluationSpec).relative_to(path.parent)
