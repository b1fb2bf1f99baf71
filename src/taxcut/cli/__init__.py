"""The ``taxcut`` command line. Every flag overrides the spec file's field of the same name (its YAML twin).

The flags of ``merge``/``plan``, ``sweep`` and ``fit`` are built from their specs' pydantic fields
(:mod:`taxcut.cli.flags`); what each command does is in :mod:`taxcut.cli.commands`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from taxcut.cli import commands
from taxcut.cli.flags import MERGE_FLAGS, RATIO_GROUP, add_field_flags, parse_out
from taxcut.errors import TaxcutError, first_line
from taxcut.spec.fit import FitSettings
from taxcut.spec.merge import MergeSpec

DEVICES = ["auto", "cpu", "cuda"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``taxcut`` with ``argv`` (default: the process's); return the exit status. Bad input is one line on
    stderr and a non-zero status, never a traceback (unless ``--debug``)."""
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
        print(
            f"taxcut: interrupted; {getattr(args, 'interrupted', 'nothing was written at the destination')}",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"taxcut: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug of ours: one line, the traceback only on request
        if args.debug:
            raise
        print(
            f"taxcut: internal error: {type(exc).__name__}: {first_line(exc)}; rerun with --debug for the traceback",
            file=sys.stderr,
        )
        return 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other error of taxcut."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _command(
    subparsers: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int],
    summary: str,
    *,
    overwrite: str | None = None,
    progress: bool = False,
    **defaults: str,
) -> argparse.ArgumentParser:
    """A command and the flags every command shares, declared here once: ``--debug``; ``--overwrite`` (replace
    the ``overwrite`` that taxcut wrote there) and ``--no-progress`` where they apply."""
    parser = subparsers.add_parser(name, help=summary)
    parser.set_defaults(run=run, **defaults)
    if overwrite is not None:
        parser.add_argument("--overwrite", action="store_true", help=f"replace {overwrite} taxcut wrote there")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (flags, help, and the function each command runs)."""
    from taxcut.version import __version__

    parser = _Parser(
        prog="taxcut",
        description="Cut the alignment tax of RLHF by averaging an SFT model with its aligned descendant. "
        "Convention: a weighs the ALIGNED model, theta = (1 - a) * sft + a * aligned.",
    )
    parser.add_argument("--version", action="version", version=f"taxcut {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_merge_commands(subparsers)
    _add_sweep_commands(subparsers)
    _add_fit_commands(subparsers)
    _add_lab_commands(subparsers)
    return parser


def _add_merge_commands(subparsers: argparse._SubParsersAction) -> None:
    """``merge``, ``plan`` and ``export-mergekit``: a merge spec (or toolkit spec) and its fields' flags."""
    merge = _command(
        subparsers,
        "merge",
        commands.merge_command,
        "write the averaged model (streaming, tensor by tensor)",
        overwrite="a model folder",
        progress=True,
    )
    _add_spec_arguments(merge)
    plan = _command(
        subparsers,
        "plan",
        commands.plan_command,
        "show the layer blocks and each tensor group's ratio (reads headers only)",
    )
    _add_spec_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    mergekit = _command(
        subparsers,
        "export-mergekit",
        commands.export_mergekit_command,
        "print the mergekit YAML that reproduces a spec",
    )
    _add_spec_arguments(mergekit)  # a merge spec, a ratios file from `taxcut fit`, or a toolkit spec


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """A merge spec file and one flag per field of :class:`MergeSpec` (the flags win over the file)."""
    parser.add_argument("spec", nargs="?", type=Path, help="a YAML spec; the flags below override its fields")
    parser.add_argument("--out", help=MergeSpec.model_fields["out"].description)  # checked when the spec is read
    add_field_flags(
        parser, MergeSpec, tuple(name for name in MERGE_FLAGS if name != "out"), required=False, exclusive=RATIO_GROUP
    )


