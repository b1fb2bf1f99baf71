"""``taxcut demo``: the whole story on the lab pair, through the ordinary sweep.

Build (or reuse) the lab, sweep MA over a = 0, 0.1, ..., 1, a few block profiles and the RAFT checkpoints (early
stopping), then say in plain words what alignment gained and cost and what averaging recovers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from taxcut.lab.build import REWARD_FUNCTION, Lab, LabConfig, build_lab
from taxcut.spec.candidates import RECOMMENDED_PROFILES
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.report import SweepRow

BLOCK_PROFILES = [[0.5, 0.7, 0.9], [0.9, 0.7, 0.5], [0.3, 0.5, 0.7]]


def demo_sweep_spec(lab: Lab, out: Path, *, samples_per_prompt: int = 2) -> SweepSpec:
    """The sweep of the demo: MA grid, block profiles and the RAFT checkpoints, scored by the lab's tasks."""
    tasks = [
        {
            "name": name,
            "type": "generation",
            "path": str(lab.data / f"{name}.jsonl"),
            "max_new_tokens": 8,
            "batch_size": 128,
        }
        for name in lab.capability_tasks
    ]
    return SweepSpec.model_validate(
        {
            "sft": str(lab.sft),
            "aligned": str(lab.aligned),
            "out": str(out),
            "candidates": {
                "grid": [round(0.1 * i, 1) for i in range(11)],
                "block_patterns": BLOCK_PROFILES,
                "profiles": RECOMMENDED_PROFILES,
                "models": [str(p) for p in lab.checkpoints[:-1]],
            },
            "evaluation": {
                "reward": {
                    "prompts": str(lab.data / "chat_prompts.jsonl"),
                    "function": REWARD_FUNCTION,
                    "max_new_tokens": 40,
                    "do_sample": True,
                    "samples_per_prompt": samples_per_prompt,
                    "batch_size": 256,
                    "seed": 0,
                },
                "tasks": tasks,
            },
            "device": "cpu",
        }
    )


@dataclass
class DemoResult:
    rows: list[SweepRow]
    plot: Path
    timings: dict[str, float] = field(default_factory=dict)
    summary: str = ""


def run_demo(
    *, seed: int = 0, out: Path = Path("demo-output"), quick: bool = False, lab_folder: Path | None = None, log=print
) -> DemoResult:
    from taxcut.sweep.report import markdown_table
    from taxcut.sweep.runner import run_sweep

    timings: dict[str, float] = {}
    started = time.perf_counter()
    config = LabConfig.quick(seed) if quick else LabConfig(seed=seed)
    lab = build_lab(config, lab_folder, log=log)
    timings["lab"] = time.perf_counter() - started
    log(f"demo: lab ready in {timings['lab']:.1f} s ({lab.folder})")

    step = time.perf_counter()
    report = run_sweep(demo_sweep_spec(lab, Path(out) / f"sweep-seed{seed}"), progress=None)
    timings["sweep"] = time.perf_counter() - step
    summary = summarize(report.rows)
    timings["total"] = time.perf_counter() - started
    log("")
    log(markdown_table(report.rows))
    log(summary)
    log(f"\nplot: {report.plot}")
    log("stage timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
    return DemoResult(report.rows, report.plot, timings, summary)


def summarize(rows: list[SweepRow]) -> str:
    """Plain words: what alignment gained and cost, what each averaged model keeps, and MA vs early stopping."""
    ma = sorted((r for r in rows if r.kind == "MA"), key=lambda r: r.mean_alpha)
    sft, aligned = ma[0], ma[-1]
    gain, cost = aligned.reward - sft.reward, aligned.tax
    lines = [
        f"Alignment (RAFT) raised the mean reward from {sft.reward:+.2f} to {aligned.reward:+.2f} "
        f"(+{gain:.2f}) and cost {100 * cost:.1f} points of mean capability accuracy (the alignment tax).",
    ]
    if gain <= 0 or cost <= 0:
        lines.append("Without both a reward gain and a tax there is nothing for averaging to trade off here.")
        return "\n".join(lines)
    lines.append("Model averaging, theta = (1 - a) * sft + a * aligned:")
    for row in ma[1:-1]:
        lines.append(
            f"  a = {row.mean_alpha:.1f}: keeps {100 * (row.reward - sft.reward) / gain:5.0f}% of "
            f"the reward gain for {100 * row.tax / cost:5.0f}% of the tax"
        )
    best = max((r for r in ma if r.reward - sft.reward >= 0.8 * gain), key=lambda r: -r.tax, default=None)
    if best is not None:
        lines.append(
            f"Best MA keeping >= 80% of the gain: a = {best.mean_alpha:.1f}, tax "
            f"{100 * best.tax:.1f} points instead of {100 * cost:.1f}."
        )
    for row in (r for r in rows if r.kind == "model"):
        matched = _ma_tax_at_reward(ma, row.reward)
        head = f"Early stopping at {row.label} (reward {row.reward:+.2f}, tax {100 * row.tax:.1f} points)"
        if matched is None:
            lines.append(f"{head}: outside the reward range of the MA curve; no comparison at equal reward.")
        elif matched <= row.tax:
            lines.append(
                f"{head}: MA at the same reward pays {100 * matched:.1f} points, keeping "
                f"{100 * (row.tax - matched):.1f} points more capability than early stopping."
            )
        else:
            lines.append(
                f"{head}: MA at the same reward pays {100 * matched:.1f} points; here early stopping "
                f"keeps {100 * (matched - row.tax):.1f} points more."
            )
    for row in (r for r in rows if r.kind == "LiNeS"):
        matched = _ma_tax_at_reward(ma, row.reward)
        if matched is not None:
            alpha, beta = (part.split("=")[1] for part in row.label.split()[1:3])
            lines.append(
                f"LiNeS alpha={alpha}, beta={beta} (the aligned share rising with depth): reward "
                f"{row.reward:+.2f}, tax {100 * row.tax:.1f} points vs MA's {100 * matched:.1f} at that "
                "reward."
            )
    blocks = [r for r in rows if r.kind == "blocks"]
    for row in blocks:
        matched = _ma_tax_at_reward(ma, row.reward)
        if matched is not None:
            lines.append(
                f"Block profile {row.label.removeprefix('blocks ')} (bottom to top): reward "
                f"{row.reward:+.2f}, tax {100 * row.tax:.1f} points vs. MA's {100 * matched:.1f} at "
                "that reward."
            )
    return "\n".join(lines)


def _ma_tax_at_reward(ma: list[SweepRow], reward: float) -> float | None:
    """MA's tax where its curve (in order of a) first reaches ``reward``, interpolated linearly."""
    for left, right in zip(ma, ma[1:]):
        low, high = sorted((left.reward, right.reward))
        if low <= reward <= high and high > low:
            share = (reward - left.reward) / (right.reward - left.reward)
            return left.tax + share * (right.tax - left.tax)
    return None
