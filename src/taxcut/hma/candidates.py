"""HMA candidates for a sweep: one fitted ratios file per ``a`` of the grid, cached by everything it depends on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from taxcut.hma.fit import FitSettings, fit_ratios
from taxcut.hma.ratios_file import ratios_spec, write_ratios
from taxcut.io.provenance import weights_identity
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.candidates import Candidate, from_ratios_file


def hma_candidates(spec: SweepSpec, *, log=print) -> list[Candidate]:
    """Fit (or reuse) the HMA ratios of every ``a`` of ``spec.candidates.hma``; return them as candidates."""
    grid = spec.candidates.hma
    if grid is None:
        return []
    folder = spec.out / "hma"
    candidates = []
    for alpha in grid.alphas:
        settings = FitSettings(alpha=alpha, blocks=grid.blocks, eps=grid.eps, reg=grid.reg, scope=grid.scope,
                               epochs=grid.epochs, batch_size=grid.batch_size, lr=grid.lr, seed=grid.seed,
                               device=spec.device)
        path = folder / f"hma-a{alpha:g}-{_inputs_key(spec, settings)}.yaml"
        if not path.is_file():
            result = fit_ratios(spec.sft, spec.aligned, grid.data, settings, log=log)
            write_ratios(path, ratios_spec(result, settings, spec.sft, spec.aligned, grid.data))
        candidates.append(from_ratios_file(path, label=f"HMA a={alpha:g}"))
    return candidates


def _inputs_key(spec: SweepSpec, settings: FitSettings) -> str:
    models = [weights_identity(folder) for folder in (spec.sft, spec.aligned)]
    digest = hashlib.sha256(json.dumps({"models": models, "settings": repr(settings)}, sort_keys=True).encode())
    digest.update(Path(spec.candidates.hma.data).read_bytes())
    return digest.hexdigest()[:10]
