"""HMA candidates for a sweep: one fitted ratios file per ``a`` of ``hma.mean_alphas`` and per eps of ``hma.eps``
(the paper's front is the envelope over its eps search), cached by everything it depends on -- each beside the
MA with the same scope, so the front shows what the learning adds beyond the scope. The missing fits run in
parallel on the sweep's executor (one fit per worker); this process writes each ratios file as its fit arrives."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from taxcut.execution import Executor, LocalExecutor
from taxcut.hma.fit import FitResult, fit_ratios
from taxcut.hma.ratios import bounded_eps
from taxcut.hma.ratios_file import ratios_spec, write_ratios
from taxcut.io.provenance import weights_identity
from taxcut.spec.candidates import Candidate, from_ratios_file, ma_candidate
from taxcut.spec.fit import FitSettings
from taxcut.spec.sweep import SweepSpec


def hma_candidates(spec: SweepSpec, *, log=print, executor: Executor | None = None) -> list[Candidate]:
    """Fit (or reuse) the HMA ratios at every ``a`` and eps of ``spec.candidates.hma``; return them as candidates,
    each preceded by the MA candidate of the same scope at the same ``a`` (:func:`scope_matched_ma`)."""
    grid = spec.candidates.hma
    if grid is None:
        return []
    folder = spec.out / "hma"
    planned = []  # (a, settings, how many eps at this a, ratios file)
    for alpha in grid.mean_alphas:
        searched = eps_search(grid.settings(alpha, spec.device))
        for settings in searched:
            eps = bounded_eps(alpha, settings.blocks, settings.eps, settings.normalize)
            planned.append((alpha, settings, len(searched),
                            folder / f"hma-a{alpha:g}-eps{eps:g}-{_inputs_key(spec, settings)}.yaml"))
    missing = [(path, settings) for _, settings, _, path in planned if not path.is_file()]
    allow = spec.allow_tokenizer_mismatch
    fit = HmaFit(spec.sft, spec.aligned, grid.data, log, allow_tokenizer_mismatch=allow)
    for (path, _), result in (executor or LocalExecutor()).map(fit, missing):
        write_ratios(path, ratios_spec(result, result.settings, spec.sft, spec.aligned, grid.data,
                                       allow_tokenizer_mismatch=allow))
    candidates: dict[str, Candidate] = {}
    for alpha, settings, searched, path in planned:
        eps = bounded_eps(alpha, settings.blocks, settings.eps, settings.normalize)
        label = f"HMA a={alpha:g}" + (f" eps={eps:.3g}" if searched > 1 else "")
        scope = "" if settings.scope == "all" else f" ({settings.scope} scope)"
        fitted = from_ratios_file(path, label=label + scope)
        for candidate in (scope_matched_ma(fitted, alpha, settings.scope), fitted):
            candidates.setdefault(candidate.id, candidate)
    return list(candidates.values())


@dataclass(frozen=True)
class HmaFit:
    """One HMA fit per item ``(ratios file, settings)`` on an executor's worker (each fit loads its models)."""

    sft: Path
    aligned: Path
    data: Path
    log: object = print
    allow_tokenizer_mismatch: bool = False  # the sweep's allowance (a fit refuses a mismatched pair without it)

    def setup(self):
        def fit(item: tuple[Path, FitSettings]) -> FitResult:
            return fit_ratios(self.sft, self.aligned, self.data, item[1], log=self.log,
                              allow_tokenizer_mismatch=self.allow_tokenizer_mismatch)

        return fit


def eps_search(settings: FitSettings) -> list[FitSettings]:
    """The settings of one fit per eps of ``settings.eps`` -- but one only for the values the bound raises to the
    same eps (they are the same fit), the first of them (the fit raises it and says so)."""
    distinct: dict[float, FitSettings] = {}
    for eps in settings.eps_values():
        bounded = bounded_eps(settings.alpha, settings.blocks, eps, settings.normalize)
        distinct.setdefault(bounded, settings.model_copy(update={"eps": eps}))
    return list(distinct.values())


def scope_matched_ma(fitted: Candidate, alpha: float, scope: str) -> Candidate:
    """MA at ``alpha`` with the scope of the HMA candidate ``fitted``, no learning: its blocks, bounds and rules
    with every block at ``alpha`` (the fit's starting point). Scope ``all`` is plain MA; scope ``paper`` keeps the
    embeddings and norms at SFT -- part of the paper's "HMA gain" comes from that alone."""
    if scope == "all":
        return ma_candidate(alpha)
    return Candidate(label=f"MA a={alpha:g} ({scope} scope)", kind="scoped-MA", alphas=[alpha] * len(fitted.alphas),
                     block_bounds=fitted.block_bounds, rules=fitted.rules)


def _inputs_key(spec: SweepSpec, settings: FitSettings) -> str:
    models = [weights_identity(folder) for folder in (spec.sft, spec.aligned)]
    payload = {"models": models, "settings": settings.model_dump(mode="json")}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode())
    digest.update(Path(spec.candidates.hma.data).read_bytes())
    return digest.hexdigest()[:10]
