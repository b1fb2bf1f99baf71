"""HMA candidates for a sweep: one fitted ratios file per ``a`` of ``hma.mean_alphas``, cached by everything it
depends on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from taxcut.hma.fit import fit_ratios
from taxcut.hma.ratios_file import ratios_spec, write_ratios
from taxcut.io.provenance import weights_identity
from taxcut.spec.candidates import Candidate, from_ratios_file
from taxcut.spec.fit import FitSettings
from taxcut.spec.sweep import SweepSpec


def hma_candidates(spec: SweepSpec, *, log=print) -> list[Candidate]:
    """Fit (or reuse) the HMA ratios at every ``a`` of ``spec.candidates.hma``; return them as candidates."""
    grid = spec.candidates.hma
    if grid is None:
        return []
    folder = spec.out / "hma"
    candidates = []
    for alpha in grid.mean_alphas:
        settings = grid.settings(alpha, spec.device)
        path = folder / f"hma-a{alpha:g}-{_inputs_key(spec, settings)}.yaml"
        if not path.is_file():
            result = fit_ratios(spec.sft, spec.aligned, grid.data, settings, log=log)
            write_ratios(path, ratios_spec(result, settings, spec.sft, spec.aligned, grid.data))
        candidates.append(from_ratios_file(path, label=f"HMA a={alpha:g}"))
    return candidates


def _inputs_key(spec: SweepSpec, settings: FitSettings) -> str:
    models = [weights_identity(folder) for folder in (spec.sft, spec.aligned)]
    payload = {"models": models, "settings": settings.model_dump(mode="json")}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode())
    digest.update(Path(spec.candidates.hma.data).read_bytes())
    return digest.hexdigest()[:10]
