"""What each ``taxcut`` command does once its flags are parsed (:func:`taxcut.cli.build_parser` wires them)."""

from __future__ import annotations

import argparse
import json

from taxcut.cli.flags import merge_spec_from_args, ray_executor, settings_from_args
from taxcut.errors import TaxcutError
from taxcut.io.destination import check_destination
from taxcut.spec.fit import FitSettings


def merge_command(args: argparse.Namespace) -> int:
    from taxcut import merge

    protect = [("spec", args.spec)] if args.spec is not None else []
    destination = merge(
        merge_spec_from_args(args),
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
        protect=protect,
    )
    print(f"wrote {destination}")
    return 0


def plan_command(args: argparse.Namespace) -> int:
    from taxcut import plan

    with plan(merge_spec_from_args(args)) as merge_plan:
        print(json.dumps(merge_plan.summary(), indent=2) if args.json else merge_plan.render())
    return 0


def sweep_command(args: argparse.Namespace) -> int:
    from taxcut.spec.sweep import SweepSpec
    from taxcut.sweep.report import markdown_table
    from taxcut.sweep.runner import run_sweep

    overrides = {
        k: v
        for k, v in (("out", args.out and str(args.out)), ("select", args.select), ("device", args.device))
        if v is not None
    }
    spec = SweepSpec.from_yaml(args.spec, overrides)
    if args.ray is not None:  # --ray [ADDRESS] over the spec's executor section
        spec = spec.model_copy(update={"executor": ray_executor(spec.executor, args.ray)})
    report = run_sweep(spec, progress=False if args.no_progress else None)
    print(markdown_table(report.rows))
    print(f"Pareto front: {', '.join(row.label for row in report.rows if row.pareto)}")
    noisy = [row.label for row in report.rows if row.pareto_within_noise and not row.pareto]
    if noisy:
        print(f"also on the front within the noise: {', '.join(noisy)}")
    if report.strategy is not None and report.strategy.dropped:
        shares = sorted(set(report.strategy.dropped.values()))
        count = len(report.strategy.dropped)
        print(
            f"successive halving dropped {count} candidate{'s' if count > 1 else ''} early ("
            + ", ".join(
                f"{sum(s == share for s in report.strategy.dropped.values())} at {share:g} of the data"
                for share in shares
            )
            + ")"
        )
    if report.cost is not None:
        print(report.cost.render())
    print(f"plot: {report.plot}   tables: {report.out / 'candidates.csv'}, {report.out / 'candidates.md'}")
    if spec.select is None:
        return 0
    if report.selected is None:
        print(f"selected: no candidate meets {spec.select!r}")
        return 1
    chosen = report.selected
    print(
        f"selected under {spec.select!r}: {chosen.id} ({chosen.label}): reward {chosen.reward:.4f}, "
        f"tax {chosen.tax:.4f}"
    )
    print(f"export it: taxcut export {report.out} --candidate {chosen.id} --out DIR")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from taxcut.evaluation.suite import evaluate_folder
    from taxcut.spec.sweep import load_evaluation

    result = evaluate_folder(args.model, load_evaluation(args.spec), device=args.device)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    if result.reward is not None:
        reward = result.reward
        print(f"reward  {reward.reward:.4f} ± {reward.reward_stderr:.4f}  ({reward.samples} samples)")
    for name, scores in result.tasks.items():
        print(f"{name:<20} " + "  ".join(f"{metric} {value:.4f}" for metric, value in scores.items()))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from taxcut.sweep.runner import export_candidate

    destination = export_candidate(
        args.results, args.candidate, args.out, overwrite=args.overwrite, force=args.force, verify=args.verify
    )
    print(f"wrote {destination}")
    return 0


