"""``taxcut sweep``: evaluate every candidate (resuming), then write the front, its tables and plot."""

from __future__ import annotations

import hashlib
import json
import sys
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from taxcut.errors import TaxcutError
from taxcut.evaluation.loading import pick_device
from taxcut.evaluation.result import EvaluationResult
from taxcut.evaluation.suite import EvaluationSuite
from taxcut.execution import Executor, open_executor
from taxcut.hma.candidates import hma_candidates
from taxcut.io.hub import as_recorded  # a Hub ID as written, a folder made absolute
from taxcut.io.destination import claim_folder, staged_file
from taxcut.io.provenance import weights_identity
from taxcut.merging.plan import build_plan
from taxcut.spec.candidates import Candidate, expand_grid
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.pareto import parse_selection, pareto_front, select, tax
from taxcut.sweep.cost import CostAccount
from taxcut.sweep.executor import CandidateBatches, CandidateEvaluation
from taxcut.sweep.noise import NoisyPoint, noise_aware_front, tax_stderr
from taxcut.sweep.report import SweepRow, markdown_table, plot_front, write_csv
from taxcut.sweep.results import ResultRecord, ResultsStore
from taxcut.sweep.search import search_candidates
from taxcut.sweep.strategy import (
    ResultsBook, StrategyReport, SweepStrategy, measure_part, sweep_cost, uses_strategy,
)
from taxcut.version import __version__

RESULTS_FILE = "results.jsonl"


@dataclass
class SweepReport:
    rows: list[SweepRow]  # one per candidate of the sweep, in the order evaluated
    out: Path
    selected: SweepRow | None = None
    cost: CostAccount | None = None  # what the candidates' evaluations cost (taxcut.sweep.cost)
    strategy: StrategyReport | None = None  # what the adaptive grid / successive halving did, if used

    @property
    def plot(self) -> Path:
        return self.out / "front.png"


def run_sweep(spec: SweepSpec, *, progress: bool | None = None, executor: Executor | None = None) -> SweepReport:
    """Evaluate the candidates of ``spec`` not already in its results file, then report on all of them.

    Order: the grid (SFT first), the fitted HMA candidates, then the black-box search, which needs the SFT
    baseline to measure tax. Candidates run on ``executor`` (default: the one ``spec.executor`` names); this
    process alone writes the results file, each result as it arrives.
    """
    if executor is None:
        with open_executor(spec.executor) as executor:
            return run_sweep(spec, progress=progress, executor=executor)
    if spec.select:
        parse_selection(spec.select)  # a bad expression fails now, not after the whole sweep
    device = pick_device(spec.device) if not executor.remote else "cpu"  # remote workers load their own models
    suite = EvaluationSuite.from_spec(spec.evaluation, device=device)  # bad data files fail before anything else
    claim_folder(spec.out, inputs=sweep_inputs(spec), kind="sweep results", entries=list(SWEEP_FILES))
    context = sweep_context(spec, suite)
    identity = inputs_identity(spec.sft, spec.aligned)
    store = ResultsStore(spec.out / RESULTS_FILE)
    records = store.records()
    latest = {r.candidate_id: r for r in records if r.context == context}
    stale = len({r.candidate_id for r in records if r.share >= 1.0 and r.context != context} - set(latest))
    if stale:
        print(f"note: {spec.out / RESULTS_FILE} holds {stale} result(s) measured under other settings (the models' "
              "weights, the evaluation's data or settings, or the dtype differ); they are kept, not used, and "
              "those candidates are measured again", file=sys.stderr)
    batches = CandidateBatches(executor, CandidateEvaluation(spec, suite=None if executor.remote else suite))

    def evaluate(candidates: list[Candidate]) -> Iterator[ResultRecord]:
        """Evaluate on the executor's workers; record each result as it arrives."""
        for candidate, result in batches(candidates):
            record = _record(spec, candidate, result, context, identity)
            store.append(record)
            latest[candidate.id] = record
            yield record

    def check_plans(candidates: list[Candidate]) -> None:
        for candidate in candidates:  # every plan from the headers first: a bad candidate fails before any work
            if candidate.model is None:
                build_plan(candidate.merge_spec(spec.sft, spec.aligned, extrapolate=spec.extrapolate)).close()

    book = strategy = None
    if uses_strategy(spec):  # the adaptive grid and/or successive halving (taxcut.sweep.strategy)
        book = ResultsBook(store, context, latest, lambda c, result, ctx: _record(spec, c, result, ctx, identity),
                           seed=spec.evaluation.halving.seed)
        measured = CandidateBatches(executor, CandidateEvaluation(spec, measure=measure_part,
                                                                  suite=None if executor.remote else suite))
        strategy = SweepStrategy(spec, book, measured, check=check_plans, progress=progress)

    def evaluate_all(candidates: list[Candidate]) -> None:
        if strategy is not None:
            strategy.measure(candidates)
            return
        todo = [c for c in candidates if c.id not in latest]
        check_plans(todo)
        with tqdm(total=len(todo), desc="sweep", unit="candidate",
                  disable=None if progress is None else not progress) as bar:
            for record in evaluate(todo):
                bar.set_postfix_str(record.label)
                bar.update()

    if strategy is not None:
        candidates = strategy.run()
    else:
        candidates = expand_grid(spec.candidates)
        evaluate_all(candidates)
    if spec.candidates.hma is not None and not (strategy is not None and strategy.adaptive):  # else a family
        fitted = hma_candidates(spec, log=lambda *_: None, executor=executor)
        evaluate_all(fitted)
        candidates += fitted
    if spec.search is not None:
        bounds = spec.search
        done = [r for r in latest.values() if r.kind == "search"  # earlier proposals that fit this search
                and len(r.candidate.alphas or []) == bounds.blocks
                and all(bounds.low <= a <= bounds.high for a in r.candidate.alphas)]
        candidates += search_candidates(spec.search, done, latest[candidates[0].id], evaluate,
                                        batch=executor.workers)
    _write_report_file(spec.out / "sweep.yaml", lambda path: path.write_text(spec.to_yaml()))
    report = summarize(list(latest.values()), context, candidates, spec.out)
    report.cost = sweep_cost(candidates, latest, book)
    report.strategy = strategy.report if strategy is not None else None
    if spec.select:
        report.selected = select(report.rows, spec.select)
    return report


