"""Sweep candidates: one ratio assignment each, with a stable id derived from what it is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from taxcut.spec.merge import MergeSpec, NameRule
from taxcut.spec.sweep import CandidateGrid

_RATIO_FIELDS = ("alpha", "alphas", "block_bounds", "layer_alphas", "rules")


class Candidate(BaseModel):
    """One averaged model to evaluate, given like a merge spec's ratio fields (see :mod:`taxcut.spec.merge`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    kind: str  # "MA", "blocks", "layers"
    alpha: float | None = None
    alphas: list[float] | None = None
    block_bounds: list[tuple[int, int]] | None = None
    layer_alphas: list[float] | None = None
    rules: list[NameRule] = []

    def ratio_fields(self) -> dict:
        data = self.model_dump(mode="json", include=set(_RATIO_FIELDS), exclude_none=True)
        if not data.get("rules"):
            data.pop("rules", None)
        return data

    @property
    def id(self) -> str:
        """12 hex digits of the hash of the ratio fields: the same candidate has the same id in every sweep."""
        canonical = json.dumps(self.ratio_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def mean_alpha(self) -> float:
        return self.merge_spec(Path("sft"), Path("aligned"), extrapolate=True).mean_alpha

    def merge_spec(self, sft: Path, aligned: Path, out: Path | None = None, extrapolate: bool = False) -> MergeSpec:
        return MergeSpec(sft=sft, aligned=aligned, out=out, extrapolate=extrapolate, **self.ratio_fields())


def expand_grid(grid: CandidateGrid) -> list[Candidate]:
    """The candidates of a grid, the SFT model (a = 0) first, duplicates removed, in the order given."""
    rules = [rule.model_dump(exclude_none=True) for rule in grid.rules]
    candidates = [ma_candidate(0.0, rules)]
    candidates += [ma_candidate(a, rules) for a in grid.alphas]
    candidates += [
        Candidate(label=f"blocks {_short(p)}", kind="blocks", alphas=p, block_bounds=grid.block_bounds, rules=rules)
        for p in grid.block_patterns
    ]
    candidates += [Candidate(label=f"layers {_short(p)}", kind="layers", layer_alphas=p, rules=rules)
                   for p in grid.layer_patterns]
    unique: dict[str, Candidate] = {}
    for candidate in candidates:
        unique.setdefault(candidate.id, candidate)
    return list(unique.values())


def ma_candidate(alpha: float, rules: list | None = None) -> Candidate:
    return Candidate(label=f"MA a={alpha:g}", kind="MA", alpha=alpha, rules=rules or [])


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
