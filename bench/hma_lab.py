"""HMA against MA at equal mean a, and the black-box front against both, on the lab pair (several seeds).

For each seed: the cached lab (``bench/lab_tax.py`` builds the same ones); a fit set sampled from the aligned
model on fresh RLHF-style chat prompts (top 300 of 4 samples x 200 prompts); one sweep with the MA grid, HMA fitted
at a = 0.3 ... 0.7 and a 12-candidate NSGA-II search. Printed: reward and tax of MA and HMA at each a, and which
points of each family are dominated by the other families.

    python bench/hma_lab.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from taxcut.evaluation.generation import GenerationSettings
from taxcut.hma.sample import sample_fit_set
from taxcut.lab import tasks
from taxcut.lab.build import LabConfig, build_lab
from taxcut.lab.demo import demo_sweep_spec
from taxcut.sweep.report import SweepRow
from taxcut.sweep.runner import run_sweep


def dominated(point: SweepRow, others: list[SweepRow]) -> bool:
    return any(o.reward >= point.reward and o.tax <= point.tax and (o.reward > point.reward or o.tax < point.tax)
               for o in others)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="taxcut-hma-bench-"))
    for seed in args.seeds:
        lab = build_lab(LabConfig(seed=seed), log=lambda *_: None)
        prompts = work / f"rlhf-prompts-{seed}.jsonl"
        rng = random.Random(1000 + seed)
        prompts.write_text("".join(json.dumps({"prompt": e.prompt}) + "\n" for e in tasks.chat(rng, 200)))
        fit_set = work / f"fit-{seed}.jsonl"
        sample_fit_set(lab.aligned, prompts, fit_set, n=4, keep=300, reward_function="taxcut.lab.tasks:reward",
                       settings=GenerationSettings(do_sample=True, max_new_tokens=40, batch_size=256, seed=seed))
        spec = demo_sweep_spec(lab, work / f"sweep-{seed}")
        data = spec.model_dump(mode="json")
        data["candidates"].update(block_patterns=[], models=[], hma={
            "data": str(fit_set), "mean_alphas": [0.3, 0.4, 0.5, 0.6, 0.7], "batch_size": 16, "lr": 0.1})
        spec = spec.model_validate({**data, "search": {"budget": 12, "seed": seed}})
        rows = run_sweep(spec, progress=False).rows
        ma = {round(r.mean_alpha, 2): r for r in rows if r.kind == "MA"}
        hma = {round(r.mean_alpha, 2): r for r in rows if r.kind == "HMA"}
        search = [r for r in rows if r.kind == "search"]
        print(f"seed {seed}:")
        for a, row in sorted(hma.items()):
            m = ma[a]
            print(f"  a={a:.1f}  MA reward {m.reward:+.3f} tax {100 * m.tax:5.1f} | HMA reward "
                  f"{row.reward:+.3f} tax {100 * row.tax:5.1f}")
        hma_dominated = sum(dominated(r, list(ma.values())) for r in hma.values())
        ma_dominated = sum(dominated(r, list(hma.values())) for r in ma.values() if 0 < r.mean_alpha < 1)
        search_front = [r for r in search if not dominated(r, list(ma.values()) + list(hma.values()))]
        print(f"  HMA points dominated by MA's: {hma_dominated}/{len(hma)}; interior MA points dominated by HMA's: "
              f"{ma_dominated}/{len(ma) - 2}; search points not dominated by MA or HMA: "
              f"{len(search_front)}/{len(search)} ({', '.join(r.label for r in search_front)})")


if __name__ == "__main__":
    main()