def sweep_context(spec: SweepSpec, suite: EvaluationSuite) -> str:
    """What results depend on besides the candidate: the two models, the evaluation and the compute dtype."""
    models = [weights_identity(folder) for folder in (spec.sft, spec.aligned)]
    payload = json.dumps({"models": models, "evaluation": suite.fingerprint(), "dtype": spec.dtype,
                          "extrapolate": spec.extrapolate}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def summarize(records: list[ResultRecord], context: str, candidates: list[Candidate], out: Path) -> SweepReport:
    """Rows for the candidates of this sweep (newest record of each), their tax, the front; writes the reports."""
    latest = {r.candidate_id: r for r in records if r.context == context}
    unique: dict[str, Candidate] = {}
    for candidate in candidates:
        unique.setdefault(candidate.id, candidate)
    candidates = list(unique.values())
    baseline = latest.get(candidates[0].id)
    if baseline is None:
        raise TaxcutError("the SFT model (a = 0) has no result yet, so the tax cannot be measured")
    rows = [_row(candidate, latest[candidate.id].result, latest[candidate.id].mean_alpha, baseline.result)
            for candidate in candidates if candidate.id in latest]
    for row, on_front in zip(rows, pareto_front([(r.reward, r.tax) for r in rows])):
        row.pareto = on_front
    points = [NoisyPoint(r.reward, r.tax, r.reward_stderr, r.tax_stderr) for r in rows]
    for row, on_front in zip(rows, noise_aware_front(points)):  # the front with error bars (taxcut.sweep.noise)
        row.pareto_within_noise = on_front
    out.mkdir(parents=True, exist_ok=True)
    _write_report_file(out / "candidates.csv", lambda path: write_csv(rows, path))
    _write_report_file(out / "candidates.md", lambda path: path.write_text(markdown_table(rows)))
    _write_report_file(out / "front.png", lambda path: plot_front(rows, path))
    return SweepReport(rows, out)


# What a sweep writes in its folder (the folder's marker lists them; anything else there is the user's).
SWEEP_FILES = (RESULTS_FILE, "sweep.yaml", "candidates.csv", "candidates.md", "front.png", "hma/")


def sweep_inputs(spec: SweepSpec) -> list[tuple[str, Path | None]]:
    """Everything a sweep reads: its output folder may be none of them, nor contain one."""
    found: list[tuple[str, Path | None]] = [("sft", spec.sft), ("aligned", spec.aligned), ("spec", spec.source)]
    found += spec.evaluation.input_files()
    found += [(f"candidate {Path(m).name}", Path(m)) for m in spec.candidates.models]
    found += [(f"ratios file {Path(f).name}", Path(f)) for f in spec.candidates.ratio_files]
    if spec.candidates.hma is not None:
        found.append(("HMA fit set", spec.candidates.hma.data))
    return found


def _write_report_file(path: Path, write) -> None:
    """A report file, replaced atomically (the sweep's folder is claimed: these names are the sweep's own)."""
    with staged_file(path, overwrite=True, inputs=[], kind="sweep report") as partial:
        write(partial)


def inputs_identity(sft: Path, aligned: Path) -> dict:
    """The two models' weight files as a result records them (JSON-shaped, so records compare equal)."""
    return json.loads(json.dumps({"sft": weights_identity(sft), "aligned": weights_identity(aligned)}))


def _row(candidate: Candidate, result: EvaluationResult, mean_alpha: float | None,
         baseline: EvaluationResult) -> SweepRow:
    reward = result.reward
    return SweepRow(
        id=candidate.id, label=candidate.label, kind=candidate.kind, mean_alpha=mean_alpha,
        reward=reward.reward if reward else math.nan, reward_stderr=reward.reward_stderr if reward else math.nan,
        tax=tax(result.primary, baseline.primary, result.directions), primary=result.primary, scores=result.tasks,
        tax_stderr=(tax_stderr(result.primary_stderr, [t for t in result.primary if t in baseline.primary])
                    if result.primary_stderr is not None else math.nan),
        primary_stderr=result.primary_stderr or {},
    )


def _record(spec: SweepSpec, candidate: Candidate, result: EvaluationResult, context: str,
            identity: dict | None = None) -> ResultRecord:
    return ResultRecord(
        candidate_id=candidate.id, candidate=candidate, result=result, mean_alpha=candidate.mean_alpha,
        sft=str(as_recorded(spec.sft)), aligned=str(as_recorded(spec.aligned)), context=context,
        extrapolate=spec.extrapolate, dtype=spec.dtype,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), taxcut_version=__version__,
        inputs=identity,
    )


