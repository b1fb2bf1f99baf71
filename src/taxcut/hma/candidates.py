"""HMA candidates for a sweep: one fitted ratios file per ``a`` of ``hma.mean_alphas``, per eps of ``hma.eps``
(the paper's front is the envelope over its eps search) and per retention weight W of ``hma.retain_weights`` (a
tax-aware fit on ``hma.retain``, :mod:`taxcut.hma.retain`), cached by everything it depends on -- each beside the
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
from taxcut.hma.retain import refuse_shared_lines
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
    if grid.retain is not None:
        check_retain_set(spec)
    folder = spec.out / "hma"
    planned = []  # (a, settings, how many eps at this a, ratios file)
    for alpha in grid.mean_alphas:
        searched = eps_search(grid.settings(alpha, spec.device))
        for settings in searched:
            eps = _shown_eps(settings)
            for one in retain_search(settings):
                weight = f"-w{one.retain_weight:g}" if grid.retain is not None else ""
                planned.append(
                    (
                        alpha,
                        one,
                        len(searched),
                        folder / f"hma-a{alpha:g}-eps{eps:g}{weight}-{_inputs_key(spec, one)}.yaml",
                    )
                )
    missing = [(path, settings) for _, settings, _, path in planned if not path.is_file()]
    allow = spec.allow_tokenizer_mismatch
    fit = HmaFit(spec.sft, spec.aligned, grid.data, log, allow_tokenizer_mismatch=allow, retain=grid.retain)
    for (path, _), result in (executor or LocalExecutor()).map(fit, missing):
        write_ratios(
            path,
            ratios_spec(
                result,
                result.settings,
                spec.sft,
                spec.aligned,
                grid.data,
                allow_tokenizer_mismatch=allow,
                retain=grid.retain,
            ),
        )
    candidates: dict[str, Candidate] = {}
    for alpha, settings, searched, path in planned:
        eps = _shown_eps(settings)
        label = f"HMA a={alpha:g}" + (f" eps={eps:.3g}" if searched > 1 else "")
        label += f" W={settings.retain_weight:g}" if grid.retain is not None else ""
        label += _shape(settings)
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
    retain: Path | None = None  # the retain set of a tax-aware fit

    def setup(self):
        def fit(item: tuple[Path, FitSettings]) -> FitResult:
            return fit_ratios(
                self.sft,
                self.aligned,
                self.data,
                item[1],
                log=self.log,
                allow_tokenizer_mismatch=self.allow_tokenizer_mismatch,
                retain=self.retain,
            )

        return fit


def eps_search(settings: FitSettings) -> list[FitSettings]:
    """The settings of one fit per eps of ``settings.eps`` -- but one only for the values the bound raises to the
    same eps (they are the same fit), the first of them (the fit raises it and says so). A free mean has no eps:
    one fit. Per-layer ratios are bounded by the fit, which knows the layers."""
    distinct: dict[float, FitSettings] = {}
    for eps in settings.eps_values():
        bounded = (
            eps
            if settings.granularity == "layer"
            else bounded_eps(settings.alpha, settings.blocks, eps, settings.normalize)
        )
        distinct.setdefault(0.0 if settings.mean == "free" else bounded, settings.model_copy(update={"eps": eps}))
    return list(distinct.values())


def retain_search(settings: FitSettings) -> list[FitSettings]:
    """The settings of one fit per retention weight W of ``settings.retain_weight`` (each value once)."""
    weights = dict.fromkeys(settings.retain_weights())
    return [settings.model_copy(update={"retain_weight": weight}) for weight in weights]


def check_retain_set(spec: SweepSpec) -> None:
    """Refuse, before any work, a sweep's retain set that shares a text with its evaluation's prompts or items."""
    files = [
        (role, path)
        for role, path in spec.evaluation.input_files()
        if role == "reward prompts" or role.endswith(" data")
    ]
    refuse_shared_lines(spec.candidates.hma.retain, files)


def _shown_eps(settings: FitSettings) -> float:
    if settings.granularity == "layer" or settings.mean == "free":
        return settings.eps  # the fit bounds per-layer ratios; a free mean has none to bound
    return bounded_eps(settings.alpha, settings.blocks, settings.eps, settings.normalize)


def _shape(settings: FitSettings) -> str:
    """The label's note of a non-default granularity or mean."""
    parts = ["per layer"] * (settings.granularity == "layer") + ["free mean"] * (settings.mean == "free")
    return f" ({', '.join(parts)})" if parts else ""


def scope_matched_ma(fitted: Candidate, alpha: float, scope: str) -> Candidate:
    """MA at ``alpha`` with the scope of the HMA candidate ``fitted``, no learning: its blocks, bounds and rules
    with every block at ``alpha`` (the fit's starting point). Scope ``all`` is plain MA; scope ``paper`` keeps the
    embeddings and norms at SFT -- part of the paper's "HMA gain" comes from that alone."""
    if scope == "all":
        return ma_candidate(alpha)
    return Candidate(
        label=f"MA a={alpha:g} ({scope} scope)",
        kind="scoped-MA",
        alphas=[alpha] * len(fitted.alphas),
        block_bounds=fitted.block_bounds,
        rules=fitted.rules,
    )


def _inputs_key(spec: SweepSpec, settings: FitSettings) -> str:
    models = [weights_identity(folder) for folder in (spec.sft, spec.aligned)]
    dumped = settings.model_dump(mode="json")
    for key, default in NEW_SETTINGS.items():  # at their defaults: the keys of fits cached before they existed
        if dumped[key] == default:
            del dumped[key]
    payload = {"models": models, "settings": dumped}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode())
    digest.update(Path(spec.candidates.hma.data).read_bytes())
    if settings.retain_weight > 0:
        digest.update(b"retain\0" + Path(spec.candidates.hma.retain).read_bytes())
    return digest.hexdigest()[:10]


NEW_SETTINGS = {"retain_weight": 0.0, "granularity": "block", "mean": "fixed"}
