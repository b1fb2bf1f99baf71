"""HMA as the paper does it against MA, scope-matched MA, a hand-set profile and the black-box search, on the lab.

Lin et al., "Mitigating the Alignment Tax of RLHF" (EMNLP 2024, arXiv 2309.06256). For each seed: the lab (built
or reused); a fit set sampled from the aligned model on fresh RLHF-style chat prompts (200 prompts x 4 samples, the
top 300 kept; the paper preset draws 40% of it at random, as the paper draws 2,000 of its top 5,000); a held-out
set sampled the same way from other prompts (100 x 4, top 150). Candidates, all measured by the demo's evaluation
(reward of 2 samples on each of the 200 chat test prompts; exact match on upper-casing, reversal, facts):

- MA: the grid a = 0, 0.1, ..., 1, every tensor averaged.
- MA paper scope: a in A (below), Linear weights only (embeddings and norms from SFT, lm_head at a), no learning
  -- the sweep adds it beside every paper-scope HMA candidate.
- HMA paper: ``preset: paper`` exactly (normalize sft, eps searched over 0, 0.1, ..., 0.9, lr 2e-5, batch 1,
  loss on prompt + response, 40% draw, the released code's L1 weights), one candidate per a in A and eps.
- HMA paper, lab lr: the same preset with taxcut's lr 0.05 and batch 8, eps in {0, 0.2, 0.5} (with lr 2e-5 and
  ~120 steps the logits cannot move more than 0.0024, so this shows what the paper's other settings do when the
  ratios can move).
- HMA taxcut: taxcut's defaults (normalize sft, eps 0.05, scope all, loss on the response, lr 0.05, batch 8).
- Profile: [0.5, 0.7, 0.9] (bottom to top) scaled to mean a, where every ratio stays <= 1 (a <= 0.7).
- Search: NSGA-II over the 3 block ratios in [0, 1], 16 proposals, measuring reward and tax directly.

A = 0.4, 0.5, ..., 0.9 (the paper's evidence lies there; it recommends a = 0.8).

Printed per seed: each family's hypervolume (reference point: the lowest reward and the highest tax measured on
that seed -- in practice the SFT model's reward and the aligned model's tax -- with the SFT and aligned models
added to every family, since every method can give them), relative to MA's at the same a (``MA, a in A``: the
HMA families have no point below a = 0.4), how many of its points MA's grid dominates, every family at a = 0.8,
and three ablations: (i) the HMA objective -- the response NLL of the held-out top-reward samples -- against
reward and tax (Spearman's rho over MA, scoped MA, HMA and search points); (ii) the ratios of the taxcut fit at
a = 0.6 and 0.8 after steps 1, 3, 6, 10 and at the end, evaluated as candidates; (iii) HMA taxcut with the loss on
prompt + response instead of the response only (also a family in the tables).

One thread per process (torch.set_num_threads(1)): on shared cores two threads per process ran a fit 30x slower.
Everything is cached in the work folder (fit sets, fits, results), so a second run only reports.

    python bench/hma_lab.py [--seeds 0 1 2] [--labs DIR] [--work DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from taxcut.evaluation.generation import GenerationSettings
from taxcut.evaluation.loglik import score_continuations
from taxcut.hma.fit import encode_fit_set, fit_ratios
from taxcut.lab import tasks
from taxcut.lab.build import LabConfig, build_lab
from taxcut.lab.demo import demo_sweep_spec
from taxcut.spec.candidates import Candidate
from taxcut.spec.fit import FitSettings
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.noise import hypervolume
from taxcut.sweep.report import SweepRow
from taxcut.sweep.resident import ResidentModel
from taxcut.sweep.results import ResultsStore
from taxcut.sweep.runner import run_sweep

MEAN_ALPHAS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
PAPER_EPS = [round(0.1 * i, 1) for i in range(10)]
PROFILE = [0.5, 0.7, 0.9]
SEARCH_BUDGET = 16
STEPS = [1, 3, 6, 10]  # ablation (ii): the fit's ratios after these steps, and at its end


@dataclass
class Point:
    family: str
    row: SweepRow

    @property
    def a(self) -> float | None:
        return None if self.row.mean_alpha is None else round(self.row.mean_alpha, 3)


def dominated(point: SweepRow, others: list[SweepRow]) -> bool:
    return any(
        o.reward >= point.reward and o.tax <= point.tax and (o.reward > point.reward or o.tax < point.tax)
        for o in others
    )


def sample(lab, work: Path, name: str, *, prompts: int, keep: int, seed: int) -> Path:
    """Top-``keep`` responses of the aligned model, 4 samples on each of ``prompts`` fresh chat prompts."""
    from taxcut.hma.sample import sample_fit_set

    source = work / f"{name}-prompts.jsonl"
    source.write_text(
        "".join(json.dumps({"prompt": e.prompt}) + "\n" for e in tasks.chat(random.Random(seed), prompts))
    )
    out = work / f"{name}.jsonl"
    if not out.is_file():
        sample_fit_set(
            lab.aligned,
            source,
            out,
            n=4,
            keep=keep,
            reward_function="taxcut.lab.tasks:reward",
            settings=GenerationSettings(do_sample=True, max_new_tokens=40, batch_size=256, seed=seed),
            device="cpu",
        )
    return out


def response_nll(lab, held_out: Path, candidates: list[Candidate]) -> dict[str, float]:
    """Mean NLL per response token of the held-out top-reward samples, per candidate id (the HMA objective)."""
    resident = ResidentModel(lab.sft, lab.aligned, device="cpu")
    sequences = encode_fit_set(resident.tokenizer, held_out, None, "response")
    nll = {}
    for candidate in candidates:
        resident.apply(candidate)
        scored = score_continuations(resident.model, resident.tokenizer, sequences, batch_size=64)
        nll[candidate.id] = -sum(s.logprob for s in scored) / sum(s.tokens for s in scored)
    return nll


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        for rank, i in enumerate(order):
            result[i] = rank
        return result

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def run_seed(seed: int, labs: Path | None, work: Path, quick: bool = False) -> dict:
    started = time.perf_counter()
    config = LabConfig.quick(seed) if quick else LabConfig(seed=seed)
    lab = build_lab(config, labs / f"seed-{seed}" if labs else None, log=lambda *_: None)
    folder = work / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    fit_set = sample(lab, folder, "fit", prompts=200, keep=300, seed=1000 + seed)
    held_out = sample(lab, folder, "held-out", prompts=100, keep=150, seed=2000 + seed)
    base = demo_sweep_spec(lab, folder / "sweep").model_dump(mode="json", exclude_unset=True)
    base["candidates"].update(block_patterns=[], models=[])

    def sweep(candidates: dict | None = None, search: dict | None = None) -> list[SweepRow]:
        data = {**base, "candidates": {**base["candidates"], **(candidates or {})}}
        if search:
            data["search"] = search
        return run_sweep(SweepSpec.model_validate(data), progress=False).rows

    hma = {"data": str(fit_set), "mean_alphas": MEAN_ALPHAS}
    points: list[Point] = []

    def collect(rows: list[SweepRow], family_of) -> None:
        for row in rows:
            family = family_of(row)
            if family and all(p.row.id != row.id or p.family != family for p in points):
                points.append(Point(family, row))

    by_kind = {"MA": "MA", "scoped-MA": "MA paper scope"}
    collect(
        sweep({"hma": {**hma, "preset": "paper", "eps": PAPER_EPS}}),
        lambda r: {"HMA": "HMA paper"}.get(r.kind, by_kind.get(r.kind)),
    )
    collect(
        sweep({"hma": {**hma, "preset": "paper", "lr": 0.05, "batch_size": 8, "eps": [0.0, 0.2, 0.5]}}),
        lambda r: "HMA paper, lab lr" if r.kind == "HMA" else None,
    )
    collect(sweep({"hma": hma}), lambda r: "HMA taxcut" if r.kind == "HMA" else None)
    collect(sweep({"hma": {**hma, "loss": "prompt+response"}}), lambda r: LOSS_ABLATION if r.kind == "HMA" else None)
    profiles = [[round(p * a / 0.7, 4) for p in PROFILE] for a in MEAN_ALPHAS if max(PROFILE) * a / 0.7 <= 1]
    collect(sweep({"block_patterns": profiles}), lambda r: "profile" if r.kind == "blocks" else None)
    collect(sweep(search={"budget": SEARCH_BUDGET, "seed": seed}), lambda r: "search" if r.kind == "search" else None)

    # ablation (ii): the taxcut fit stopped early
    steps = {}
    for alpha in (0.6, 0.8):
        result = fit_ratios(lab.sft, lab.aligned, fit_set, FitSettings(alpha=alpha, device="cpu"), log=lambda *_: None)
        history = result.ratio_history
        for step in [s for s in STEPS if s < len(history)] + [len(history)]:
            steps[(alpha, step)] = [round(r, 4) for r in history[step - 1]]
    rows = {r.id: r for r in sweep({"block_patterns": list(steps.values())})}
    early = {key: rows[Candidate(label="", kind="blocks", alphas=ratios).id] for key, ratios in steps.items()}

    # ablation (i): the objective the fit maximises, on held-out top-reward samples
    records = {r.candidate_id: r.candidate for r in ResultsStore(folder / "sweep" / "results.jsonl").records()}
    objective = [records[p.row.id] for p in points if p.family in OBJECTIVE_FAMILIES]
    nll = response_nll(lab, held_out, list({c.id: c for c in objective}.values()))
    return {
        "seed": seed,
        "points": points,
        "early": early,
        "steps": steps,
        "nll": nll,
        "records": records,
        "wall": time.perf_counter() - started,
    }


LOSS_ABLATION = "HMA taxcut, loss on prompt+response"
FAMILIES = [
    "MA",
    "MA, a in A",
    "MA paper scope",
    "HMA paper",
    "HMA paper, lab lr",
    "HMA taxcut",
    LOSS_ABLATION,
    "profile",
    "search",
]
OBJECTIVE_FAMILIES = ("MA", "MA paper scope", "HMA paper", "HMA paper, lab lr", "HMA taxcut", "search")


def report(outcome: dict) -> dict[str, float]:
    seed, points = outcome["seed"], outcome["points"]
    ma = [p.row for p in points if p.family == "MA"]
    sft = next(r for r in ma if r.mean_alpha == 0.0)
    aligned = next(r for r in ma if r.mean_alpha == 1.0)
    everything = [p.row for p in points] + [r for r in outcome["early"].values()]
    reference = (min(r.reward for r in everything), max(r.tax for r in everything))
    print(f"\n## seed {seed} ({outcome['wall'] / 60:.0f} min)\n")
    print(
        f"SFT reward {sft.reward:+.3f}, aligned reward {aligned.reward:+.3f} and tax {100 * aligned.tax:.1f} points. "
        f"Hypervolume reference: reward {reference[0]:+.3f}, tax {100 * reference[1]:.1f} points.\n"
    )
    print("| family | points | hypervolume | vs MA, a in A | dominated by MA (grid 0..1) |")
    print("|---|---|---|---|---|")
    volumes = {}
    for family in FAMILIES:
        mine = [p.row for p in points if p.family == family]
        if family == "MA, a in A":
            mine = [r for r in ma if round(r.mean_alpha, 3) in MEAN_ALPHAS]
        if not mine:
            continue
        volume = hypervolume([(r.reward, r.tax) for r in mine + [sft, aligned]], reference)
        volumes[family] = volume
        beaten = (
            "—" if family.startswith("MA,") or family == "MA" else f"{sum(dominated(r, ma) for r in mine)}/{len(mine)}"
        )
        print(
            f"| {family} | {len(mine)} | {volume:.4f} | {_share(volume, volumes.get('MA, a in A', 0.0))} | {beaten} |"
        )
    print("\nAt a = 0.8 (every eps of a searched family):\n")
    print("| family | candidate | ratios | reward | tax (points) |")
    print("|---|---|---|---|---|")
    for family in FAMILIES:
        for p in points:
            if p.family == family and p.a == 0.8:
                print(
                    f"| {family} | {p.row.label} | {_ratios(p, outcome)} | {p.row.reward:+.3f} ± "
                    f"{p.row.reward_stderr:.3f} | {100 * p.row.tax:.1f} |"
                )
    _ablations(outcome, ma)
    return volumes


def _share(volume: float, of: float) -> str:
    return f"{volume / of:.3f}" if of > 0 else "—"


def _ratios(point: Point, outcome: dict) -> str:
    candidate = outcome["records"][point.row.id]
    values = candidate.alphas or ([candidate.alpha] if candidate.alpha is not None else [])
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def _ablations(outcome: dict, ma: list[SweepRow]) -> None:
    points, nll = outcome["points"], outcome["nll"]
    scored = [p for p in points if p.row.id in nll and p.row.mean_alpha not in (0.0, 1.0)]
    xs = [nll[p.row.id] for p in scored]
    print(
        "\n(i) response NLL of held-out top-reward samples (the HMA objective) vs reward and tax, "
        f"{len(scored)} points (MA, scoped MA, HMA, search; a in (0, 1)):"
    )
    print(
        f"    Spearman rho(NLL, reward) = {spearman(xs, [p.row.reward for p in scored]):+.2f}, "
        f"rho(NLL, tax) = {spearman(xs, [p.row.tax for p in scored]):+.2f}"
    )
    print(
        "    at equal a, HMA minus the MA of its scope (plain MA for scope all, scoped MA for the paper's): "
        "NLL, reward, tax (points):"
    )
    baseline = {("MA", round(r.mean_alpha, 3)): r for r in ma}
    baseline |= {("MA paper scope", p.a): p.row for p in points if p.family == "MA paper scope"}
    for family, scope in (
        ("HMA paper", "MA paper scope"),
        ("HMA paper, lab lr", "MA paper scope"),
        ("HMA taxcut", "MA"),
    ):
        deltas = [
            (p.row.label, nll[p.row.id] - nll[m.id], p.row.reward - m.reward, 100 * (p.row.tax - m.tax))
            for p in scored
            if p.family == family
            for m in [baseline.get((scope, p.a))]
            if m is not None and m.id in nll
        ]
        if deltas and all(abs(d) < 1e-4 and abs(r) < 1e-3 and abs(t) < 0.05 for _, d, r, t in deltas):
            print(f"      {family:18s} all {len(deltas)} points: |dNLL| < 1e-4, |dreward| < 0.001, |dtax| < 0.05")
            continue
        for label, d, r, t in deltas:
            print(f"      {family:18s} {label:36s} dNLL {d:+.4f}  dreward {r:+.3f}  dtax {t:+.1f}")
    ma_at = {round(r.mean_alpha, 3): r for r in ma}
    print("\n(ii) the taxcut fit's ratios after step s, evaluated (MA at the same a for comparison):")
    print("| a | step | ratios | reward | tax (points) | MA reward | MA tax |")
    print("|---|---|---|---|---|---|---|")
    for (alpha, step), row in outcome["early"].items():
        m = ma_at[alpha]
        print(
            f"| {alpha} | {step} | {outcome['steps'][(alpha, step)]} | {row.reward:+.3f} | {100 * row.tax:.1f} | "
            f"{m.reward:+.3f} | {100 * m.tax:.1f} |"
        )
    print("\n(iii) HMA taxcut, loss on the response only vs on prompt + response:")
    print("| a | response: reward | tax | prompt+response: reward | tax |")
    print("|---|---|---|---|---|")
    response = {p.a: p.row for p in points if p.family == "HMA taxcut"}
    both = {p.a: p.row for p in points if p.family == LOSS_ABLATION}
    for a in MEAN_ALPHAS:
        if a in response and a in both:
            print(
                f"| {a} | {response[a].reward:+.3f} | {100 * response[a].tax:.1f} | {both[a].reward:+.3f} | "
                f"{100 * both[a].tax:.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labs", type=Path, help="a folder of labs seed-S (default: the user's cache)")
    parser.add_argument("--work", type=Path, help="where fit sets and sweeps go (default: a new temporary folder)")
    parser.add_argument("--quick", action="store_true", help="the quick lab: checks the script, shows nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)  # on shared cores one thread per process runs faster than two fighting
    work = args.work or Path(tempfile.mkdtemp(prefix="taxcut-hma-bench-"))
    print(f"# bench/hma_lab.py: seeds {args.seeds}, work folder {work}")
    volumes = {}
    for seed in args.seeds:
        volumes[seed] = report(run_seed(seed, args.labs, work, args.quick))
    print("\n## hypervolume relative to MA at a in A (plus the SFT and aligned models), per seed\n")
    print("| family | " + " | ".join(f"seed {s}" for s in volumes) + " |")
    print("|---|" + "---|" * len(volumes))
    for family in FAMILIES:
        print(
            f"| {family} | "
            + " | ".join(_share(v[family], v["MA, a in A"]) if family in v else "—" for v in volumes.values())
            + " |"
        )


if __name__ == "__main__":
    main()