def export_candidate(results: Path, candidate_id: str, out: Path, *, overwrite: bool = False,
                     force: bool = False) -> Path:
    """Write a swept candidate as a model folder through the merge engine (the weights it was evaluated with).

    ``results`` is a results file or the sweep's output folder. The input models must be the ones the candidate
    was measured on (their weight files' names, sizes and times): otherwise the export is refused, unless
    ``force``, which the provenance file then records.
    """
    results = results / RESULTS_FILE if results.is_dir() else results
    from taxcut import merge  # noqa: PLC0415 - the public merge entry point sits above the sweep's modules

    record = ResultsStore(results).find(candidate_id)
    sft, aligned = Path(record.sft), Path(record.aligned)
    changed = _changed_inputs(record, sft, aligned)
    if changed and not force:
        raise TaxcutError(f"{results}: candidate {record.candidate_id} ({record.label}) was measured on other "
                          f"weights: {changed}; rerun the sweep, or pass --force to export today's weights under "
                          "those scores")
    spec = record.candidate.merge_spec(sft, aligned, out=out, extrapolate=record.extrapolate)
    if record.dtype:
        spec = spec.model_copy(update={"dtype": record.dtype})
    exported = {"results": str(results.resolve()), "candidate": record.candidate_id, "label": record.label,
                "inputs_verified": record.inputs is not None and not changed,
                "forced_despite": changed or None}
    return merge(spec, overwrite=overwrite, protect=[("results file", results)], provenance={"exported": exported})


def _changed_inputs(record: ResultRecord, sft: Path, aligned: Path) -> str | None:
    """What differs between the models now and when the candidate was measured (None: nothing, or unknown)."""
    if record.inputs is None:
        return None  # recorded before taxcut kept the inputs' identity: nothing to compare
    now = inputs_identity(sft, aligned)
    for role in ("sft", "aligned"):
        if now[role] != record.inputs.get(role):
            before = {tuple(f) for f in record.inputs.get(role) or []}
            differ = sorted({tuple(f)[0] for f in now[role]} ^ {f[0] for f in before}
                            | {tuple(f)[0] for f in now[role] if tuple(f) not in before})
            return f"the {role} model's weight files changed since ({', '.join(differ[:3]) or 'contents'})"
    return None
