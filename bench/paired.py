"""Paired against unpaired standard errors of neighbouring candidates' differences.

Candidates of a sweep answer the same prompts and questions and, with per-item sampling streams
(:mod:`taxcut.evaluation.item_sampling`), draw the same random numbers for the same (prompt, sample) item, so the
difference of two candidates' scores is best measured item by item. For each lab seed this runs the demo's
evaluation (reward of ``samples_per_prompt`` sampled responses, ``do_sample: true``, on each chat test prompt;
exact match on the capability tasks) on MA at a = 0, 0.1, ..., 1 as an ordinary sweep, then for every neighbouring
pair (a, a + 0.1), a = 0.0 .. 0.9, reads the per-item scores each result kept (``result.items``) and prints:

- **reward**: the difference of the mean rewards; its paired standard error (the per-item differences on the
  prompt x sample keys both saw, :func:`taxcut.evaluation.paired.paired_difference`) and the unpaired one,
  ``sqrt(se_a^2 + se_b^2)`` from each candidate's own recorded error;
- **tax**: the difference of the taxes (the mean over the T tasks of the score drop from the SFT model, so the SFT
  term cancels: the mean over tasks of the score difference); its paired error ``sqrt(sum_t se_t^2) / T`` with
  ``se_t`` the paired error of task t's per-item differences, and the unpaired one with
  ``se_t = sqrt(se_a,t^2 + se_b,t^2)`` from each candidate's recorded primary error;
- per axis, the median over the pairs of paired / unpaired (pairs whose unpaired error is 0 are left out).

Target: paired <= 0.5x unpaired, for reward and for tax.

``--step 0.05`` pairs closer neighbours (a and a + 0.05). ``--results FILE ...`` reads the MA results from sweeps
already run (e.g. the reference sweeps of ``bench/sweep_cost.py``, whose 21-point grid holds both steps) instead of
running the grid again: a setting per file, named by its folder.

    .venv/bin/python bench/paired.py                    # lab seed 0 (built and cached first)
    .venv/bin/python bench/paired.py --seeds 0 1 2
    .venv/bin/python bench/paired.py --real-model bench/.cache/real_model/full/sweep.yaml --seeds
    .venv/bin/python bench/paired.py --seeds --step 0.05 --results SWEEP_COST_OUT/*/reference/results.jsonl
    .venv/bin/python bench/paired.py --quick            # the quick lab: a smoke run, its figures mean nothing
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import yaml

from taxcut.evaluation.paired import ItemScores, paired_difference
from taxcut.evaluation.result import EvaluationResult
from taxcut.lab.build import LabConfig, build_lab
from taxcut.lab.demo import demo_sweep_spec
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.results import ResultsStore
from taxcut.sweep.runner import RESULTS_FILE, run_sweep

TARGET = 0.5


def ma_results(spec: SweepSpec, grid: list[float]) -> dict[float, EvaluationResult]:
    """The full-data result of MA at each a of ``grid``, by an ordinary sweep of ``spec``'s evaluation."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    data["candidates"] = {"grid": grid}
    report = run_sweep(SweepSpec.model_validate(data), progress=False)
    return results_from_file(report.out / RESULTS_FILE)


def results_from_file(path: Path) -> dict[float, EvaluationResult]:
    """The full-data MA results of a sweep's results file, by a (to 2 decimals)."""
    return {round(r.mean_alpha, 2): r.result for r in ResultsStore(path).records() if r.share >= 1.0 and r.kind == "MA"}


def _ratio(paired: float, unpaired: float) -> float:
    return paired / unpaired if unpaired > 0 and math.isfinite(paired) else math.nan


def reward_pair(a: EvaluationResult, b: EvaluationResult) -> tuple[float, float, float, int]:
    """(reward b - a, paired error, unpaired error, items both saw)."""
    if a.items is None or a.items.reward is None or b.items is None or b.items.reward is None:
        raise SystemExit("a result kept no per-item rewards: is the sweep's evaluation one that keeps them?")
    difference, paired, n = paired_difference(b.items.reward, a.items.reward)
    unpaired = math.hypot(a.reward.reward_stderr, b.reward.reward_stderr)
    return difference, paired, unpaired, n


