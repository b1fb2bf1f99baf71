"""The winner's curse, measured: each family's front measured again on items none of its candidates was chosen on.

A front is picked from noisy measurements, and the more candidates a family measured (a 16-proposal search, a
20-profile grid), the more its best points owe to the noise of the items they were picked on: its hypervolume on
those items is biased upward, and the paired-bootstrap interval of ``bench/fronts.py`` does not see that bias
(it resamples the items, not the choice). This script takes the results of a sweep (one setting's folder of
``bench/fronts.py``), keeps each kind's front (the kind's full-data points that no other point of the kind
dominates), measures those points again with the SFT and aligned models under a held-out evaluation (the same
kinds and amounts of data on other items: ``bench/real_model.py`` writes ``held-out/sweep.yaml``), and prints each
kind's hypervolume relative to MA's on the items it was chosen on and on the held-out items, with the 90%
paired-bootstrap interval of ``bench/fronts.py`` on the held-out items.

Kinds re-measured: ``MA``, ``LiNeS``, ``blocks`` and the block search's and the profile search's proposals,
all expressible as sweep candidates (MA ratios, depth profiles, block ratios); HMA and the tax-aware fit
are fitted per setting and are left out.

    .venv/bin/python bench/holdout.py bench/.cache/fronts/real-model/sweep/results.jsonl \\
        bench/.cache/real_model/full/held-out/sweep.yaml --work bench/.cache/holdout
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch
import yaml
from fronts import (
    RESAMPLES,
    Resampler,
    interval,
    non_dominated,
    reference_point,
    volumes,
)  # the bench folder is not a package

from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.results import ResultRecord, ResultsStore
from taxcut.sweep.runner import RESULTS_FILE, run_sweep

KINDS = ("MA", "LiNeS", "blocks", "search blocks", "search profile")


def kind_of(record: ResultRecord) -> str:
    """The record's kind, the search's proposals told apart by their space (block ratios or a depth profile)."""
    if record.candidate.kind != "search":
        return record.candidate.kind
    return "search profile" if record.candidate.profile is not None else "search blocks"


def front(records: list[ResultRecord], sft: ResultRecord) -> list[ResultRecord]:
    """The records no other record of the list dominates (reward up, tax against ``sft`` down)."""
    points = Resampler({r.candidate_id: r.result for r in [*records, sft]}, sft.candidate_id).draw(None)
    kept = set(non_dominated({r.candidate_id: points[r.candidate_id] for r in records}))
    return [r for r in records if r.candidate_id in kept]


def chosen(results: Path) -> tuple[dict[str, list[ResultRecord]], ResultRecord, ResultRecord]:
    """Each kind's front on the items it was chosen on, the SFT and the aligned model's records."""
    latest = {r.candidate_id: r for r in ResultsStore(results).records() if r.share >= 1.0}
    records = list(latest.values())
    sft = next(r for r in records if r.candidate.kind == "MA" and r.mean_alpha == 0.0)
    aligned = next(r for r in records if r.candidate.kind == "MA" and r.mean_alpha == 1.0)
    fronts = {kind: front([r for r in records if kind_of(r) == kind], sft) for kind in KINDS}
    return {kind: rows for kind, rows in fronts.items() if rows}, sft, aligned


def held_out_spec(spec_file: Path, fronts: dict[str, list[ResultRecord]], out: Path) -> SweepSpec:
    """The held-out evaluation's sweep over the chosen candidates (the SFT and aligned models always measured)."""
    fields = [r.candidate.ratio_fields() for rows in fronts.values() for r in rows]
    candidates = {
        "grid": sorted({0.0, 1.0, *(f["alpha"] for f in fields if "alpha" in f)}),
        "profiles": [f["profile"] for f in fields if "profile" in f],
        "block_patterns": [f["alphas"] for f in fields if "alphas" in f],
    }
    data = {**yaml.safe_load(spec_file.read_text()), "candidates": candidates, "out": str(out)}
    data.pop("search", None)
    return SweepSpec.model_validate(data)


def key(record: ResultRecord) -> str:
    return json.dumps(record.candidate.ratio_fields(), sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the results.jsonl the fronts were chosen from")
    parser.add_argument("held_out", type=Path, help="the sweep spec of the held-out evaluation")
    parser.add_argument("--work", type=Path, help="where the held-out sweep goes (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # on shared cores one thread per process runs faster than two fighting
    work = args.work or Path(tempfile.mkdtemp(prefix="taxcut-holdout-"))
    fronts, sft, aligned = chosen(args.results)
    spec = held_out_spec(args.held_out, fronts, work / "sweep")
    run_sweep(spec, progress=False)
    again = {key(r): r for r in ResultsStore(work / "sweep" / RESULTS_FILE).records() if r.share >= 1.0}
    members = {kind: [key(r) for r in rows] for kind, rows in fronts.items()}
    frame = [key(sft), key(aligned)]
    print(f"# bench/holdout.py: {args.results} re-measured under {args.held_out} (sweep in {work / 'sweep'})\n")
    print("| kind | front points | hypervolume / MA, chosen on | held out | 90% interval (held out) |")
    print("|---|---|---|---|---|")
    chosen_on = {key(r): r.result for r in [*(r for rows in fronts.values() for r in rows), sft, aligned]}
    on_chosen = Resampler(chosen_on, key(sft)).draw(None)
    resampler = Resampler({k: again[k].result for k in chosen_on}, key(sft))
    held = resampler.draw(None)
    first = volumes(on_chosen, members, frame, reference_point(list(on_chosen.values())))
    reference = reference_point(list(held.values()))
    second = volumes(held, members, frame, reference)
    generator = random.Random(0)
    draws = [volumes(resampler.draw(generator), members, frame, reference) for _ in range(RESAMPLES)]
    for kind in fronts:
        low, high = interval([d[kind] / d["MA"] for d in draws if d["MA"] > 0])
        print(
            f"| {kind} | {len(members[kind])} | {first[kind] / first['MA']:.3f} | {second[kind] / second['MA']:.3f} | "
            f"{low:.3f} .. {high:.3f} |"
        )
    print("\n| kind | candidate | reward chosen on / held out | tax (points) chosen on / held out |")
    print("|---|---|---|---|")
    for kind, rows in fronts.items():
        for r in rows:
            (r1, t1), (r2, t2) = on_chosen[key(r)], held[key(r)]
            print(f"| {kind} | {r.candidate.label} | {r1:+.3f} / {r2:+.3f} | {100 * t1:.1f} / {100 * t2:.1f} |")


if __name__ == "__main__":
    main()
