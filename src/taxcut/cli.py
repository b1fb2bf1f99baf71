"""The ``taxcut`` command line. Every flag overrides the spec file's field of the same name (its YAML twin)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from taxcut.errors import TaxcutError, first_line
from taxcut.io.destination import check_destination, destination_path
from taxcut.spec.fit import FitSettings, SettingError
from taxcut.spec.merge import MergeSpec, apply_overrides, read_spec_file, spec_from_dict

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except TaxcutError as exc:
        if args.debug:
            raise
        print(f"taxcut: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"taxcut: interrupted; {getattr(args, 'interrupted', 'nothing was written at the destination')}",
              file=sys.stderr)
        return 130
    except OSError as exc:
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"taxcut: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, the traceback only on request
        if args.debug:
            raise
        print(f"taxcut: internal error: {type(exc).__name__}: {first_line(exc)}; rerun with --debug for the "
              "traceback", file=sys.stderr)
        return 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other error of taxcut."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from taxcut.version import __version__

    parser = _Parser(
        prog="taxcut",
        description="Cut the alignment tax of RLHF by averaging an SFT model with its aligned descendant. "
        "Convention: a weighs the ALIGNED model, theta = (1 - a) * sft + a * aligned.",
    )
    parser.add_argument("--version", action="version", version=f"taxcut {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    merge = commands.add_parser("merge", help="write the averaged model (streaming, tensor by tensor)")
    _add_spec_arguments(merge)
    merge.add_argument("--overwrite", action="store_true", help="replace a non-empty destination folder")
    merge.add_argument("--no-progress", action="store_true", help="no progress bar")
    merge.set_defaults(run=_run_merge)

    plan = commands.add_parser("plan", help="show the layer blocks and each tensor group's ratio (reads headers only)")
    _add_spec_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(run=_run_plan)

    sweep = commands.add_parser("sweep", help="evaluate candidates for reward and tax; Pareto front, plot, tables")
    sweep.add_argument("spec", type=Path, help="a sweep spec (YAML)")
    sweep.add_argument("--out", type=_out, help="the folder for results.jsonl, front.png and the tables")
    sweep.add_argument("--select", metavar="EXPR", help="name the best candidate under a budget, e.g. 'tax<=0.02'")
    sweep.add_argument("--device", choices=["auto", "cpu", "cuda"])
    _add_ray_argument(sweep, "evaluate the candidates")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument("--debug", action="store_true", help="show tracebacks")
    sweep.set_defaults(run=_run_sweep, interrupted="the results measured so far are kept in the sweep's "
                       "results.jsonl: run the same sweep again to resume")

    evaluate = commands.add_parser("eval", help="run a spec's evaluators (reward, tasks) on one model folder")
    evaluate.add_argument("model", type=Path, help="a model folder")
    evaluate.add_argument("spec", type=Path, help="an evaluation spec, or a sweep spec (its 'evaluation' is used)")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")
    evaluate.add_argument("--debug", action="store_true", help="show tracebacks")
    evaluate.set_defaults(run=_run_eval)

    export = commands.add_parser("export", help="write a swept candidate as a model folder (through merge)")
    export.add_argument("results", type=Path, help="a sweep's results.jsonl or its output folder")
    export.add_argument("--candidate", required=True, metavar="ID", help="the candidate id (or a unique prefix)")
    export.add_argument("--out", type=_out, required=True, help="the destination folder")
    export.add_argument("--overwrite", action="store_true", help="replace a model folder taxcut wrote there")
    export.add_argument("--force", action="store_true",
                        help="export although the input models changed since the sweep measured it, or its results "
                        "line does not record them (recorded)")
    export.add_argument("--verify", choices=["sample", "full"], default="sample",
                        help="compare the inputs with what was measured by sampled content hashes (default), or by "
                        "whole-file SHA-256 (reads every byte; needs a sweep run with 'input_hashes: full')")
    export.add_argument("--debug", action="store_true", help="show tracebacks")
    export.set_defaults(run=_run_export)

    sample = commands.add_parser("sample", help="HMA's fit set: the best-reward responses of the aligned model")
    sample.add_argument("--model", type=Path, required=True, help="the aligned model folder")
    sample.add_argument("--prompts", type=Path, required=True, help="JSONL with 'prompt' or 'messages'")
    scorer = sample.add_mutually_exclusive_group(required=True)
    scorer.add_argument("--reward-model", type=Path, help="a reward model folder (sequence classifier)")
    scorer.add_argument("--reward-function", metavar="MODULE:FUNCTION", help="a reward callable")
    sample.add_argument("--n", type=int, default=8, help="responses sampled per prompt")
    sample.add_argument("--keep", type=int, required=True, help="how many of the best to keep, over all prompts")
    sample.add_argument("--out", type=_out, required=True, help="the fit set (JSONL: prompt, response, reward)")
    sample.add_argument("--overwrite", action="store_true", help="replace a fit set taxcut wrote there")
    sample.add_argument("--max-new-tokens", type=int, default=64)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    sample.add_argument("--shard-size", type=int, default=32,
                        help="prompts per shard: a worker's unit of work (default: 32)")
    _add_ray_argument(sample, "sample the shards")
    sample.add_argument("--debug", action="store_true", help="show tracebacks")
    sample.set_defaults(run=_run_sample)

    fit = commands.add_parser("fit", help="learn HMA block ratios (mean held at a) from a fit set")
    fit.add_argument("--sft", type=Path, required=True)
    fit.add_argument("--aligned", type=Path, required=True)
    fit.add_argument("--data", type=Path, required=True, help="the fit set (JSONL: prompt, response)")
    fit.add_argument("--retain", type=Path, metavar="FILE",
                     help="the retain set of the tax term W * KL(SFT || merged) (JSONL: text, or prompt and optional "
                     "response; no labels; disjoint from your evaluation items); see --retain-weight")
    _add_settings_options(fit, FitSettings)  # --alpha, --blocks, ..., --device: one flag per field
    fit.add_argument("--out", type=_out, required=True, help="the ratios file (a merge spec) to write")
    fit.add_argument("--allow-tokenizer-mismatch", action="store_true",
                     help="fit although the models' tokenizer files give the same text other token ids (the ratios "
                     "file then allows it too)")
    fit.add_argument("--overwrite", action="store_true", help="replace a ratios file taxcut wrote there")
    fit.add_argument("--debug", action="store_true", help="show tracebacks")
    fit.set_defaults(run=_run_fit)

    mergekit = commands.add_parser("export-mergekit", help="print the mergekit YAML that reproduces a spec")
    _add_spec_arguments(mergekit)  # a merge spec, a ratios file from `taxcut fit`, or a toolkit spec
    mergekit.set_defaults(run=_run_export_mergekit)

    lab = commands.add_parser("lab", help="the built-in alignment lab (a tiny SFT model aligned with RAFT)")
    lab_commands = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)
    build = lab_commands.add_parser("build", help="build (or reuse) a lab: SFT model, RAFT checkpoints, data")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--out", type=_out, help="the lab folder (default: the user's cache)")
    build.add_argument("--quick", action="store_true", help="a reduced lab that builds in seconds")
    build.add_argument("--debug", action="store_true", help="show tracebacks")
    build.set_defaults(run=_run_lab_build)

    demo = commands.add_parser("demo", help="the whole story on the lab: alignment tax, MA/HMA, Pareto front")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", type=_out, default=Path("demo-output"), help="where the sweep, plot and tables go")
    demo.add_argument("--quick", action="store_true", help="a reduced lab (seconds; too small to show much)")
    demo.add_argument("--debug", action="store_true", help="show tracebacks")
    demo.set_defaults(run=_run_demo)
    return parser


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", type=Path, help="a YAML spec; the flags below override its fields")
    parser.add_argument("--sft", type=Path, help="the SFT model folder (a = 0)")
    parser.add_argument("--aligned", type=Path, help="the aligned (RLHF/DPO) model folder (a = 1)")
    parser.add_argument("--out", help="the destination folder")
    ratio = parser.add_mutually_exclusive_group()
    ratio.add_argument("--alpha", type=float, help="one ratio for every tensor (MA)")
    ratio.add_argument("--alphas", type=_floats, metavar="A1,A2,...", help="one ratio per block of layers (HMA)")
    ratio.add_argument("--layer-alphas", type=_floats, metavar="A1,...,AL", help="one ratio per decoder layer")
    ratio.add_argument("--profile", type=_floats, metavar="ALPHA,BETA",
                       help="depth profile (LiNeS): layer l of L gets clip(ALPHA + BETA * l / (L - 1), 0, 1)")
    parser.add_argument("--block-bounds", type=_bounds, metavar="0-7,8-15,...",
                        help="explicit blocks for --alphas: first-last layer of each, inclusive")
    parser.add_argument("--rule", action="append", type=_rule, metavar="GLOB=A", dest="rules",
                        help="give tensors matching GLOB the ratio A (repeatable; first match wins; "
                        "added before the spec's rules)")
    parser.add_argument("--extrapolate", action="store_true", default=None, help="allow ratios outside [0, 1] (ExPO)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="output dtype (default: the inputs')")
    parser.add_argument("--max-shard-size", help="largest output file, e.g. 5GB or 500MB (default 5GB)")
    parser.add_argument("--files-from", choices=["aligned", "sft"], help="whose config/tokenizer files to copy")
    parser.add_argument("--allow-tokenizer-mismatch", action="store_true", default=None,
                        help="merge although the models' tokenizer files give the same text other token ids")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def spec_from_args(args: argparse.Namespace) -> MergeSpec:
    """The spec file (if any) with the flags given on the command line laid over it."""
    overrides: dict[str, Any] = {}
    if args.out is not None:  # an empty --out (an unset shell variable) is refused, never the current folder
        destination_path(args.out, "--out")
    for name in ("sft", "aligned", "out", "alpha", "alphas", "layer_alphas", "profile", "block_bounds", "extrapolate",
                 "dtype", "max_shard_size", "files_from", "rules", "allow_tokenizer_mismatch"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = str(value) if isinstance(value, Path) else value
    base = read_spec_file(args.spec) if args.spec is not None else {}
    source = str(args.spec) if args.spec is not None else "command line"
    for required, flag in (("sft", "--sft"), ("aligned", "--aligned")):
        if required not in base and required not in overrides:
            raise TaxcutError(f"{source}: no {required} model: pass {flag} DIR or set '{required}:' in a spec file")
    return spec_from_dict(apply_overrides(base, overrides), source=source)


def merge_spec_from_args(args: argparse.Namespace):
    """The spec that ``merge``/``plan``/``export-mergekit`` act on: a toolkit spec (a file with ``method:``; only
    the output flags apply) or a merge spec with the flags laid over it."""
    fields = read_spec_file(args.spec) if args.spec is not None else {}
    if args.spec is None or ("method" not in fields and "merge_method" not in fields):
        return spec_from_args(args)
    from taxcut.spec.mergekit_config import MergekitConfig, is_mergekit_config
    from taxcut.spec.toolkit import ToolkitSpec

    averaging_only = [flag for flag, name in (("--sft", "sft"), ("--aligned", "aligned"), ("--alpha", "alpha"),
                                              ("--alphas", "alphas"), ("--layer-alphas", "layer_alphas"),
                                              ("--profile", "profile"),
                                              ("--block-bounds", "block_bounds"), ("--rule", "rules"),
                                              ("--extrapolate", "extrapolate"), ("--files-from", "files_from"))
                      if getattr(args, name, None) is not None]
    if averaging_only:
        raise TaxcutError(f"{args.spec}: a spec with 'method:' takes --out, --dtype, --max-shard-size and "
                          "--allow-tokenizer-mismatch; "
                          f"{', '.join(averaging_only)} apply to averaging an sft/aligned pair")
    if getattr(args, "out", None) is not None:
        destination_path(args.out, "--out")
    overrides = {key: str(value) if isinstance(value, Path) else value for key, value in
                 (("out", getattr(args, "out", None)), ("dtype", getattr(args, "dtype", None)),
                  ("max_shard_size", getattr(args, "max_shard_size", None)),
                  ("allow_tokenizer_mismatch", getattr(args, "allow_tokenizer_mismatch", None))) if value is not None}
    if is_mergekit_config(fields):  # a mergekit config as it is: --dtype is its out_dtype (its dtype: the working one)
        if "dtype" in overrides:
            overrides["out_dtype"] = overrides.pop("dtype")
        return MergekitConfig.from_yaml(args.spec, overrides)
    return ToolkitSpec.from_yaml(args.spec, overrides)


def _run_merge(args: argparse.Namespace) -> int:
    from taxcut import merge

    protect = [("spec", args.spec)] if args.spec is not None else []
    destination = merge(merge_spec_from_args(args), overwrite=args.overwrite,
                        progress=False if args.no_progress else None, protect=protect)
    print(f"wrote {destination}")
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    from taxcut import plan

    with plan(merge_spec_from_args(args)) as merge_plan:
        print(json.dumps(merge_plan.summary(), indent=2) if args.json else merge_plan.render())
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    from taxcut.spec.sweep import SweepSpec
    from taxcut.sweep.report import markdown_table
    from taxcut.sweep.runner import run_sweep

    overrides = {k: v for k, v in (("out", args.out and str(args.out)), ("select", args.select),
                                   ("device", args.device)) if v is not None}
    spec = SweepSpec.from_yaml(args.spec, overrides)
    if args.ray is not None:  # --ray [ADDRESS] over the spec's executor section
        spec = spec.model_copy(update={"executor": _ray_executor(spec.executor, args.ray)})
    report = run_sweep(spec, progress=False if args.no_progress else None)
    print(markdown_table(report.rows))
    print(f"Pareto front: {', '.join(row.label for row in report.rows if row.pareto)}")
    noisy = [row.label for row in report.rows if row.pareto_within_noise and not row.pareto]
    if noisy:
        print(f"also on the front within the noise: {', '.join(noisy)}")
    if report.strategy is not None and report.strategy.dropped:
        shares = sorted(set(report.strategy.dropped.values()))
        count = len(report.strategy.dropped)
        print(f"successive halving dropped {count} candidate{'s' if count > 1 else ''} early ("
              + ", ".join(f"{sum(s == share for s in report.strategy.dropped.values())} at {share:g} of the data"
                          for share in shares) + ")")
    if report.cost is not None:
        print(report.cost.render())
    print(f"plot: {report.plot}   tables: {report.out / 'candidates.csv'}, {report.out / 'candidates.md'}")
    if spec.select is None:
        return 0
    if report.selected is None:
        print(f"selected: no candidate meets {spec.select!r}")
        return 1
    chosen = report.selected
    print(f"selected under {spec.select!r}: {chosen.id} ({chosen.label}): reward {chosen.reward:.4f}, "
          f"tax {chosen.tax:.4f}")
    print(f"export it: taxcut export {report.out} --candidate {chosen.id} --out DIR")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
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


def _run_export(args: argparse.Namespace) -> int:
    from taxcut.sweep.runner import export_candidate

    destination = export_candidate(args.results, args.candidate, args.out, overwrite=args.overwrite,
                                   force=args.force, verify=args.verify)
    print(f"wrote {destination}")
    return 0


def _run_sample(args: argparse.Namespace) -> int:
    from taxcut.evaluation.generation import GenerationSettings
    from taxcut.hma.sample import sample_fit_set

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=args.temperature,
                                  seed=args.seed)
    from taxcut.execution import open_executor
    from taxcut.spec.executor import ExecutorSpec

    spec = _ray_executor(ExecutorSpec(), args.ray) if args.ray is not None else ExecutorSpec()
    with open_executor(spec) as executor:
        kept = sample_fit_set(args.model, args.prompts, args.out, n=args.n, keep=args.keep,
                              reward_model=args.reward_model, reward_function=args.reward_function,
                              settings=settings, device=args.device, overwrite=args.overwrite, executor=executor,
                              shard_size=args.shard_size)
    if kept:
        print(f"wrote {len(kept)} responses to {args.out} (reward {kept[-1]['reward']:.3f} to {kept[0]['reward']:.3f})")
    return 0


def _run_fit(args: argparse.Namespace) -> int:
    from taxcut.hma.candidates import eps_search, retain_search
    from taxcut.hma.fit import fit_ratios
    from taxcut.hma.ratios_file import ratios_spec, write_ratios

    settings = _settings_from_args(FitSettings, args)
    if args.retain is None and any(w > 0 for w in settings.retain_weights()):
        raise TaxcutError("--retain-weight above 0 needs --retain FILE, the retain set (JSONL text or prompts)")
    # --eps E1,E2,... and --retain-weight W1,W2,...: one fit and one ratios file per (eps, W)
    fits = [one for at_eps in eps_search(settings) for one in retain_search(at_eps)]
    by_eps, by_weight = len(eps_search(settings)) > 1, len(retain_search(settings)) > 1
    outs = [args.out.with_name(args.out.stem + (f"-eps{one.eps:g}" if by_eps else "")
                               + (f"-w{one.retain_weight:g}" if by_weight else "") + args.out.suffix) for one in fits]
    inputs = [("sft", args.sft), ("aligned", args.aligned), ("data", args.data), ("retain", args.retain)]
    for out in outs:
        check_destination(out, overwrite=args.overwrite, inputs=inputs, kind="ratios file", folder=False)
    for one, out in zip(fits, outs):
        result = fit_ratios(args.sft, args.aligned, args.data, one,
                            allow_tokenizer_mismatch=args.allow_tokenizer_mismatch, retain=args.retain)
        if not result.is_main_process:
            continue
        write_ratios(out, ratios_spec(result, result.settings, args.sft, args.aligned, args.data,
                                      allow_tokenizer_mismatch=args.allow_tokenizer_mismatch, retain=args.retain),
                     overwrite=args.overwrite, inputs=inputs)
        weight = f", W {one.retain_weight:g}" if args.retain is not None else ""
        mean = settings.alpha if settings.mean == "fixed" else f"{sum(result.alphas) / len(result.alphas):.4f}"
        print(f"wrote {out}: ratios {', '.join(f'{a:.4f}' for a in result.alphas)} (mean {mean}, eps "
              f"{result.settings.eps:.4g}{weight}); merge it with: taxcut merge {out} --out DIR")
    return 0


def _add_ray_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help=f"{what} on Ray workers: a cluster's ADDRESS ('auto': the one 'ray start' began), or "
                        "none: a running cluster if there is one, else a new one on this machine (pip install "
                        "'taxcut[ray]')")


def _ray_executor(spec, address: str):
    """The executor spec with Ray at ``address`` (empty: the spec's address, or Ray's default), keeping its other
    Ray settings."""
    from taxcut.spec.executor import RaySettings

    ray = spec.ray or RaySettings()
    return spec.model_copy(update={"ray": ray.model_copy(update={"address": address}) if address else ray})


def _add_settings_options(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per field of a settings model: ``batch_size`` is ``--batch-size``, the field's description its
    help, its annotation the type (a ``Literal`` gives choices; a list of numbers is written ``X1,X2,...``). Flags
    left out take the model's defaults (see :func:`_settings_from_args`). Required flags come first."""
    for name, field in sorted(model.model_fields.items(), key=lambda item: not item[1].is_required()):
        annotation, options = field.annotation, {}
        if get_origin(annotation) is Literal:
            options["choices"] = list(get_args(annotation))
        elif list in (get_origin(part) for part in get_args(annotation)):  # numbers, or a word like 'paper'
            words = [word for part in get_args(annotation) if get_origin(part) is Literal for word in get_args(part)]
            options["type"] = _floats_or(words)
        else:
            options["type"] = annotation
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "metavar" in extra:
            options["metavar"] = extra["metavar"]
        default = "" if field.is_required() else f" (default: {field.default})"
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=field.is_required(),
                            help=(field.description or "") + default, **options)