def tax_pair(a: EvaluationResult, b: EvaluationResult) -> tuple[float, float, float, int]:
    """(tax b - tax a, paired error, unpaired error, tasks paired): tax b - tax a is the mean over tasks of
    a's score minus b's, in each task's direction."""
    tasks = sorted(set(a.primary) & set(b.primary))
    differences, paired, unpaired, counted = [], [], [], 0
    for task in tasks:
        sign = 1.0 if a.higher_is_better(task) else -1.0
        differences.append(sign * (a.primary[task] - b.primary[task]))
        own = math.hypot((a.primary_stderr or {}).get(task, 0.0), (b.primary_stderr or {}).get(task, 0.0))
        unpaired.append(own)
        items_a: ItemScores | None = a.items.tasks.get(task) if a.items else None
        items_b: ItemScores | None = b.items.tasks.get(task) if b.items else None
        if items_a is not None and items_b is not None:
            _, error, n = paired_difference(items_a, items_b)
            if n:
                paired.append(error)
                counted += 1
                continue
        paired.append(own)  # no per-item scores on both sides: the unpaired error stands
    return sum(differences) / len(tasks), _combined(paired), _combined(unpaired), counted


def _combined(errors: list[float]) -> float:
    """The error of a mean over tasks from each task's error: ``sqrt(sum se_t^2) / T``."""
    return math.sqrt(sum(e * e for e in errors)) / len(errors)


def report(setting: str, results: dict[float, EvaluationResult], step: float) -> dict[str, list[float]]:
    ratios: dict[str, list[float]] = {"reward": [], "tax": []}
    for a in sorted(results):
        b = round(a + step, 2)
        if b not in results:
            continue
        ra, rb = results[a], results[b]
        dr, pr, ur, n = reward_pair(ra, rb)
        dt, pt, ut, tasks = tax_pair(ra, rb)
        ratios["reward"].append(_ratio(pr, ur))
        ratios["tax"].append(_ratio(pt, ut))
        print(
            f"| {setting} | {a:.2f} -> {b:.2f} | {dr:+.4f} | {pr:.4f} | {ur:.4f} | {_ratio(pr, ur):.3f} | {n} | "
            f"{100 * dt:+.2f} | {100 * pt:.2f} | {100 * ut:.2f} | {_ratio(pt, ut):.3f} | {tasks} |",
            flush=True,
        )
    return ratios


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--quick", action="store_true", help="the quick lab (a smoke run)")
    parser.add_argument("--out", type=Path, help="where the sweeps go (default: a temporary folder)")
    parser.add_argument("--step", type=float, default=0.1, help="the neighbours' distance in a (0.1 or 0.05)")
    parser.add_argument("--results", type=Path, nargs="*", default=[], help="results files of sweeps already run")
    parser.add_argument("--real-model", type=Path, help="the sweep.yaml of bench/real_model.py's fixture")
    args = parser.parse_args()
    grid = [round(args.step * i, 2) for i in range(round(1 / args.step) + 1)]
    out = args.out or Path(tempfile.mkdtemp(prefix="taxcut-paired-"))
    print(
        "| setting | pair | reward diff | paired se | unpaired se | ratio | items | tax diff (points) | "
        "paired se | unpaired se | ratio | tasks paired |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    ratios: dict[str, list[float]] = {"reward": [], "tax": []}
    settings = []
    for seed in args.seeds:
        config = LabConfig.quick(seed) if args.quick else LabConfig(seed=seed)
        lab = build_lab(config, log=lambda *_: None)
        setting = f"lab{' quick' if args.quick else ''} seed {seed}"
        settings.append(
            (setting, lambda s=setting, lab=lab: ma_results(demo_sweep_spec(lab, out / s.replace(" ", "-")), grid))
        )
    if args.real_model is not None:
        data = yaml.safe_load(args.real_model.read_text())
        data.update(candidates={}, out=str(out / "real-model"))
        settings.append(("real model", lambda: ma_results(SweepSpec.model_validate(data), grid)))
    for path in args.results:
        settings.append((path.parent.parent.name or str(path), lambda path=path: results_from_file(path)))
    for setting, results in settings:
        for axis, values in report(setting, results(), args.step).items():
            ratios[axis] += values
    print(f"\nmedian paired / unpaired over {len(ratios['reward'])} neighbouring pairs (target <= {TARGET}x):")
    for axis, values in ratios.items():
        finite = [v for v in values if math.isfinite(v)] or [math.nan]
        median = _median(values)
        verdict = "no ratio" if math.isnan(median) else "meets" if median <= TARGET else "misses"
        print(
            f"  {axis}: {median:.3f}x ({verdict}; range {min(finite):.3f} .. {max(finite):.3f}, "
            f"{len(values) - len([v for v in values if math.isfinite(v)])} pairs without a ratio)"
        )
    print(f"sweeps in {out}")


if __name__ == "__main__":
    main()
