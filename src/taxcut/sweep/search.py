"""Beyond the paper: a black-box multi-objective search over the block ratios, measuring reward and tax directly.

optuna's NSGA-II (or TPE) proposes K block ratios; each proposal is evaluated like any sweep candidate and
appended to the same results file, so a killed search resumes: earlier proposals are told to the new study
before it asks for more. Proposals come in batches (ask ``batch``, evaluate them in parallel on the sweep's
executor, tell their results in the order they were asked). Extra ``taxcut[search]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from taxcut.errors import TaxcutError
from taxcut.spec.candidates import Candidate
from taxcut.spec.sweep import SearchSpec
from taxcut.sweep.pareto import tax
from taxcut.sweep.results import ResultRecord


def search_candidates(spec: SearchSpec, done: list[ResultRecord], baseline: ResultRecord,
                      evaluate: Callable[[list[Candidate]], Iterable[ResultRecord]], batch: int = 1) -> list[Candidate]:
    """Run the search to its budget. ``done``: this search's earlier records; ``evaluate``: candidates -> their
    records, in any order; ``batch``: proposals per round unless ``spec.batch`` says otherwise."""
    try:
        import optuna
    except ImportError:
        raise TaxcutError("the black-box search needs the extra: pip install 'taxcut[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.NSGAIISampler(seed=spec.seed) if spec.sampler == "nsga2"
               else optuna.samplers.TPESampler(seed=spec.seed))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    distributions = {f"a{k}": optuna.distributions.FloatDistribution(spec.low, spec.high) for k in range(spec.blocks)}
    candidates = []
    for record in done:
        params = {f"a{k}": value for k, value in enumerate(record.candidate.alphas)}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  values=_objectives(record, baseline)))
        candidates.append(_candidate([params[f"a{k}"] for k in range(spec.blocks)]))
    batch = spec.batch or batch
    while len(study.trials) < spec.budget:
        trials = [study.ask(distributions) for _ in range(min(batch, spec.budget - len(study.trials)))]
        proposed = [_candidate([round(t.params[f"a{k}"], 4) for k in range(spec.blocks)]) for t in trials]
        records = {r.candidate_id: r for r in evaluate(list({c.id: c for c in proposed}.values()))}
        for trial, candidate in zip(trials, proposed):
            study.tell(trial, _objectives(records[candidate.id], baseline))
        candidates += proposed
    return candidates


def _candidate(alphas: list[float]) -> Candidate:
    return Candidate(label="search [" + ", ".join(f"{a:.2f}" for a in alphas) + "]", kind="search", alphas=alphas)


def _objectives(record: ResultRecord, baseline: ResultRecord) -> list[float]:
    result = record.result
    return [result.reward.reward, tax(result.primary, baseline.result.primary, result.directions)]
