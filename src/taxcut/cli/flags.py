"""Flags built from the specs' pydantic fields (mergekit's way: a loop over ``model_fields``), the parsers of
their values, and the specs read back from the flags given."""

from __future__ import annotations

import argparse
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from taxcut.errors import TaxcutError
from taxcut.io.destination import destination_path
from taxcut.spec.fit import SettingError
from taxcut.spec.merge import MergeSpec, NameRule, apply_overrides, read_spec_file, spec_from_dict

MERGE_FLAGS = tuple(name for name in MergeSpec.model_fields if name != "fit")  # `out`: declared per command
PAIR_ONLY = (
    "sft",
    "aligned",
    "alpha",
    "alphas",
    "layer_alphas",
    "profile",
    "block_bounds",
    "rules",
    "extrapolate",
    "files_from",
)  # what applies to averaging a pair, not to a spec with 'method:'
RATIO_GROUP = ("alpha", "alphas", "layer_alphas", "profile")  # exactly one (MergeSpec checks it too)


def add_field_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    names: tuple[str, ...] | None = None,
    *,
    required: bool = True,
    exclusive: tuple[str, ...] = (),
) -> None:
    """One flag per field of ``model`` (``names``: those only; the required first):
    ``batch_size`` is ``--batch-size`` (or the field's ``flag``), its description the help, its annotation the
    type (a ``Literal`` gives choices, a list of numbers is written ``X1,X2,...``, a bool is a switch). A flag
    left out is None: the model's default (or the spec file's field) applies. ``required``: whether required
    fields are required flags (not where a spec file may give them); ``exclusive``: fields given one at a time."""
    fields = model.model_fields
    chosen = sorted(names or fields, key=lambda name: not fields[name].is_required())
    group = parser.add_mutually_exclusive_group() if exclusive else None
    for name in chosen:
        field = fields[name]
        target = group if name in exclusive else parser
        target.add_argument(
            flag_of(model, name),
            dest=name,
            required=required and field.is_required(),
            help=_help(field),
            **_value_options(field),
        )


def flag_of(model: type[BaseModel], name: str) -> str:
    """The flag of a field: ``--batch-size`` for ``batch_size``, or the ``flag`` its schema extra names."""
    return _extra(model.model_fields[name]).get("flag", f"--{name.replace('_', '-')}")


def _extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _help(field: FieldInfo) -> str:
    shown = field.default not in (None, False, []) and not field.is_required()
    return (field.description or "") + (f" (default: {field.default})" if shown else "")


def _value_options(field: FieldInfo) -> dict[str, Any]:
    """How argparse reads a field's value, from its annotation (``None`` in a union only means 'optional')."""
    options = {"metavar": _extra(field)["metavar"]} if "metavar" in _extra(field) else {}
    annotation = field.annotation
    union = get_origin(annotation) in (Union, types.UnionType)
    parts = [part for part in get_args(annotation) if part is not type(None)] if union else [annotation]
    lists = [get_args(part)[0] for part in parts if get_origin(part) is list]
    if len(parts) == 1 and get_origin(parts[0]) is Literal:
        return {**options, "choices": list(get_args(parts[0]))}
    if parts == [bool]:
        return {"action": "store_true", "default": None}
    if lists and lists[0] is NameRule:  # --rule GLOB=A, repeatable
        return {**options, "action": "append", "type": parse_rule}
    if lists and get_origin(lists[0]) is tuple:
        return {**options, "type": parse_bounds}
    if lists:  # numbers, or a word like 'paper'
        words = [word for part in parts if get_origin(part) is Literal for word in get_args(part)]
        return {**options, "type": floats_or(words)}
    return {**options, "type": parts[0] if len(parts) == 1 else str}


