"""``taxcut sweep``: evaluate every candidate (resuming), then write the front, its tables and plot."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from taxcut.errors import TaxcutError
from taxcut.evaluation.loading import pick_device
from taxcut.evaluation.result import EvaluationResult
from taxcut.evaluation.suite import EvaluationSuite
from taxcut.execution import Executor, open_executor
from taxcut.hma.candidates import check_retain_set, hma_candidates
from taxcut.io.destination import claim_folder, staged_file
from taxcut.io.hub import as_recorded  # a Hub ID as written, a folder made absolute
from taxcut.io.provenance import weights_identity
from taxcut.io.publish import LockHeld, hold_lock, probe_lock
from taxcut.merging.plan import build_plan
from taxcut.spec.candidates import Candidate, expand_grid
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.candidate_work import CandidateBatches, CandidateEvaluation
from taxcut.sweep.cost import CostAccount
from taxcut.sweep.noise import NoisyPoint, noise_aware_front, paired_tax_stderr
from taxcut.sweep.pareto import pareto_front, parse_selection, select, tax
from taxcut.sweep.report import SweepRow, markdown_table, plot_front, write_csv
from taxcut.sweep.results import ResultRecord, ResultsStore
from taxcut.sweep.search import fits_search, search_candidates
from taxcut.sweep.strategy import (
    ResultsBook,
    StrategyReport,
    SweepStrategy,
    item_counts,
    measure_part,
    sweep_cost,
    uses_strategy,
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
    baseline to measure tax. This process alone writes the results folder, holding its lock
    (:data:`SWEEP_LOCK`) from before the first evaluation to the end: a second sweep to the same ``out`` is
    refused at once.

    Args:
        spec: the sweep: the two models, the candidates, the evaluation, the output folder ``out``.
        progress: show a progress bar (None: only on a terminal).
        executor: where candidates run; None opens (and closes) the one ``spec.executor`` names.

    Returns:
        The :class:`SweepReport`: a row per candidate with its reward and tax, the front, the selection, the
        cost; the reports (``candidates.csv``, ``candidates.md``, ``front.png``) are written in ``spec.out``.

    Raises:
        TaxcutError: bad input (a selection, a data file, a candidate's plan, a busy or linked destination),
            named in one line before any evaluation.
    """
    if spec.select:
        parse_selection(spec.select)  # a bad expression fails now, not after the whole sweep
    _refuse_if_running(spec.out)  # before any model or data is loaded (the lock below settles a race)
    _refuse_linked_reports(spec.out)
    with ExitStack() as opened:
        if executor is None:
            executor = opened.enter_context(open_executor(spec.executor))
        device = pick_device(spec.device) if not executor.remote else "cpu"  # remote workers load their own
        suite = EvaluationSuite.from_spec(spec.evaluation, device=device)  # bad data files fail before the rest
        if spec.candidates.hma is not None and spec.candidates.hma.retain is not None:
            check_retain_set(spec)  # disjoint from every evaluation item, before any work
        claim_folder(spec.out, inputs=sweep_inputs(spec), kind="sweep results", entries=list(SWEEP_FILES))
        with _sweep_lock(spec.out):
            _refuse_linked_reports(spec.out)  # again: made while the data loaded
            return SweepRun(spec, suite, executor, progress).run()