def _settings_from_args(model: type[BaseModel], args: argparse.Namespace):
    """The settings model from the flags given; a bad value is one line naming its flag."""
    given = {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}
    try:
        return model(**given)
    except SettingError as exc:
        if not exc.setting:
            raise
        value = exc.value
        shown = ",".join(f"{v:g}" for v in value) if isinstance(value, list) else value
        raise TaxcutError(f"--{exc.setting.replace('_', '-')} {shown}: {exc.problem}") from None


def _run_export_mergekit(args: argparse.Namespace) -> int:
    from taxcut.merging.mergekit import mergekit_yaml

    print(mergekit_yaml(merge_spec_from_args(args)), end="")
    return 0


def _run_lab_build(args: argparse.Namespace) -> int:
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


def _run_demo(args: argparse.Namespace) -> int:
    from taxcut.lab.demo import run_demo

    run_demo(seed=args.seed, out=args.out, quick=args.quick)
    return 0


def _out(text: str) -> Path:
    """A destination flag: an empty value (an unset shell variable) is refused, never read as the current folder."""
    try:
        return destination_path(text, "--out")
    except TaxcutError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _floats(text: str) -> list[float]:
    """``X1,X2,...``; an empty element (``0,0.1,,0.2``, a trailing comma) is refused, never skipped."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        empty = any(not part.strip() for part in text.split(","))
        problem = "a value between commas is empty" if empty else "expected numbers separated by commas"
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}: write e.g. 0,0.1,0.2") from None


def _floats_or(words: list[str]):
    """``_floats``, or one of ``words`` as it is."""
    def parse(text: str) -> list[float] | str:
        return text if text in words else _floats(text)

    return parse


def _bounds(text: str) -> list[tuple[int, int]]:
    pairs = []
    for part in text.split(","):
        first, sep, last = part.partition("-")
        if not (sep and first.strip().isdigit() and last.strip().isdigit()):
            raise argparse.ArgumentTypeError(f"expected first-last layer pairs like 0-7,8-15, got {text!r}")
        pairs.append((int(first), int(last)))
    return pairs


def _rule(text: str) -> dict[str, Any]:
    pattern, _, value = text.rpartition("=")
    try:
        alpha = float(value)
    except ValueError:
        alpha = None
    if not pattern or alpha is None:
        raise argparse.ArgumentTypeError(f"expected GLOB=RATIO like 'lm_head.*=0.5', got {text!r}")
    return {"match": pattern, "alpha": alpha}


if __name__ == "__main__":
    sys.exit(main())
