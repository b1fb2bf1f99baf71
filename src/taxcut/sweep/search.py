"""Beyond the paper: a black-box multi-objective search over the block ratios, measuring reward and tax directly.

optuna's NSGA-II (or TPE) proposes K block ratios (``space: blocks``), or a LiNeS depth profile ``[alpha, beta]``
(``space: profile``: alpha in [low, high], beta in [-1, 1], which holds every line from any bottom ratio to any top
ratio in [0, 1]; layers past [0, 1] are clipped); each proposal is evaluated like any sweep candidate and
appended to the same results file, so a killed search resumes: earlier proposals are told to the new study
before it asks for more. Proposals come in batches (ask ``batch``, evaluate them in parallel on the sweep's
executor, tell their results in the order they were asked). Extra ``taxcut[search]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from taxcut.errors import TaxcutError
from taxcut.spec.candidates import Candidate, profile_candidate
from taxcut.spec.sweep import SearchSpec
from taxcut.sweep.pareto import tax
from taxcut.sweep.results import ResultRecord


def search_candidates(
    spec: SearchSpec,
    done: list[ResultRecord],
    baseline: ResultRecord,
    evaluate: Callable[[list[Candidate]], Iterable[ResultRecord]],
    batch: int = 1,
) -> list[Candidate]:
    """Run the search to its budget. ``done``: this search's earlier records; ``evaluate``: candidates -> their
    records, in any order; ``batch``: proposals per round unless ``spec.batch`` says otherwise."""
    try:
        import optuna
    except ImportError:
        raise TaxcutError("the black-box search needs the extra: pip install 'taxcut[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (
        optuna.samplers.NSGAIISampler(seed=spec.seed)
        if spec.sampler == "nsga2"
        else optuna.samplers.TPESampler(seed=spec.seed)
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    bounds = _bounds(spec)
    distributions = {name: optuna.distributions.FloatDistribution(low, high) for name, (low, high) in bounds.items()}
    candidates = []
    for record in done:
        params = dict(zip(bounds, _values(record.candidate, spec)))
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, values=_objectives(record, baseline))
        )
        candidates.append(_candidate(list(params.values()), spec))
    batch = spec.batch or batch
    while len(study.trials) < spec.budget:
        trials = [study.ask(distributions) for _ in range(min(batch, spec.budget - len(study.trials)))]
        proposed = [_candidate([round(t.params[name], 4) for name in bounds], spec) for t in trials]
        records = {r.candidate_id: r for r in evaluate(list({c.id: c for c in proposed}.values()))}
        for trial, candidate in zip(trials, proposed):
            study.tell(trial, _objectives(records[candidate.id], baseline))
        candidates += proposed
    return candidates


PROFILE_BETA = (-1.0, 1.0)  # every line between two ratios in [0, 1]: top - bottom lies in [-1, 1]


def _bounds(spec: SearchSpec) -> dict[str, tuple[float, float]]:
    """Each searched parameter's range, in the order a candidate lists them."""
    if spec.space == "profile":
        return {"alpha": (spec.low, spec.high), "beta": PROFILE_BETA}
    return {f"a{k}": (spec.low, spec.high) for k in range(spec.blocks)}


def _values(candidate: Candidate, spec: SearchSpec) -> list[float] | None:
    return candidate.profile if spec.space == "profile" else candidate.alphas


def fits_search(candidate: Candidate, spec: SearchSpec) -> bool:
    """Whether an earlier proposal (kind "search") belongs to this search: same space, within its bounds."""
    values = _values(candidate, spec)
    bounds = list(_bounds(spec).values())
    return (
        candidate.kind == "search"
        and values is not None
        and len(values) == len(bounds)
        and all(low <= v <= high for v, (low, high) in zip(values, bounds))
    )


def _candidate(values: list[float], spec: SearchSpec) -> Candidate:
    if spec.space == "profile":
        return profile_candidate(values, kind="search").model_copy(
            update={"label": f"search LiNeS a={values[0]:.2f} b={values[1]:.2f}"}
        )
    return Candidate(label="search [" + ", ".join(f"{a:.2f}" for a in values) + "]", kind="search", alphas=values)


def _objectives(record: ResultRecord, baseline: ResultRecord) -> list[float]:
    result = record.result
    return [result.reward.reward, tax(result.primary, baseline.result.primary, result.directions)]