class SweepRun:
    """One sweep in its claimed and locked folder, as named steps (:meth:`run`). Its :class:`ResultsBook` is the
    one owner of the results: every evaluation is written through it, the strategies and the report read it."""

    def __init__(self, spec: SweepSpec, suite: EvaluationSuite, executor: Executor, progress: bool | None):
        self.spec, self.executor, self.progress = spec, executor, progress
        self.identity = inputs_identity(spec.sft, spec.aligned, full=spec.input_hashes == "full")
        self.book = ResultsBook(
            ResultsStore(spec.out / RESULTS_FILE),
            sweep_context(spec, suite),
            self.make_record,
            seed=spec.evaluation.halving.seed,
        )
        if self.book.stale:
            print(
                f"note: {spec.out / RESULTS_FILE} holds {self.book.stale} result(s) measured under other settings "
                "(the models' weights, the evaluation's data or settings, or the dtype differ); they are kept, "
                "not used, and those candidates are measured again",
                file=sys.stderr,
            )
        local = None if executor.remote else suite
        self.batches = CandidateBatches(executor, CandidateEvaluation(spec, suite=local))
        self.strategy = None  # the adaptive grid and/or successive halving (taxcut.sweep.strategy)
        if uses_strategy(spec):
            measured = CandidateBatches(executor, CandidateEvaluation(spec, measure=measure_part, suite=local))
            self.strategy = SweepStrategy(
                spec, self.book, measured, check=self.check_plans, progress=progress, items=item_counts(suite)
            )

    def run(self) -> SweepReport:
        """The grid (or the strategy's candidates), the fitted HMA candidates, the search; then the reports."""
        candidates = self.measure_grid()
        candidates += self.measure_hma()
        candidates += self.measure_search(candidates[0])
        return self.write_report(candidates)

    def make_record(self, candidate: Candidate, result: EvaluationResult, context: str) -> ResultRecord:
        return _record(self.spec, candidate, result, context, self.identity)

    def check_plans(self, candidates: Sequence[Candidate]) -> None:
        """Every plan from the headers first: a bad candidate fails before any work."""
        for candidate in candidates:
            if candidate.model is None:
                build_plan(
                    candidate.merge_spec(
                        self.spec.sft,
                        self.spec.aligned,
                        extrapolate=self.spec.extrapolate,
                        allow_tokenizer_mismatch=self.spec.allow_tokenizer_mismatch,
                    )
                ).close()

    def evaluate(self, candidates: list[Candidate]) -> Iterator[ResultRecord]:
        """Evaluate on the executor's workers; record each result as it arrives."""
        for candidate, result in self.batches(candidates):
            yield self.book.add_result(candidate, result)

    def measure(self, candidates: list[Candidate]) -> None:
        """The candidates without a result yet: through the strategy, or each in full under a progress bar."""
        if self.strategy is not None:
            self.strategy.measure(candidates)
            return
        todo = [c for c in candidates if c.id not in self.book.latest]
        self.check_plans(todo)
        with tqdm(
            total=len(todo),
            desc="sweep",
            unit="candidate",
            disable=None if self.progress is None else not self.progress,
        ) as bar:
            for record in self.evaluate(todo):
                bar.set_postfix_str(record.label)
                bar.update()

    def measure_grid(self) -> list[Candidate]:
        """The grid, or the candidates the strategy chose and measured."""
        if self.strategy is not None:
            return self.strategy.run()
        candidates = expand_grid(self.spec.candidates)
        self.measure(candidates)
        return candidates

    def measure_hma(self) -> list[Candidate]:
        """The fitted HMA candidates (under the adaptive grid they are a family of its own)."""
        if self.spec.candidates.hma is None or (self.strategy is not None and self.strategy.adaptive):
            return []
        fitted = hma_candidates(self.spec, log=lambda *_: None, executor=self.executor)
        self.measure(fitted)
        return fitted

    def measure_search(self, baseline: Candidate) -> list[Candidate]:
        """The black-box search's proposals, resumed from its earlier records; ``baseline``: the SFT model."""
        if self.spec.search is None:
            return []
        latest = self.book.latest
        done = [r for r in latest.values() if fits_search(r.candidate, self.spec.search)]
        return search_candidates(
            self.spec.search, done, latest[baseline.id], self.evaluate, batch=self.executor.workers
        )

    def write_report(self, candidates: list[Candidate]) -> SweepReport:
        """The spec, the tables and the plot in the folder; the report with its cost and selection."""
        spec, book = self.spec, self.book
        _write_report_file(spec.out / "sweep.yaml", lambda path: path.write_text(spec.to_yaml()))
        report = summarize(list(book.latest.values()), book.context, candidates, spec.out)
        report.cost = sweep_cost(candidates, book.latest, book if self.strategy is not None else None)
        report.strategy = self.strategy.report if self.strategy is not None else None
        if spec.select:
            report.selected = select(report.rows, spec.select)
        return report


# The lock a running sweep holds inside its folder (a taxcut lock file: claim_folder ignores it, and a killed
# sweep's is removed by the next writer there, once free).
SWEEP_LOCK = ".sweep-writer.taxcut-lock"
REPORT_FILES = ("sweep.yaml", "candidates.csv", "candidates.md", "front.png")


def _refuse_if_running(out: Path) -> None:
    """Refuse at once while another sweep holds ``out``'s lock (reads only: ``out`` may not be checked yet)."""
    try:
        probe_lock(Path(out) / SWEEP_LOCK)
    except LockHeld as held:
        raise TaxcutError(_running_message(out, held)) from None
    except OSError:
        pass  # an unreadable folder, a file there: claiming the folder says what is wrong


def _sweep_lock(out: Path) -> ExitStack:
    """Hold ``out``'s lock (:data:`SWEEP_LOCK`) until the returned stack closes; refuse if another sweep holds it."""
    path = Path(os.path.realpath(out)) / SWEEP_LOCK
    stack = ExitStack()
    try:
        stack.enter_context(hold_lock(path))
    except LockHeld as held:
        raise TaxcutError(_running_message(out, held)) from None
    except OSError as exc:
        raise TaxcutError(
            f"{path}: cannot lock the results folder ({exc.strerror or exc}); choose another destination"
        ) from None
    return stack


