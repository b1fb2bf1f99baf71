"""The sweep's rows (one per candidate) and their tables and plot: candidates.csv, candidates.md and front.png."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from taxcut.spec.candidates import CandidateKind

COLUMNS = ("id", "label", "mean_alpha", "reward", "reward_stderr", "tax", "pareto")


@dataclass
class SweepRow:
    """One measured candidate of a sweep: its reward, its tax (mean drop of the primary scores from the SFT model),
    each task's primary score and all its scores, and whether it is on the Pareto front."""

    id: str
    label: str
    kind: CandidateKind
    mean_alpha: float | None  # None for a checkpoint evaluated as it is
    reward: float
    reward_stderr: float
    tax: float
    primary: dict[str, float]
    scores: dict[str, dict[str, float]]
    pareto: bool = False


def write_csv(rows: Sequence[SweepRow], path: Path) -> None:
    tasks = sorted({name for row in rows for name in row.scores})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*COLUMNS, *(f"{t}.{m}" for t in tasks for m in _metrics(rows, t))])
        for row in rows:
            extra = [row.scores.get(t, {}).get(m, "") for t in tasks for m in _metrics(rows, t)]
            writer.writerow([getattr(row, c) for c in COLUMNS] + extra)


def markdown_table(rows: Sequence[SweepRow]) -> str:
    tasks = sorted({name for row in rows for name in row.primary})
    header = ["id", "candidate", "a", "reward", "tax", "front", *tasks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        alpha = "—" if row.mean_alpha is None else f"{row.mean_alpha:.3g}"
        cells = [row.id, row.label, alpha, f"{row.reward:.4f} ± {row.reward_stderr:.4f}", f"{row.tax:.4f}",
                 "★" if row.pareto else "", *(f"{row.primary.get(t, float('nan')):.4f}" for t in tasks)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# how each candidate kind is drawn: marker and legend
KIND_STYLES: dict[CandidateKind, tuple[str, str]] = {
    "MA": ("o", "MA (one a)"), "blocks": ("s", "block profiles"), "layers": ("^", "layer profiles"),
    "HMA": ("D", "HMA (learned)"), "model": ("x", "checkpoints as they are"), "search": ("P", "black-box search"),
}


def plot_front(rows: Sequence[SweepRow], path: Path, title: str = "Reward vs. alignment tax") -> None:
    """Every candidate as a point (reward up, tax right), the Pareto front as a line, SFT and aligned labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5), dpi=120)
    for kind, (marker, legend) in KIND_STYLES.items():
        mine = [r for r in rows if r.kind == kind]
        if mine:
            axes.scatter([r.tax for r in mine], [r.reward for r in mine], marker=marker, label=legend, alpha=0.8)
    ma = sorted((r for r in rows if r.kind == "MA"), key=lambda r: r.mean_alpha)
    hma = sorted((r for r in rows if r.kind == "HMA"), key=lambda r: r.mean_alpha)
    if len(hma) > 1:
        axes.plot([r.tax for r in hma], [r.reward for r in hma], color="tab:red", alpha=0.4, linewidth=1)
    models = [r for r in rows if r.kind == "model"]
    if len(models) > 1:
        axes.plot([r.tax for r in models], [r.reward for r in models], color="tab:purple", alpha=0.3,
                  linewidth=1)
    for row in models:
        axes.annotate(row.label, (row.tax, row.reward), textcoords="offset points", xytext=(4, 4),
                      fontsize=7, color="tab:purple")
    if len(ma) > 1:
        axes.plot([r.tax for r in ma], [r.reward for r in ma], color="tab:blue", alpha=0.3, linewidth=1)
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.tax)
    axes.plot([r.tax for r in front], [r.reward for r in front], color="black", linewidth=1.5,
              linestyle="--", label="Pareto front")
    for row in (r for r in rows if r.kind == "MA"):
        if row.mean_alpha in (0.0, 1.0):
            name = "SFT (a=0)" if row.mean_alpha == 0.0 else "aligned (a=1)"
            axes.annotate(name, (row.tax, row.reward), textcoords="offset points", xytext=(6, -10))
        else:
            axes.annotate(f"{row.mean_alpha:g}", (row.tax, row.reward), textcoords="offset points",
                          xytext=(4, 4), fontsize=7, color="tab:blue")
    axes.set_xlabel("alignment tax (mean benchmark drop from SFT)")
    axes.set_ylabel("reward")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _metrics(rows: Sequence[SweepRow], task: str) -> list[str]:
    return sorted({m for row in rows for m in row.scores.get(task, {})})