def _add_sweep_commands(subparsers: argparse._SubParsersAction) -> None:
    """``sweep``, ``eval`` and ``export``."""
    from taxcut.spec.sweep import SweepSpec

    sweep = _command(
        subparsers,
        "sweep",
        commands.sweep_command,
        "evaluate candidates for reward and tax; Pareto front, plot, tables",
        progress=True,
        interrupted="the results measured so far are kept in "
        "the sweep's results.jsonl: run the same sweep again to resume",
    )
    sweep.add_argument("spec", type=Path, help="a sweep spec (YAML)")
    sweep.add_argument("--out", type=parse_out, help="the folder for results.jsonl, front.png and the tables")
    add_field_flags(sweep, SweepSpec, ("select", "device"), required=False)
    _add_ray_argument(sweep, "evaluate the candidates")

    evaluate = _command(
        subparsers, "eval", commands.eval_command, "run a spec's evaluators (reward, tasks) on one model folder"
    )
    evaluate.add_argument("model", type=Path, help="a model folder")
    evaluate.add_argument("spec", type=Path, help="an evaluation spec, or a sweep spec (its 'evaluation' is used)")
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")

    export = _command(
        subparsers,
        "export",
        commands.export_command,
        "write a swept candidate as a model folder (through merge)",
        overwrite="a model folder",
    )
    export.add_argument("results", type=Path, help="a sweep's results.jsonl or its output folder")
    export.add_argument("--candidate", required=True, metavar="ID", help="the candidate id (or a unique prefix)")
    export.add_argument("--out", type=parse_out, required=True, help="the destination folder")
    export.add_argument(
        "--force",
        action="store_true",
        help="export although the input models changed since the sweep measured it, or its results "
        "line does not record them (recorded)",
    )
    export.add_argument(
        "--verify",
        choices=["sample", "full"],
        default="sample",
        help="compare the inputs with what was measured by sampled content hashes (default), or by "
        "whole-file SHA-256 (reads every byte; needs a sweep run with 'input_hashes: full')",
    )


def _add_fit_commands(subparsers: argparse._SubParsersAction) -> None:
    """``sample`` (HMA's fit set) and ``fit`` (its flags: one per field of :class:`FitSettings`)."""
    sample = _command(
        subparsers,
        "sample",
        commands.sample_command,
        "HMA's fit set: the best-reward responses of the aligned model",
        overwrite="a fit set",
    )
    sample.add_argument("--model", type=Path, required=True, help="the aligned model folder")
    sample.add_argument("--prompts", type=Path, required=True, help="JSONL with 'prompt' or 'messages'")
    scorer = sample.add_mutually_exclusive_group(required=True)
    scorer.add_argument("--reward-model", type=Path, help="a reward model folder (sequence classifier)")
    scorer.add_argument("--reward-function", metavar="MODULE:FUNCTION", help="a reward callable")
    sample.add_argument("--n", type=int, default=8, help="responses sampled per prompt")
    sample.add_argument("--keep", type=int, required=True, help="how many of the best to keep, over all prompts")
    sample.add_argument("--out", type=parse_out, required=True, help="the fit set (JSONL: prompt, response, reward)")
    sample.add_argument("--max-new-tokens", type=int, default=64)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", choices=DEVICES, default="auto")
    sample.add_argument(
        "--shard-size", type=int, default=32, help="prompts per shard: a worker's unit of work (default: 32)"
    )
    _add_ray_argument(sample, "sample the shards")

    fit = _command(
        subparsers,
        "fit",
        commands.fit_command,
        "learn HMA block ratios (mean held at a) from a fit set",
        overwrite="a ratios file",
    )
    fit.add_argument("--sft", type=Path, required=True)
    fit.add_argument("--aligned", type=Path, required=True)
    fit.add_argument("--data", type=Path, required=True, help="the fit set (JSONL: prompt, response)")
    fit.add_argument(
        "--retain",
        type=Path,
        metavar="FILE",
        help="the retain set of the tax term W * KL(SFT || merged) (JSONL: text, or prompt and optional "
        "response; no labels; disjoint from your evaluation items); see --retain-weight",
    )
    add_field_flags(fit, FitSettings)  # --alpha, --blocks, ..., --device: one flag per field
    fit.add_argument("--out", type=parse_out, required=True, help="the ratios file (a merge spec) to write")
    fit.add_argument(
        "--allow-tokenizer-mismatch",
        action="store_true",
        help="fit although the models' tokenizer files give the same text other token ids (the ratios "
        "file then allows it too)",
    )


def _add_lab_commands(subparsers: argparse._SubParsersAction) -> None:
    """``lab build`` and ``demo``: the built-in alignment lab."""
    lab = subparsers.add_parser("lab", help="the built-in alignment lab (a tiny SFT model aligned with RAFT)")
    lab_commands = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)
    build = _command(
        lab_commands, "build", commands.lab_build_command, "build (or reuse) a lab: SFT model, RAFT checkpoints, data"
    )
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--out", type=parse_out, help="the lab folder (default: the user's cache)")
    build.add_argument("--quick", action="store_true", help="a reduced lab that builds in seconds")

    demo = _command(
        subparsers, "demo", commands.demo_command, "the whole story on the lab: alignment tax, MA/HMA, Pareto front"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", type=parse_out, default=Path("demo-output"), help="where the sweep, plot and tables go")
    demo.add_argument("--quick", action="store_true", help="a reduced lab (seconds; too small to show much)")


def _add_ray_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help=f"{what} on Ray workers: a cluster's ADDRESS ('auto': the one 'ray start' began), or "
        "none: a running cluster if there is one, else a new one on this machine (pip install "
        "'taxcut[ray]')",
    )


if __name__ == "__main__":
    sys.exit(main())
