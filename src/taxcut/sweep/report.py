"""The sweep's rows (one per candidate) and their tables and plot: candidates.csv, candidates.md and front.png.

Scores carry their standard errors (tables: ``±``, plot: error bars). ``pareto`` is the strict front;
``pareto_within_noise`` the candidates no other dominates beyond the noise (:mod:`taxcut.sweep.noise`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from taxcut.spec.candidates import CandidateKind

COLUMNS = ("id", "label", "mean_alpha", "reward", "reward_stderr", "tax", "tax_stderr", "pareto", "pareto_within_noise")
FRONT_LEGEND = (
    "★ on the Pareto front; ☆ on it within the noise (no candidate is better on both axes beyond their error bars)"
)


@dataclass
class SweepRow:
    """One measured candidate of a sweep: its reward, its tax (mean drop of the primary scores from the SFT model),
    each task's primary score and all its scores, and whether it is on the Pareto front; the standard errors of
    the reward, the tax and each primary score, and whether it is on the front within the noise."""

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
    tax_stderr: float = math.nan
    primary_stderr: dict[str, float] = field(default_factory=dict)
    pareto_within_noise: bool = False


def write_csv(rows: Sequence[SweepRow], path: Path) -> None:
    tasks = sorted({name for row in rows for name in row.scores})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [*COLUMNS, *(f"{t}.{m}" for t in tasks for m in _metrics(rows, t)), *(f"{t}.stderr" for t in tasks)]
        )
        for row in rows:
            extra = [row.scores.get(t, {}).get(m, "") for t in tasks for m in _metrics(rows, t)]
            errors = [row.primary_stderr.get(t, "") for t in tasks]
            writer.writerow([getattr(row, c) for c in COLUMNS] + extra + errors)


def markdown_table(rows: Sequence[SweepRow]) -> str:
    tasks = sorted({name for row in rows for name in row.primary})
    header = ["id", "candidate", "a", "reward", "tax", "front", *tasks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        alpha = "—" if row.mean_alpha is None else f"{row.mean_alpha:.3g}"
        cells = [
            row.id,
            row.label,
            alpha,
            _plus_minus(row.reward, row.reward_stderr),
            _plus_minus(row.tax, row.tax_stderr),
            "★" if row.pareto else "☆" if row.pareto_within_noise else "",
            *(_plus_minus(row.primary.get(t, math.nan), row.primary_stderr.get(t, math.nan)) for t in tasks),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + FRONT_LEGEND + "\n"


def _plus_minus(value: float, error: float) -> str:
    """``value ± error``; the value alone where its error is unknown."""
    return f"{value:.4f} ± {error:.4f}" if math.isfinite(error) else f"{value:.4f}"


# how each candidate kind is drawn: marker and legend
KIND_STYLES: dict[CandidateKind, tuple[str, str]] = {
    "MA": ("o", "MA (one a)"),
    "scoped-MA": ("v", "MA, HMA's scope (no learning)"),
    "blocks": ("s", "block profiles"),
    "layers": ("^", "layer profiles"),
    "LiNeS": ("h", "LiNeS depth profiles (Wang et al. 2025)"),
    "HMA": ("D", "HMA (learned)"),
    "model": ("x", "checkpoints as they are"),
    "search": ("P", "black-box search"),
    "mergekit": ("*", "mergekit config, swept"),
}


def plot_front(rows: Sequence[SweepRow], path: Path, title: str = "Reward vs. alignment tax") -> None:
    """Every candidate as a point (reward up, tax right) with its error bars (one standard error), the Pareto
    front as a line, the candidates on the front only within the noise ringed, SFT and aligned labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5), dpi=120)
    barred = [r for r in rows if math.isfinite(r.reward_stderr) or math.isfinite(r.tax_stderr)]
    if barred:
        axes.errorbar(
            [r.tax for r in barred],
            [r.reward for r in barred],
            fmt="none",
            ecolor="grey",
            alpha=0.5,
            linewidth=0.8,
            xerr=[_bar(r.tax_stderr) for r in barred],
            yerr=[_bar(r.reward_stderr) for r in barred],
        )
    noisy = [r for r in rows if r.pareto_within_noise and not r.pareto]
    if noisy:
        axes.scatter(
            [r.tax for r in noisy],
            [r.reward for r in noisy],
            s=140,
            facecolors="none",
            edgecolors="black",
            linewidths=0.8,
            label="on the front within the noise",
        )
    for kind, (marker, legend) in KIND_STYLES.items():
        mine = [r for r in rows if r.kind == kind]
        if mine:
            axes.scatter([r.tax for r in mine], [r.reward for r in mine], marker=marker, label=legend, alpha=0.8)
    ma = sorted((r for r in rows if r.kind == "MA"), key=lambda r: r.mean_alpha)
    hma = sorted((r for r in rows if r.kind == "HMA"), key=lambda r: r.mean_alpha)
    if len(hma) > 1:
        axes.plot([r.tax for r in hma], [r.reward for r in hma], color="tab:red", alpha=0.4, linewidth=1)
    scoped = sorted((r for r in rows if r.kind == "scoped-MA"), key=lambda r: r.mean_alpha)
    if len(scoped) > 1:
        axes.plot([r.tax for r in scoped], [r.reward for r in scoped], color="tab:orange", alpha=0.4, linewidth=1)
    models = [r for r in rows if r.kind == "model"]
    if len(models) > 1:
        axes.plot([r.tax for r in models], [r.reward for r in models], color="tab:purple", alpha=0.3, linewidth=1)
    for row in models:
        axes.annotate(
            row.label, (row.tax, row.reward), textcoords="offset points", xytext=(4, 4), fontsize=7, color="tab:purple"
        )
    for row in (r for r in rows if r.kind == "mergekit"):  # "mergekit slerp t=0.3": the value swept
        axes.annotate(
            row.label.split(" ", 2)[-1], (row.tax, row.reward), textcoords="offset points", xytext=(4, -8), fontsize=7
        )
    if len(ma) > 1:
        axes.plot([r.tax for r in ma], [r.reward for r in ma], color="tab:blue", alpha=0.3, linewidth=1)
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.tax)
    axes.plot(
        [r.tax for r in front],
        [r.reward for r in front],
        color="black",
        linewidth=1.5,
        linestyle="--",
        label="Pareto front",
    )
    for row in (r for r in rows if r.kind == "MA"):
        if row.mean_alpha in (0.0, 1.0):
            name = "SFT (a=0)" if row.mean_alpha == 0.0 else "aligned (a=1)"
            axes.annotate(name, (row.tax, row.reward), textcoords="offset points", xytext=(6, -10))
        else:
            axes.annotate(
                f"{row.mean_alpha:g}",
                (row.tax, row.reward),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color="tab:blue",
            )
    axes.set_xlabel("alignment tax (mean benchmark drop from SFT)")
    axes.set_ylabel("reward")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _bar(error: float) -> float:
    return error if math.isfinite(error) else 0.0


def _metrics(rows: Sequence[SweepRow], task: str) -> list[str]:
    return sorted({m for row in rows for m in row.scores.get(task, {})})