def _running_message(out: Path, held: LockHeld) -> str:
    who = f" ({held.holder})" if held.holder else ""
    return f"{out}: another sweep{who} is writing there; wait for it to finish, or give this sweep another 'out'"


def _refuse_linked_reports(out: Path) -> None:
    """Refuse, before any work, a report name in the folder that is a symbolic link (it is never followed)."""
    for name in REPORT_FILES:
        _refuse_link(Path(out) / name)


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        dangling = "" if path.exists() else " (a dangling one)"
        raise TaxcutError(
            f"{path}: is a symbolic link{dangling}, and taxcut writes a sweep's reports only as "
            "files of its own, never through a link; remove it"
        )


def sweep_context(spec: SweepSpec, suite: EvaluationSuite) -> str:
    """What results depend on besides the candidate: the two models, the evaluation and the compute dtype."""
    models = [weights_identity(folder) for folder in (spec.sft, spec.aligned)]
    payload = json.dumps(
        {"models": models, "evaluation": suite.fingerprint(), "dtype": spec.dtype, "extrapolate": spec.extrapolate},
        sort_keys=True,
    )
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
    rows = [
        _row(candidate, latest[candidate.id].result, latest[candidate.id].mean_alpha, baseline.result)
        for candidate in candidates
        if candidate.id in latest
    ]
    for row, on_front in zip(rows, pareto_front([(r.reward, r.tax) for r in rows])):
        row.pareto = on_front
    points = [_noisy_point(r, latest[r.id].result, baseline.result) for r in rows]
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
    if spec.candidates.mergekit is not None:
        found.append(("mergekit config", spec.candidates.mergekit.config))
    if spec.candidates.hma is not None:
        found.append(("HMA fit set", spec.candidates.hma.data))
        found.append(("HMA retain set", spec.candidates.hma.retain))
    return found


def _write_report_file(path: Path, write) -> None:
    """A report file, replaced atomically (the sweep's folder is claimed: these names are the sweep's own); a
    symbolic link there is refused, not followed to wherever it points."""
    _refuse_link(path)
    with staged_file(path, overwrite=True, inputs=[], kind="sweep report") as partial:
        write(partial)


def inputs_identity(sft: Path, aligned: Path, *, full: bool = False, cached: bool = True) -> dict:
    """The two models' weight and side files as a result records them (see ``weights_identity``; JSON-shaped, so
    records compare equal); ``full``: with each weight file's whole-file SHA-256 too."""
    models = {
        role: weights_identity(folder, full=full, cached=cached)
        for role, folder in (("sft", sft), ("aligned", aligned))
    }
    return json.loads(json.dumps(models))


def _row(
    candidate: Candidate, result: EvaluationResult, mean_alpha: float | None, baseline: EvaluationResult
) -> SweepRow:
    reward = result.reward
    return SweepRow(
        id=candidate.id,
        label=candidate.label,
        kind=candidate.kind,
        mean_alpha=mean_alpha,
        reward=reward.reward if reward else math.nan,
        reward_stderr=reward.reward_stderr if reward else math.nan,
        tax=tax(result.primary, baseline.primary, result.directions),
        primary=result.primary,
        scores=result.tasks,
        tax_stderr=_tax_error(result, baseline),
        primary_stderr=result.primary_stderr or {},
    )


def _noisy_point(row: SweepRow, result: EvaluationResult, baseline: EvaluationResult) -> NoisyPoint:
    """A row's point with the per-item scores that pair its comparisons (:mod:`taxcut.sweep.noise`)."""
    return NoisyPoint(
        row.reward,
        row.tax,
        row.reward_stderr,
        row.tax_stderr,
        items=result.items,
        baseline=baseline.items,
        tasks=tuple(t for t in result.primary if t in baseline.primary),
    )


def _tax_error(result: EvaluationResult, baseline: EvaluationResult) -> float:
    """The tax's standard error, paired with the SFT model's per-item scores where both kept them
    (:func:`taxcut.sweep.noise.paired_tax_stderr`); NaN for a result that recorded no errors."""
    if result.primary_stderr is None:
        return math.nan
    return paired_tax_stderr(
        result.primary_stderr,
        [t for t in result.primary if t in baseline.primary],
        result.items.tasks if result.items else {},
        baseline.items.tasks if baseline.items else {},
    )


def _record(
    spec: SweepSpec, candidate: Candidate, result: EvaluationResult, context: str, identity: dict | None = None
) -> ResultRecord:
    return ResultRecord(
        candidate_id=candidate.id,
        candidate=candidate,
        result=result,
        mean_alpha=candidate.mean_alpha,
        sft=str(as_recorded(spec.sft)),
        aligned=str(as_recorded(spec.aligned)),
        context=context,
        extrapolate=spec.extrapolate,
        dtype=spec.dtype,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        taxcut_version=__version__,
        inputs=identity,
        allow_tokenizer_mismatch=spec.allow_tokenizer_mismatch,
    )