def sample_command(args: argparse.Namespace) -> int:
    from taxcut.evaluation.generation import GenerationSettings
    from taxcut.hma.sample import sample_fit_set

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, do_sample=True, temperature=args.temperature, seed=args.seed
    )
    from taxcut.execution import open_executor
    from taxcut.spec.execution import ExecutorSpec

    spec = ray_executor(ExecutorSpec(), args.ray) if args.ray is not None else ExecutorSpec()
    with open_executor(spec) as executor:
        kept = sample_fit_set(
            args.model,
            args.prompts,
            args.out,
            n=args.n,
            keep=args.keep,
            reward_model=args.reward_model,
            reward_function=args.reward_function,
            settings=settings,
            device=args.device,
            overwrite=args.overwrite,
            executor=executor,
            shard_size=args.shard_size,
        )
    if kept:
        print(f"wrote {len(kept)} responses to {args.out} (reward {kept[-1]['reward']:.3f} to {kept[0]['reward']:.3f})")
    return 0


def fit_command(args: argparse.Namespace) -> int:
    from taxcut.hma.candidates import eps_search, retain_search
    from taxcut.hma.fit import fit_ratios
    from taxcut.hma.ratios_file import ratios_spec, write_ratios

    settings = settings_from_args(FitSettings, args)
    if args.retain is None and any(w > 0 for w in settings.retain_weights()):
        raise TaxcutError("--retain-weight above 0 needs --retain FILE, the retain set (JSONL text or prompts)")
    # --eps E1,E2,... and --retain-weight W1,W2,...: one fit and one ratios file per (eps, W)
    fits = [one for at_eps in eps_search(settings) for one in retain_search(at_eps)]
    by_eps, by_weight = len(eps_search(settings)) > 1, len(retain_search(settings)) > 1
    outs = [
        args.out.with_name(
            args.out.stem
            + (f"-eps{one.eps:g}" if by_eps else "")
            + (f"-w{one.retain_weight:g}" if by_weight else "")
            + args.out.suffix
        )
        for one in fits
    ]
    inputs = [("sft", args.sft), ("aligned", args.aligned), ("data", args.data), ("retain", args.retain)]
    for out in outs:
        check_destination(out, overwrite=args.overwrite, inputs=inputs, kind="ratios file", folder=False)
    for one, out in zip(fits, outs):
        result = fit_ratios(
            args.sft,
            args.aligned,
            args.data,
            one,
            allow_tokenizer_mismatch=args.allow_tokenizer_mismatch,
            retain=args.retain,
        )
        if not result.is_main_process:
            continue
        write_ratios(
            out,
            ratios_spec(
                result,
                result.settings,
                args.sft,
                args.aligned,
                args.data,
                allow_tokenizer_mismatch=args.allow_tokenizer_mismatch,
                retain=args.retain,
            ),
            overwrite=args.overwrite,
            inputs=inputs,
        )
        weight = f", W {one.retain_weight:g}" if args.retain is not None else ""
        mean = settings.alpha if settings.mean == "fixed" else f"{sum(result.alphas) / len(result.alphas):.4f}"
        print(
            f"wrote {out}: ratios {', '.join(f'{a:.4f}' for a in result.alphas)} (mean {mean}, eps "
            f"{result.settings.eps:.4g}{weight}); merge it with: taxcut merge {out} --out DIR"
        )
    return 0


def export_mergekit_command(args: argparse.Namespace) -> int:
    from taxcut.merging.mergekit import mergekit_yaml

    print(mergekit_yaml(merge_spec_from_args(args)), end="")
    return 0


def lab_build_command(args: argparse.Namespace) -> int:
    from taxcut.lab.build import LabConfig, build_lab
    from taxcut.lab.retain import retain_set

    config = LabConfig.quick(args.seed) if args.quick else LabConfig(seed=args.seed)
    lab = build_lab(config, args.out)
    print(f"lab: {lab.folder}")
    print(f"  sft:     {lab.sft}")
    print(f"  aligned: {lab.aligned} (RAFT checkpoints: {', '.join(p.name for p in lab.checkpoints)})")
    print(f"  tasks:   {', '.join(str(lab.data / f'{t}.jsonl') for t in lab.capability_tasks)}")
    print(f"  reward:  prompts {lab.data / 'chat_prompts.jsonl'}, function taxcut.lab.tasks:reward")
    print(f"  retain:  {retain_set(lab)} (for taxcut fit --retain; none of it an evaluation item)")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from taxcut.lab.demo import run_demo

    run_demo(seed=args.seed, out=args.out, quick=args.quick)
    return 0
