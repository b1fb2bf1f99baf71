"""The lab's alignment tax on several seeds, and how averaging compares with early stopping.

For each seed: build (or reuse from the cache) the lab, run the demo's sweep, and print
- the tax: mean capability accuracy of SFT and of the aligned model (last RAFT checkpoint), and the drop in points;
- the reward gain of alignment;
- for each earlier RAFT checkpoint (early stopping), the capability points MA keeps over it at equal reward;
- each block profile against MA at equal reward.
Targets: drop >= 25 points and reward gain >= 1.0 on every seed.

    python bench/lab_tax.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from taxcut.lab.build import LabConfig, build_lab
from taxcut.lab.demo import _ma_tax_at_reward, demo_sweep_spec
from taxcut.sweep.runner import run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="taxcut-lab-bench-"))
    for seed in args.seeds:
        started = time.perf_counter()
        lab = build_lab(LabConfig(seed=seed), log=lambda *_: None)
        built = time.perf_counter() - started
        rows = run_sweep(demo_sweep_spec(lab, out / f"seed{seed}"), progress=False).rows
        ma = sorted((r for r in rows if r.kind == "MA"), key=lambda r: r.mean_alpha)
        sft, aligned = ma[0], ma[-1]
        accuracy = {
            name: 100 * sum(r.primary.values()) / len(r.primary) for name, r in (("sft", sft), ("aligned", aligned))
        }
        drop, gain = accuracy["sft"] - accuracy["aligned"], aligned.reward - sft.reward
        verdict = "meets" if drop >= 25 and gain >= 1.0 else "MISSES"
        print(
            f"seed {seed}: capability {accuracy['sft']:.1f} -> {accuracy['aligned']:.1f} (drop {drop:.1f} points), "
            f"reward {sft.reward:+.2f} -> {aligned.reward:+.2f} (gain {gain:+.2f}): {verdict} the targets  "
            f"[lab {built:.0f} s, sweep {time.perf_counter() - started - built:.0f} s]"
        )
        for row in rows:
            if row.kind not in ("model", "blocks"):
                continue
            matched = _ma_tax_at_reward(ma, row.reward)
            if matched is None:
                print(f"  {row.label:<24} reward {row.reward:+.2f}: outside MA's reward range")
            else:
                print(
                    f"  {row.label:<24} reward {row.reward:+.2f}, tax {100 * row.tax:5.1f} points; "
                    f"MA at that reward {100 * matched:5.1f}: MA keeps {100 * (row.tax - matched):+5.1f} points"
                )


if __name__ == "__main__":
    main()
