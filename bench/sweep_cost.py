"""Evaluation spent per front (target: bench/README.md): the adaptive grid and successive halving
against the default grid, by hypervolume and by cost.

For each lab seed (and, with ``--real-model``, the real-model fixture of ``bench/real_model.py``):

- **reference**: the 21-point MA grid (a = 0, 0.05, ..., 1) plus the demo's block profiles, each evaluated in full;
- **default**: the default 11-point grid (a = 0, 0.1, ..., 1) plus the same profiles, in full;
- **adaptive B**: ``candidates: {strategy: adaptive, budget: B}`` with the profiles as families, in full;
- **adaptive+halving B**: the same with ``evaluation: {fidelity: halving}`` as it comes (the budget counts full
  evaluations, so what halving saves buys more candidates; a candidate whose best case adds less than 1% of the
  front's hypervolume is dropped);
- **adaptive+halving B tolerance T**: the same with ``evaluation.halving.tolerance: T`` (by default the row for 0:
  halving that drops only what is dominated beyond the noise).

Each strategy runs as an ordinary ``taxcut sweep`` in a folder of its own (nothing is shared, every cost is
measured). The default grid's candidates are all in the reference, whose results are the same seeded evaluation,
so by default its front and cost are read from the reference's results (``--run-default`` runs it apart).

- **hypervolume** (:func:`taxcut.sweep.noise.hypervolume`) of a strategy's front of full-data results, over the
  reference's; the reference point is the nadir of the reference sweep (its lowest reward, its highest tax) moved
  out by 10% of each axis' range, the same for every strategy of a seed;
- **cost**: the tokens (generated + scored) of every evaluation a strategy spent, halving's dropped stages
  included (:mod:`taxcut.sweep.cost`), over the default grid's. Results record seconds too, but the sweeps of one
  seed run one after another on a shared machine, so their seconds are not compared here.
- **best subset**: for comparison, the hypervolume of the best choice of as many of the reference's own
  candidates (the SFT model among them) as the strategy measured in full -- what an oracle that knew the
  reference's results could reach at that count.

Target: within 2% of the reference hypervolume at no more than 40% of the default grid's cost.

    .venv/bin/python bench/sweep_cost.py                       # lab seeds 0 1 2 (the labs are built and cached first)
    .venv/bin/python bench/sweep_cost.py --quick --seeds 0     # the quick lab: a smoke run in a minute or two
    .venv/bin/python bench/sweep_cost.py --real-model bench/.cache/real_model/quick/sweep.yaml --seeds
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import yaml

from taxcut.lab.build import LabConfig, build_lab
from taxcut.lab.demo import BLOCK_PROFILES, demo_sweep_spec
from taxcut.spec.candidates import DEFAULT_GRID
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.noise import hypervolume
from taxcut.sweep.results import ResultsStore
from taxcut.sweep.runner import RESULTS_FILE, SweepReport, run_sweep
from taxcut.sweep.strategy import sweep_cost

REFERENCE_GRID = [round(0.05 * i, 2) for i in range(21)]
TARGET_HYPERVOLUME, TARGET_COST = 0.98, 0.40
MAX_SUBSET = 9  # the best-subset bound is exhaustive: up to this many candidates


def strategies(base: SweepSpec, budgets: list[int], tolerances: list[float]) -> dict[str, SweepSpec]:
    """The sweeps to compare, on ``base``'s models and evaluation."""

    def variant(candidates: dict, fidelity: str = "full", tolerance: float | None = None) -> SweepSpec:
        data = base.model_dump(mode="json", exclude_defaults=True)
        data["candidates"] = {"block_patterns": BLOCK_PROFILES, **candidates}
        data["evaluation"]["fidelity"] = fidelity
        if tolerance is not None:
            data["evaluation"]["halving"] = {"tolerance": tolerance}
        return SweepSpec.model_validate(data)

    specs = {"reference": variant({"grid": REFERENCE_GRID}), "default": variant({"grid": DEFAULT_GRID})}
    for budget in budgets:
        adaptive = {"strategy": "adaptive", "budget": budget}
        specs[f"adaptive {budget}"] = variant(adaptive)
        specs[f"adaptive+halving {budget}"] = variant(adaptive, "halving")
        for tolerance in tolerances:
            specs[f"adaptive+halving {budget} tolerance {tolerance:g}"] = variant(adaptive, "halving", tolerance)
    return specs


def measure(name: str, spec: SweepSpec, out: Path) -> SweepReport:
    return run_sweep(spec.model_copy(update={"out": out / name.replace(" ", "-")}), progress=False)


def front_points(report: SweepReport) -> list[tuple[float, float]]:
    return [(row.reward, row.tax) for row in report.rows]


