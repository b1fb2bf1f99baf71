"""Which family of candidates gives the best front for its cost: MA, the paper's HMA, taxcut's HMA, a hand-set block
profile, LiNeS depth profiles, the tax-aware fit and the black-box search, on the lab and on the real model.

For each setting (lab seeds, and with ``--real-model`` the fixture of ``bench/real_model.py``) every family runs as
an ordinary sweep into one results folder (so the SFT and aligned models and any candidate two families share are
measured once), under the demo's evaluation on the lab (sampled reward, 200 prompts x 2; exact match on three
capability tasks) or the fixture's own. Families (``--families`` picks some):

- **MA**: a = 0, 0.1, ..., 1.
- **MA paper scope**: a in A, Linear weights only (embeddings and norms from SFT), no learning; it comes with
- **HMA paper**: ``preset: paper`` at a in A (Lin et al., EMNLP 2024, arXiv 2309.06256).
- **HMA taxcut**: taxcut's fit defaults at a in A.
- **profile**: the hand-set block profile [0.5, 0.7, 0.9] scaled to mean a in A (where it stays <= 1).
- **LiNeS grid**: depth profiles ``a_l = alpha + beta l / (L - 1)`` (Wang et al., ICLR 2025, arXiv 2410.17146),
  alpha in 0, 0.2, 0.4, 0.6 and beta in 0.2, 0.4, ..., 1.
- **LiNeS 5**: five depth profiles chosen on lab seed 0 (:data:`LINES_FIVE`): what a user would run first.
- **tax-aware fit**: HMA with the retention term (``hma.retain``, ``retain_weights``): per-block and per-layer
  ratios, the mean held at a (a in 0.5, 0.7, 0.9; W in 0.3, 3) or free (W in 0.03 .. 10).
- **search blocks** / **search profile**: NSGA-II over the 3 block ratios / over (alpha, beta), 16 proposals each.

A = 0.4, 0.6, 0.8 for the fitted families (the paper's range).

Printed per setting: each family's **hypervolume relative to MA's** (one reference point per setting: the lowest
reward and the highest tax measured there moved out by 5% of each range; the SFT and aligned models added to every
family, since any method can give them), with its **90% paired-bootstrap interval**: every candidate's reward and
tax are recomputed from its per-item scores on one resample of the prompts (x samples) and of each task's items,
the same resample for every candidate (Koehn 2004's paired bootstrap), 200 times; a family is beyond the noise
against MA when its interval excludes 1. The **cost**: full evaluations (SFT and aligned not counted), and the
family's other seconds (fits, search overhead) as a share of one evaluation's mean seconds. Then every family's
front (its non-dominated points) with error bars, and, per family, its hypervolume against the 16-proposal block
search's with the same paired interval.

Targets (bench/README.md): the best family that is not a search reaches >= 1.05x MA's hypervolume on every lab seed and
>= 1.0x on the real model, and at least the block search's hypervolume with at most a third of its evaluations.

    .venv/bin/python bench/fronts.py                              # lab seeds 0 1 2
    .venv/bin/python bench/fronts.py --seeds 0 --families MA "LiNeS grid"
    .venv/bin/python bench/fronts.py --seeds --real-model bench/.cache/real_model/full/sweep.yaml
    .venv/bin/python bench/fronts.py --quick --seeds 0            # the quick lab: checks the script only

Everything is kept in ``--work`` (default: a new temporary folder): a second run reuses the results.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from taxcut.evaluation.result import EvaluationResult
from taxcut.lab.build import LabConfig, build_lab
from taxcut.lab.demo import demo_sweep_spec
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.noise import hypervolume
from taxcut.sweep.pareto import tax
from taxcut.sweep.report import SweepRow
from taxcut.sweep.results import ResultsStore
from taxcut.sweep.runner import RESULTS_FILE, run_sweep

A = [0.4, 0.6, 0.8]
PROFILE = [0.5, 0.7, 0.9]
LINES_GRID = {"alpha": [0.0, 0.2, 0.4, 0.6], "beta": [0.2, 0.4, 0.6, 0.8, 1.0]}
LINES_FIVE = [[0.0, 0.6], [0.0, 1.0], [0.2, 1.0], [0.4, 1.0], [0.6, 0.6]]  # the front of a 12-point grid, seed 0
RETAIN_FREE = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
RETAIN_FIXED = [0.3, 3.0]
SEARCH_BUDGET = 16
RESAMPLES, INTERVAL = 200, 0.90


@dataclass
class Family:
    """A family: the sweep that measures it (``candidates``, ``search``) and the kinds of row that are its own."""

    name: str
    candidates: dict = field(default_factory=dict)
    search: dict | None = None
    kinds: tuple[str, ...] = ()
    needs: str = ""  # "fit" (a fit set) or "retain" (a retain set too)


def families(fit_set: str, retain: str | None, seed: int) -> list[Family]:
    hma = {"data": fit_set, "mean_alphas": A}
    profiles = [[round(p * a / 0.7, 4) for p in PROFILE] for a in A if max(PROFILE) * a / 0.7 <= 1]
    found = [
        Family("MA", {"grid": [round(0.1 * i, 1) for i in range(11)]}, kinds=("MA",)),
        Family("HMA paper", {"hma": {**hma, "preset": "paper"}}, kinds=("HMA",), needs="fit"),
        Family("MA paper scope", {"hma": {**hma, "preset": "paper"}}, kinds=("scoped-MA",), needs="fit"),
        Family("HMA taxcut", {"hma": hma}, kinds=("HMA",), needs="fit"),
        Family("profile", {"block_patterns": profiles}, kinds=("blocks",)),
        Family("LiNeS grid", {"profile_grid": LINES_GRID}, kinds=("LiNeS",)),
        Family("LiNeS 5", {"profiles": LINES_FIVE}, kinds=("LiNeS",)),
        Family("search blocks", search={"budget": SEARCH_BUDGET, "seed": seed}, kinds=("search",)),
        Family(
            "search profile",
            search={"budget": SEARCH_BUDGET, "seed": seed, "space": "profile"},
            kinds=("search", "LiNeS"),
        ),
    ]
    for granularity in ("block", "layer"):
        free = {
            "data": fit_set,
            "retain": retain,
            "retain_weights": RETAIN_FREE,
            "granularity": granularity,
            "mean": "free",
            "mean_alphas": [0.5],
        }
        fixed = {
            "data": fit_set,
            "retain": retain,
            "retain_weights": RETAIN_FIXED,
            "granularity": granularity,
            "mean_alphas": [0.5, 0.7, 0.9],
        }
        found.append(Family(f"tax-aware {granularity} free", {"hma": free}, kinds=("HMA",), needs="retain"))
        found.append(Family(f"tax-aware {granularity} fixed", {"hma": fixed}, kinds=("HMA",), needs="retain"))
    return found


@dataclass
class Measured:
    rows: list[SweepRow]
    evaluations: int
    other_seconds: float


def run_family(base: dict, family: Family, folder: Path) -> Measured:
    """The family's sweep in the shared folder: its rows, its evaluations, and the seconds not spent evaluating."""
    data = {**base, "out": str(folder), "candidates": {**family.candidates}}
    if family.search:
        data["search"] = family.search
    results = folder / RESULTS_FILE
    before = len(ResultsStore(results).records()) if results.is_file() else 0
    started = time.perf_counter()
    report = run_sweep(SweepSpec.model_validate(data), progress=False)
    wall = time.perf_counter() - started
    new = ResultsStore(results).records()[before:]
    evaluating = sum(r.result.seconds or 0.0 for r in new)
    rows = [r for r in report.rows if r.kind in family.kinds]
    return Measured(rows, len(rows), max(0.0, wall - evaluating) if new else math.nan)