def export_candidate(
    results: Path, candidate_id: str, out: Path, *, overwrite: bool = False, force: bool = False, verify: str = "sample"
) -> Path:
    """Write a swept candidate as a model folder through the merge engine (the weights it was evaluated with).

    ``results`` is a results file or the sweep's output folder. The input models must be the ones the candidate
    was measured on: their weight files' sampled content hashes and their side files' hashes (``verify="full"``:
    the weight files' whole-file SHA-256 too, which the sweep records under ``input_hashes: full``). Otherwise,
    or when the line holds nothing to check against, the export is refused, unless ``force``, which the
    provenance file then records.
    """
    results = results / RESULTS_FILE if results.is_dir() else results
    from taxcut import merge  # the public merge entry point sits above the sweep's modules

    number, record = ResultsStore(results).locate(candidate_id)
    where = f"{results}, line {number}: candidate {record.candidate_id} ({record.label})"
    sft, aligned = Path(record.sft), Path(record.aligned)
    unchecked = _unchecked_inputs(record)
    if unchecked is None and verify == "full" and not _has_full_hashes(record.inputs):
        raise TaxcutError(
            f"{where}: the sweep recorded sampled hashes of its inputs only, so --verify full has "
            "nothing to compare with; rerun the sweep with 'input_hashes: full', or export with "
            "--verify sample"
        )
    changed = None if unchecked else _changed_inputs(record, sft, aligned, full=verify == "full")
    if unchecked and not force:
        raise TaxcutError(
            f"{where}: {unchecked}, so its scores cannot be checked against today's weights; rerun "
            "the sweep, or pass --force to export today's weights under those scores"
        )
    if changed and not force:
        raise TaxcutError(
            f"{where}: was measured on other inputs: {changed}; rerun the sweep, or pass --force to "
            "export today's weights under those scores"
        )
    if unchecked:
        print(
            f"taxcut: warning: {where}: its scores cannot be checked against today's weights ({unchecked}); "
            "exporting it as --force asks",
            file=sys.stderr,
        )
    spec = record.candidate.merge_spec(
        sft, aligned, out=out, extrapolate=record.extrapolate, allow_tokenizer_mismatch=record.allow_tokenizer_mismatch
    )  # as swept
    if record.dtype and record.candidate.mergekit is None:  # a mergekit config keeps its own dtypes, as `merge`
        spec = spec.model_copy(update={"dtype": record.dtype})
    exported = {
        "results": str(results.resolve()),
        "line": number,
        "candidate": record.candidate_id,
        "label": record.label,
        "inputs_verified": not (unchecked or changed),
        "verified_by": None if unchecked or changed else verify,
        "forced_despite": unchecked or changed,
        **({"allow_tokenizer_mismatch": True} if record.allow_tokenizer_mismatch else {}),
    }
    return merge(spec, overwrite=overwrite, protect=[("results file", results)], provenance={"exported": exported})


def _unchecked_inputs(record: ResultRecord) -> str | None:
    """Why the line's inputs cannot be compared with today's (None: they can)."""
    if record.inputs is None:
        return "its line does not record the inputs it was measured on"
    entries = [entry for role in ("sft", "aligned") for entry in record.inputs.get(role) or [None]]
    if not all(isinstance(entry, dict) for entry in entries):
        return "its line records its inputs by file times only (an older taxcut)"
    return None


def _has_full_hashes(inputs: dict) -> bool:
    return all("sha256" in entry for role in ("sft", "aligned") for entry in inputs[role] if "sample_sha256" in entry)


def _changed_inputs(record: ResultRecord, sft: Path, aligned: Path, *, full: bool = False) -> str | None:
    """Which files differ between the models now and when the candidate was measured (None: none). Only what the
    comparison asks for counts: sampled hashes of weight files, or (``full``) their whole-file hashes too."""
    now = inputs_identity(sft, aligned, full=full, cached=False)  # read today, not remembered from earlier
    for role in ("sft", "aligned"):
        before, after = _by_file(record.inputs[role], full), _by_file(now[role], full)
        differ = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
        if differ:
            more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
            return f"the {role} model's {', '.join(differ[:3])}{more} changed since"
    return None


def _by_file(identity: list[dict], full: bool) -> dict[str, dict]:
    """A model's identity entries by the file they describe (a Hub model's commit as 'Hub commit')."""
    named = {}
    for entry in identity:
        if "sample_sha256" in entry and not full:
            entry = {key: value for key, value in entry.items() if key != "sha256"}
        named[entry.get("file") or ("Hub commit" if "hub" in entry else "base model's Hub commit")] = entry
    return named