def reference_point(points: list[tuple[float, float]]) -> tuple[float, float]:
    rewards, taxes = [r for r, _ in points], [t for _, t in points]
    return (min(rewards) - 0.1 * (max(rewards) - min(rewards)), max(taxes) + 0.1 * (max(taxes) - min(taxes)))


def default_from_reference(reference: SweepReport, spec: SweepSpec, out: Path) -> SweepReport:
    """The default grid's rows and cost, read from the reference's results (the same seeded evaluations)."""
    from taxcut.spec.candidates import expand_grid

    ids = [c.id for c in expand_grid(spec.candidates)]
    rows = [row for row in reference.rows if row.id in ids]
    records = ResultsStore(reference.out / RESULTS_FILE).records()
    latest = {r.candidate_id: r for r in records if r.share >= 1.0}
    report = SweepReport(rows, out / "default")
    report.cost = sweep_cost([c for c in expand_grid(spec.candidates)], latest)
    return report


def best_subset(
    points: dict[str, tuple[float, float]], baseline: str, count: int, reference: tuple[float, float]
) -> float:
    """The largest hypervolume of ``count`` of ``points``, ``baseline`` among them (exhaustive)."""
    others = [p for key, p in points.items() if key != baseline]
    if count - 1 >= len(others):
        return hypervolume(points.values(), reference)
    return max(
        hypervolume([points[baseline], *chosen], reference) for chosen in itertools.combinations(others, count - 1)
    )


def compare(
    setting: str,
    base: SweepSpec,
    out: Path,
    budgets: list[int],
    tolerances: list[float],
    run_default: bool,
    only: list[str] | None = None,
) -> list[str]:
    specs = strategies(base, budgets, tolerances)
    if only:
        specs = {name: spec for name, spec in specs.items() if name in ("reference", "default", *only)}
    reports = {}
    for name, spec in specs.items():
        if name == "default" and not run_default:
            reports[name] = default_from_reference(reports["reference"], spec, out)
            continue
        reports[name] = measure(name, spec, out)
    reference = reports["reference"]
    point = reference_point(front_points(reference))
    full_hv = hypervolume(front_points(reference), point)
    default_cost = reports["default"].cost
    if full_hv <= 0:
        return [f"| {setting} | (no front: the reference's points do not span both axes) | | | | | | | |"]
    reference_points = {row.id: (row.reward, row.tax) for row in reference.rows}
    lines = []
    for name, report in reports.items():
        ratio = hypervolume(front_points(report), point) / full_hv
        cost = report.cost.spent.tokens / default_cost.spent.tokens
        dropped = len(report.strategy.dropped) if report.strategy is not None else 0
        meets = ratio >= TARGET_HYPERVOLUME and cost <= TARGET_COST
        verdict = "" if name in ("reference", "default") else ("meets" if meets else "misses")
        oracle = ""
        if len(report.rows) <= MAX_SUBSET:
            best = best_subset(reference_points, reference.rows[0].id, len(report.rows), point)
            oracle = f"{best / full_hv:.4f}"
        lines.append(
            f"| {setting} | {name} | {len(report.rows)} | {dropped} | {ratio:.4f} | {oracle} | "
            f"{cost:.3f} | {report.cost.spent.tokens:,} | {verdict} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="the quick lab (a smoke run)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[6, 8], help="the adaptive grid's budgets")
    parser.add_argument(
        "--tolerances",
        type=float,
        nargs="*",
        default=[0.0],
        help="other tolerances of halving to add rows for (evaluation.halving.tolerance; "
        "0: drop only what is dominated beyond the noise)",
    )
    parser.add_argument("--only", nargs="*", help="run only these strategies (and the reference)")
    parser.add_argument("--real-model", type=Path, help="the sweep.yaml of bench/real_model.py's fixture")
    parser.add_argument("--run-default", action="store_true", help="run the default grid apart")
    parser.add_argument("--out", type=Path, help="where the sweeps go (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="taxcut-sweep-cost-"))
    header = [
        (
            "| setting | strategy | full-data candidates | dropped early | hypervolume / reference | "
            "best subset of as many | tokens / default | tokens | target |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    settings = []
    for seed in args.seeds:
        config = LabConfig.quick(seed) if args.quick else LabConfig(seed=seed)
        lab = build_lab(config, log=lambda *_: None)
        settings.append((f"lab{' quick' if args.quick else ''} seed {seed}", demo_sweep_spec(lab, out)))
    if args.real_model is not None:
        data = yaml.safe_load(args.real_model.read_text())
        data.pop("candidates", None)
        settings.append(("real model", SweepSpec.model_validate(data)))
    for setting, base in settings:
        folder = out / setting.replace(" ", "-")
        rows = compare(setting, base, folder, args.budgets, args.tolerances, args.run_default, args.only)
        print("\n".join(rows), flush=True)
    print(f"\nreference point: the reference sweep's nadir moved out by 10% of each range; sweeps in {out}")


if __name__ == "__main__":
    main()