class Resampler:
    """Every candidate's reward and tax on one paired resample of the items (the same for every candidate)."""

    def __init__(self, results: dict[str, EvaluationResult], baseline: str):
        self.results, self.baseline = results, results[baseline]
        first = next(iter(results.values()))
        self.reward_keys = list(first.items.reward.items) if first.items and first.items.reward else []
        self.task_keys = {
            name: list(scores.items) for name, scores in (first.items.tasks.items() if first.items else [])
        }

    def draw(self, generator: random.Random | None) -> dict[str, tuple[float, float]]:
        picks = {name: self._pick(keys, generator) for name, keys in self.task_keys.items()}
        rewards = self._pick(self.reward_keys, generator)
        base = self._primary(self.baseline, picks)
        return {
            cid: (self._reward(result, rewards), tax(self._primary(result, picks), base, result.directions))
            for cid, result in self.results.items()
        }

    @staticmethod
    def _pick(keys: list[int], generator: random.Random | None) -> list[int]:
        return keys if generator is None else [keys[generator.randrange(len(keys))] for _ in keys]

    @staticmethod
    def _reward(result: EvaluationResult, keys: list[int]) -> float:
        if not keys or result.items is None or result.items.reward is None:
            return result.reward.reward if result.reward else math.nan
        scores = result.items.reward.as_dict()
        return sum(scores[k] for k in keys) / len(keys) if all(k in scores for k in keys) else result.reward.reward

    @staticmethod
    def _primary(result: EvaluationResult, picks: dict[str, list[int]]) -> dict[str, float]:
        primary = dict(result.primary)
        for name, keys in picks.items():
            scores = result.items.tasks.get(name) if result.items else None
            if scores is not None and name in primary and keys:
                values = scores.as_dict()
                if all(k in values for k in keys):
                    primary[name] = sum(values[k] for k in keys) / len(keys)
        return primary