def settings_from_args(model: type[BaseModel], args: argparse.Namespace):
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


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The flags given among ``names``, paths as text (as a spec file writes them)."""
    values = ((name, getattr(args, name, None)) for name in names)
    return {name: str(value) if isinstance(value, Path) else value for name, value in values if value is not None}


def spec_from_args(args: argparse.Namespace) -> MergeSpec:
    """The spec file (if any) with the flags given on the command line laid over it."""
    if args.out is not None:  # an empty --out (an unset shell variable) is refused, never the current folder
        destination_path(args.out, "--out")
    overrides = _given(args, MERGE_FLAGS)
    base = read_spec_file(args.spec) if args.spec is not None else {}
    source = str(args.spec) if args.spec is not None else "command line"
    for required in ("sft", "aligned"):
        if required not in base and required not in overrides:
            raise TaxcutError(
                f"{source}: no {required} model: pass --{required} DIR or set '{required}:' in a spec file"
            )
    return spec_from_dict(apply_overrides(base, overrides), source=source)


def merge_spec_from_args(args: argparse.Namespace):
    """The spec that ``merge``/``plan``/``export-mergekit`` act on: a toolkit spec (a file with ``method:``; only
    the output flags apply) or a merge spec with the flags laid over it."""
    fields = read_spec_file(args.spec) if args.spec is not None else {}
    if args.spec is None or ("method" not in fields and "merge_method" not in fields):
        return spec_from_args(args)
    from taxcut.spec.mergekit_config import MergekitConfig, is_mergekit_config
    from taxcut.spec.toolkit import ToolkitSpec

    averaging_only = [flag_of(MergeSpec, name) for name in PAIR_ONLY if getattr(args, name, None) is not None]
    if averaging_only:
        raise TaxcutError(
            f"{args.spec}: a spec with 'method:' takes --out, --dtype, --max-shard-size and "
            "--allow-tokenizer-mismatch; "
            f"{', '.join(averaging_only)} apply to averaging an sft/aligned pair"
        )
    if getattr(args, "out", None) is not None:
        destination_path(args.out, "--out")
    overrides = _given(args, ("out", "dtype", "max_shard_size", "allow_tokenizer_mismatch"))
    if is_mergekit_config(fields):  # a mergekit config as it is: --dtype is its out_dtype (its dtype: the working one)
        if "dtype" in overrides:
            overrides["out_dtype"] = overrides.pop("dtype")
        return MergekitConfig.from_yaml(args.spec, overrides)
    return ToolkitSpec.from_yaml(args.spec, overrides)


def ray_executor(spec, address: str):
    """The executor spec with Ray at ``address`` (empty: the spec's address, or Ray's default), keeping its other
    Ray settings."""
    from taxcut.spec.execution import RaySettings

    ray = spec.ray or RaySettings()
    return spec.model_copy(update={"ray": ray.model_copy(update={"address": address}) if address else ray})


def parse_out(text: str) -> Path:
    """A destination flag: an empty value (an unset shell variable) is refused, never read as the current folder."""
    try:
        return destination_path(text, "--out")
    except TaxcutError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_floats(text: str) -> list[float]:
    """``X1,X2,...``; an empty element (``0,0.1,,0.2``, a trailing comma) is refused, never skipped."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        empty = any(not part.strip() for part in text.split(","))
        problem = "a value between commas is empty" if empty else "expected numbers separated by commas"
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}: write e.g. 0,0.1,0.2") from None


def floats_or(words: list[str]):
    """:func:`parse_floats`, or one of ``words`` as it is."""

    def parse(text: str) -> list[float] | str:
        return text if text in words else parse_floats(text)

    return parse


def parse_bounds(text: str) -> list[tuple[int, int]]:
    pairs = []
    for part in text.split(","):
        first, sep, last = part.partition("-")
        if not (sep and first.strip().isdigit() and last.strip().isdigit()):
            raise argparse.ArgumentTypeError(f"expected first-last layer pairs like 0-7,8-15, got {text!r}")
        pairs.append((int(first), int(last)))
    return pairs


def parse_rule(text: str) -> dict[str, Any]:
    pattern, _, value = text.rpartition("=")
    try:
        alpha = float(value)
    except ValueError:
        alpha = None
    if not pattern or alpha is None:
        raise argparse.ArgumentTypeError(f"expected GLOB=RATIO like 'lm_head.*=0.5', got {text!r}")
    return {"match": pattern, "alpha": alpha}
