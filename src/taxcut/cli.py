"""The ``taxcut`` command line. Every flag overrides the spec file's field of the same name (its YAML twin)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taxcut.errors import TaxcutError
from taxcut.spec import MergeSpec, read_spec_file, spec_from_dict

_RATIO_FIELDS = ("alpha", "alphas", "layer_alphas", "block_bounds")


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
        print("taxcut: interrupted; nothing was written at the destination", file=sys.stderr)
        return 130
    except OSError as exc:
        if args.debug:
            raise
        print(f"taxcut: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    from taxcut import __version__

    parser = argparse.ArgumentParser(
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
    return parser


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", type=Path, help="a YAML spec; the flags below override its fields")
    parser.add_argument("--sft", type=Path, help="the SFT model folder (a = 0)")
    parser.add_argument("--aligned", type=Path, help="the aligned (RLHF/DPO) model folder (a = 1)")
    parser.add_argument("--out", type=Path, help="the destination folder")
    ratio = parser.add_mutually_exclusive_group()
    ratio.add_argument("--alpha", type=float, help="one ratio for every tensor (MA)")
    ratio.add_argument("--alphas", type=_floats, metavar="A1,A2,...", help="one ratio per block of layers (HMA)")
    ratio.add_argument("--layer-alphas", type=_floats, metavar="A1,...,AL", help="one ratio per decoder layer")
    parser.add_argument("--block-bounds", type=_bounds, metavar="0-7,8-15,...",
                        help="explicit blocks for --alphas: first-last layer of each, inclusive")
    parser.add_argument("--rule", action="append", type=_rule, metavar="GLOB=A", dest="rules",
                        help="give tensors matching GLOB the ratio A (repeatable; first match wins; "
                        "added before the spec's rules)")
    parser.add_argument("--extrapolate", action="store_true", default=None, help="allow ratios outside [0, 1] (ExPO)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="output dtype (default: the inputs')")
    parser.add_argument("--max-shard-size", help="largest output file, e.g. 5GB or 500MB (default 5GB)")
    parser.add_argument("--files-from", choices=["aligned", "sft"], help="whose config/tokenizer files to copy")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def spec_from_args(args: argparse.Namespace) -> MergeSpec:
    """The spec file (if any) with the flags given on the command line laid over it."""
    overrides: dict[str, Any] = {}
    for name in ("sft", "aligned", "out", "alpha", "alphas", "layer_alphas", "block_bounds", "extrapolate",
                 "dtype", "max_shard_size", "files_from"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = str(value) if isinstance(value, Path) else value
    if args.spec is not None:
        base, source = read_spec_file(args.spec), str(args.spec)
    else:
        base, source = {}, "command line"
    if any(name in overrides for name in ("alpha", "alphas", "layer_alphas")):
        for name in _RATIO_FIELDS:  # a ratio flag replaces the file's way of giving ratios
            base.pop(name, None)
    if args.rules:
        base["rules"] = list(args.rules) + list(base.get("rules") or [])
    for required, flag in (("sft", "--sft"), ("aligned", "--aligned")):
        if required not in base and required not in overrides:
            raise TaxcutError(f"{source}: no {required} model: pass {flag} DIR or set '{required}:' in a spec file")
    return spec_from_dict({**base, **overrides}, source=source)


def _run_merge(args: argparse.Namespace) -> int:
    from taxcut import merge

    spec = spec_from_args(args)
    destination = merge(spec, overwrite=args.overwrite, progress=False if args.no_progress else None)
    print(f"wrote {destination}")
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    from taxcut import plan

    with plan(spec_from_args(args)) as merge_plan:
        print(json.dumps(merge_plan.summary(), indent=2) if args.json else merge_plan.render())
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _bounds(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(x) for x in part.split("-", 1)) for part in text.split(",")]  # type: ignore[misc]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected first-last layer pairs like 0-7,8-15, got {text!r}") from None


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