def volumes(
    points: dict[str, tuple[float, float]],
    members: dict[str, list[str]],
    frame: list[str],
    reference: tuple[float, float],
) -> dict[str, float]:
    return {
        name: hypervolume([points[c] for c in [*ids, *frame] if c in points], reference)
        for name, ids in members.items()
    }


def reference_point(points: list[tuple[float, float]]) -> tuple[float, float]:
    rewards, taxes = [r for r, _ in points], [t for _, t in points]
    return (min(rewards) - 0.05 * (max(rewards) - min(rewards)), max(taxes) + 0.05 * (max(taxes) - min(taxes)))


def interval(values: list[float]) -> tuple[float, float]:
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return math.nan, math.nan
    low = finite[int((1 - INTERVAL) / 2 * (len(finite) - 1))]
    high = finite[int((1 + INTERVAL) / 2 * (len(finite) - 1))]
    return low, high


def report(setting: str, measured: dict[str, Measured], folder: Path) -> dict[str, float]:
    latest = {r.candidate_id: r for r in ResultsStore(folder / RESULTS_FILE).records() if r.share >= 1.0}
    ma_rows = measured["MA"].rows
    sft = next(r.id for r in ma_rows if r.mean_alpha == 0.0)
    aligned = next(r.id for r in ma_rows if r.mean_alpha == 1.0)
    members = {name: [r.id for r in m.rows] for name, m in measured.items()}
    every = {cid for ids in members.values() for cid in ids} | {sft, aligned}
    resampler = Resampler({cid: latest[cid].result for cid in every}, sft)
    points = resampler.draw(None)
    reference = reference_point(list(points.values()))
    frame = [sft, aligned]
    observed = volumes(points, members, frame, reference)
    generator = random.Random(0)
    draws = [volumes(resampler.draw(generator), members, frame, reference) for _ in range(RESAMPLES)]
    seconds = statistics.mean(r.result.seconds for r in latest.values() if r.result.seconds) or math.nan
    print(f"\n## {setting}\n")
    print(
        f"reference point: reward {reference[0]:+.3f}, tax {100 * reference[1]:.1f} points; one evaluation "
        f"{seconds:.1f} s on average; intervals: {INTERVAL:.0%} paired bootstrap, {RESAMPLES} resamples\n"
    )
    print(
        "| family | points | hypervolume / MA | interval | beyond the noise | vs search blocks | interval | "
        "evaluations | other seconds / evaluation |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = {}
    for name, m in measured.items():
        ratio = _over(observed[name], observed["MA"])
        low, high = interval([d[name] / d["MA"] for d in draws if d["MA"] > 0])
        verdict = "above" if low > 1 else "below" if high < 1 else "no"
        versus, (vlow, vhigh) = "—", (math.nan, math.nan)
        if "search blocks" in observed and observed["search blocks"] > 0:
            versus = f"{observed[name] / observed['search blocks']:.3f}"
            vlow, vhigh = interval([d[name] / d["search blocks"] for d in draws if d["search blocks"] > 0])
        ratios[name] = ratio
        print(
            f"| {name} | {len(m.rows)} | {ratio:.3f} | {low:.3f} .. {high:.3f} | {verdict} | {versus} | "
            f"{vlow:.3f} .. {vhigh:.3f} | {len(set(members[name]) - set(frame))} | "
            f"{m.other_seconds / seconds:.2f} |"
        )
    print("\nEach family's front (its points that no other point of the family dominates):\n")
    print("| family | candidate | reward | tax (points) |")
    print("|---|---|---|---|")
    for name, m in measured.items():
        for row in _front(m.rows):
            print(
                f"| {name} | {row.label} | {row.reward:+.3f} ± {row.reward_stderr:.3f} | "
                f"{100 * row.tax:.1f} ± {100 * row.tax_stderr:.1f} |"
            )
    return ratios


def _over(value: float, of: float) -> float:
    return value / of if of > 0 else math.nan


def non_dominated(points: dict[str, tuple[float, float]]) -> list[str]:
    """The keys of the points (reward up, tax down) that no other point dominates, by tax."""
    return sorted(
        (
            k
            for k, (r, t) in points.items()
            if not any(o[0] >= r and o[1] <= t and o != (r, t) for o in points.values())
        ),
        key=lambda k: points[k][1],
    )


def _front(rows: list[SweepRow]) -> list[SweepRow]:
    by_id = {r.id: r for r in rows}
    return [by_id[k] for k in non_dominated({r.id: (r.reward, r.tax) for r in rows})]


Setting = tuple[str, int, dict, Callable[[], tuple[str, str | None]]]


def lab_setting(seed: int, quick: bool, work: Path) -> Setting:
    config = LabConfig.quick(seed) if quick else LabConfig(seed=seed)
    lab = build_lab(config, log=lambda *_: None)
    setting = f"lab{' quick' if quick else ''} seed {seed}"
    folder = work / setting.replace(" ", "-")
    folder.mkdir(parents=True, exist_ok=True)
    base = demo_sweep_spec(lab, folder / "sweep").model_dump(mode="json", exclude_unset=True)

    def inputs() -> tuple[str, str | None]:
        from hma_lab import sample  # the bench folder is not a package

        fit_set = sample(lab, folder, "fit", prompts=200, keep=300, seed=1000 + seed)
        return str(fit_set), str(lab_retain(lab))

    return setting, seed, base, inputs


def lab_retain(lab) -> Path:
    """The lab's retain split: capability texts drawn with another seed than the evaluation's, none of its items."""
    from taxcut.lab.retain import retain_set

    return retain_set(lab)


def real_setting(sweep_yaml: Path) -> Setting:
    data = yaml.safe_load(sweep_yaml.read_text())
    fixture = sweep_yaml.parent

    def inputs() -> tuple[str, str | None]:
        fit_set, retain = fixture / "fit.jsonl", fixture / "retain.jsonl"
        return (str(fit_set) if fit_set.is_file() else "", str(retain) if retain.is_file() else None)

    return "real model", 0, data, inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="the quick lab (checks the script only)")
    parser.add_argument("--real-model", type=Path, help="the sweep.yaml of bench/real_model.py's fixture")
    parser.add_argument("--families", nargs="*", help="run only these families (MA is always run)")
    parser.add_argument("--work", type=Path, help="where sweeps, fit sets and fits go (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # on shared cores one thread per process runs faster than two fighting
    work = args.work or Path(tempfile.mkdtemp(prefix="taxcut-fronts-"))
    print(f"# bench/fronts.py: work folder {work}")
    settings = [lab_setting(seed, args.quick, work) for seed in args.seeds]
    if args.real_model is not None:
        settings.append(real_setting(args.real_model))
    summary: dict[str, dict[str, float]] = {}
    for setting, seed, base, inputs in settings:
        base = {**base, "candidates": {}}
        base.pop("search", None)
        folder = work / setting.replace(" ", "-") / "sweep"
        fit_set, retain = inputs()
        measured: dict[str, Measured] = {}
        for family in families(fit_set, retain, seed):
            if args.families and family.name not in args.families and family.name != "MA":
                continue
            if (family.needs == "fit" and not fit_set) or (family.needs == "retain" and not retain):
                print(f"{setting}: {family.name} skipped (no {family.needs} set)", flush=True)
                continue
            measured[family.name] = run_family(base, family, folder)
            print(f"{setting}: {family.name} measured ({measured[family.name].evaluations} candidates)", flush=True)
        summary[setting] = report(setting, measured, folder)
    print("\n## hypervolume relative to MA's, per setting\n")
    names = list(dict.fromkeys(name for ratios in summary.values() for name in ratios))
    print("| family | " + " | ".join(summary) + " |")
    print("|---|" + "---|" * len(summary))
    for name in names:
        print(
            f"| {name} | "
            + " | ".join(f"{ratios[name]:.3f}" if name in ratios else "—" for ratios in summary.values())
            + " |"
        )


if __name__ == "__main__":
    main()
