"""Sweep candidates: one ratio assignment each, with a stable id derived from what it is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from taxcut.errors import TaxcutError
from taxcut.io.provenance import weights_identity
from taxcut.spec.merge import MergeSpec, NameRule
from taxcut.spec.sweep import CandidateGrid

_RATIO_FIELDS = ("alpha", "alphas", "block_bounds", "layer_alphas", "rules")


class Candidate(BaseModel):
    """One averaged model to evaluate, given like a merge spec's ratio fields (see :mod:`taxcut.spec.merge`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    kind: str  # "MA", "blocks", "layers", "model"
    model: str | None = None  # an existing checkpoint, evaluated as it is (kind "model")
    alpha: float | None = None
    alphas: list[float] | None = None
    block_bounds: list[tuple[int, int]] | None = None
    layer_alphas: list[float] | None = None
    rules: list[NameRule] = []

    def ratio_fields(self) -> dict:
        if self.model is not None:
            return {"model": self.model}
        data = self.model_dump(mode="json", include=set(_RATIO_FIELDS), exclude_none=True)
        if not data.get("rules"):
            data.pop("rules", None)
        return data

    @property
    def id(self) -> str:
        """12 hex digits of the hash of the ratio fields (for a model: its path and weight files' times), so the
        same candidate has the same id in every sweep."""
        identity = self.ratio_fields()
        if self.model is not None:
            identity["weights"] = weights_identity(Path(self.model))
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def mean_alpha(self) -> float | None:
        """The mean ratio of the decoder layers; None for a model evaluated as it is."""
        if self.model is not None:
            return None
        return self.merge_spec(Path("sft"), Path("aligned"), extrapolate=True).mean_alpha

    def merge_spec(self, sft: Path, aligned: Path, out: Path | None = None, extrapolate: bool = False) -> MergeSpec:
        if self.model is not None:
            raise TaxcutError(f"candidate {self.label} is the model folder {self.model} itself; there is nothing to merge")
        return MergeSpec(sft=sft, aligned=aligned, out=out, extrapolate=extrapolate, **self.ratio_fields())


def expand_grid(grid: CandidateGrid) -> list[Candidate]:
    """The candidates of a grid, the SFT model (a = 0) first, duplicates removed, in the order given."""
    rules = [rule.model_dump(exclude_none=True) for rule in grid.rules]
    candidates = [ma_candidate(0.0)]  # the SFT model itself, the baseline of the tax (the grid's rules not applied)
    candidates += [ma_candidate(a, rules) for a in grid.alphas]
    candidates += [
        Candidate(label=f"blocks {_short(p)}", kind="blocks", alphas=p, block_bounds=grid.block_bounds, rules=rules)
        for p in grid.block_patterns
    ]
    candidates += [Candidate(label=f"layers {_short(p)}", kind="layers", layer_alphas=p, rules=rules)
                   for p in grid.layer_patterns]
    candidates += [Candidate(label=Path(m).name, kind="model", model=str(Path(m).resolve())) for m in grid.models]
    candidates += [from_ratios_file(Path(path)) for path in grid.ratio_files]
    unique: dict[str, Candidate] = {}
    for candidate in candidates:
        unique.setdefault(candidate.id, candidate)
    return list(unique.values())


def ma_candidate(alpha: float, rules: list | None = None) -> Candidate:
    return Candidate(label=f"MA a={alpha:g}", kind="MA", alpha=alpha, rules=rules or [])


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def from_ratios_file(path: Path, label: str | None = None) -> Candidate:
    """The ratios of a merge spec file (e.g. written by ``taxcut fit``) as a candidate."""
    from taxcut.spec.merge import MergeSpec

    spec = MergeSpec.from_yaml(path)
    kind = "HMA" if spec.fit else "blocks"
    fields = {k: v for k, v in spec.model_dump(include=set(_RATIO_FIELDS), exclude_none=True).items() if v != []}
    return Candidate(label=label or f"{kind} {path.stem}", kind=kind, **fields)
