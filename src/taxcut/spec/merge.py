"""The typed merge spec: one pydantic model, read from and written to YAML, that every CLI flag overrides.

Ratios follow taxcut's convention: ``a`` weighs the ALIGNED model, ``theta = (1 - a) * sft + a * aligned``
(the paper's reference code weighs the SFT model instead; its ``alpha=0.2`` is our ``a=0.8``).

Exactly one of four ways gives the ratio of the decoder layers:

- ``alpha``: one ratio for every tensor (model averaging, MA);
- ``alphas: [a1, ..., aK]``: one ratio per block of contiguous decoder layers (heterogeneous model averaging, HMA).
  Without ``block_bounds`` the L layers are split into K near-equal blocks whose boundaries fall at
  ``floor(k * L / K + 1/2)`` for k = 1..K-1; for 32 layers and K = 3 that is 0-10 / 11-20 / 21-31 as in the paper.
  ``block_bounds: [[0, 7], [8, 15], [16, 25]]`` (first and last layer of each block, inclusive) gives any other
  split, e.g. the paper's 26-layer one;
- ``layer_alphas``: one ratio per decoder layer;
- ``profile: [alpha, beta]``: a depth profile as LiNeS (Wang et al., ICLR 2025, arXiv 2410.17146) scales the
  update: layer l of L gets ``clip(alpha + beta * l / (L - 1), 0, 1)``, l = 0 the bottom (L = 1: ``alpha``)
  (:func:`profile_ratios`); it is resolved to ``layer_alphas`` once L is known.

Tensors outside the decoder layers: with ``alpha`` they get ``alpha``; otherwise embeddings get the first block's
(first layer's) ratio and everything else (final norm, lm_head) the mean ratio -- for a ``profile``, ``alpha`` and
the mean of its per-layer ratios (measured: see :attr:`RatioFields.profile`). ``rules`` override all of that:
a list of ``{match: GLOB | regex: REGEX, alpha: A}`` tried in order against each tensor name, first match wins.
"""

from __future__ import annotations

import math
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from taxcut.errors import TaxcutError
from taxcut.io.destination import destination_path
from taxcut.io.yaml_file import read_yaml_mapping
from taxcut.spec.fit import FitRecord
from taxcut.spec.spec_file import file_relative, model_relative

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(value: int | str) -> int:
    """Bytes from ``5000000``, ``"500MB"`` or ``"2GiB"`` (decimal units as in Hugging Face, binary with ``i``)."""
    if isinstance(value, int):
        size = value
    else:
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        unit = found.group(2).upper() if found else None
        if not found or unit not in _SIZE_UNITS:
            raise ValueError(f"cannot read {value!r} as a size: write e.g. 5GB, 500MB or 2GiB")
        size = int(float(found.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError("must be a positive size")
    return size


class NameRule(BaseModel):
    """Give every tensor whose name matches ``match`` (a glob) or ``regex`` (a full-match regex) the ratio ``alpha``."""

    model_config = ConfigDict(extra="forbid")

    match: str | None = None
    regex: str | None = None
    alpha: float

    @field_validator("alpha", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, got true/false")
        return value

    @model_validator(mode="after")
    def _one_pattern(self) -> NameRule:
        if (self.match is None) == (self.regex is None):
            raise ValueError("a rule needs exactly one of 'match' (a glob) or 'regex'")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        return self

    @property
    def pattern(self) -> str:
        return self.match if self.match is not None else f"re:{self.regex}"

    def matches(self, tensor_name: str) -> bool:
        if self.match is not None:
            return fnmatchcase(tensor_name, self.match)
        return re.fullmatch(self.regex, tensor_name) is not None


class ShardedOutput(BaseModel):
    """A spec that writes a model: its ``max_shard_size`` (each spec declares the field) is checked when read and
    given in bytes by :attr:`max_shard_bytes`."""

    @field_validator("max_shard_size", check_fields=False)
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        parse_size(value)
        return value

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)


class RatioFields(BaseModel):
    """The ratio fields, declared once: a merge spec and a sweep candidate give their ratios with these (see the
    module docstring). Which combinations are valid is checked where the ratios are used (:class:`MergeSpec`)."""

    model_config = ConfigDict(extra="forbid")

    # each description is also the help of its flag (taxcut.cli builds the flags from these fields)
    alpha: float | None = Field(None, description="one ratio for every tensor (MA)")
    alphas: list[float] | None = Field(
        None, description="one ratio per block of layers (HMA)", json_schema_extra={"metavar": "A1,A2,..."}
    )
    block_bounds: list[tuple[int, int]] | None = Field(
        None,
        description="explicit blocks for --alphas: first-last layer of each, inclusive",
        json_schema_extra={"metavar": "0-7,8-15,..."},
    )
    layer_alphas: list[float] | None = Field(
        None, description="one ratio per decoder layer", json_schema_extra={"metavar": "A1,...,AL"}
    )
    profile: list[float] | None = Field(
        None,
        description="depth profile (LiNeS): layer l of L gets clip(ALPHA + BETA * l / (L - 1), 0, 1)",
        json_schema_extra={"metavar": "ALPHA,BETA"},
    )
    """``[alpha, beta]``: layer l of L gets ``clip(alpha + beta * l / (L - 1), 0, 1)`` (LiNeS), i.e. exactly
    ``layer_alphas`` of those ratios: embeddings (the bottom) get ``alpha``, final norm and lm_head the mean of the
    per-layer ratios; a tied embedding/lm_head, one tensor, gets ``alpha``. Measured on the lab (seed 0, 12 profiles,
    alpha 0-0.6 x beta 0.2-1; hypervolume relative to MA's): this 1.080, the mean everywhere 1.079, ``alpha``
    everywhere (LiNeS's code, whose heads are not merged) 1.055, the SFT model's 0.996 -- the head side needs
    the aligned model's weights more than the bottom layers do."""
    rules: list[NameRule] = Field(
        [],
        description="give tensors matching GLOB the ratio A (repeatable; first match wins; added before the "
        "spec's rules)",
        json_schema_extra={"flag": "--rule", "metavar": "GLOB=A"},
    )

    def ratio_fields(self) -> dict[str, Any]:
        """The ratio fields that are set, as plain data (``rules`` only when there are some)."""
        data = self.model_dump(mode="json", include=set(RATIO_FIELDS), exclude_none=True)
        if not data.get("rules"):
            data.pop("rules", None)
        return data

    @property
    def mean_alpha(self) -> float | None:
        """The mean ratio ``a`` of the decoder layers (HMA keeps this equal to MA's ``a``); None without ratios."""
        if self.alpha is not None:
            return self.alpha
        if self.profile is not None:
            return profile_mean(*self.profile)
        values = self.alphas if self.alphas is not None else self.layer_alphas
        return sum(values) / len(values) if values else None


RATIO_FIELDS = tuple(RatioFields.model_fields)  # alpha, alphas, block_bounds, layer_alphas, profile, rules
ONE_RATIO_PER = ("alpha", "alphas", "layer_alphas", "profile")  # the ways of giving the layers' ratios: exactly one


def profile_ratios(alpha: float, beta: float, num_layers: int) -> list[float]:
    """The ratio of each of ``num_layers`` decoder layers under the depth profile ``[alpha, beta]`` (LiNeS):
    ``clip(alpha + beta * l / (L - 1), 0, 1)``, bottom (l = 0) first; one layer gets ``alpha``."""
    if num_layers == 1:
        return [min(1.0, max(0.0, alpha))]
    return [min(1.0, max(0.0, alpha + beta * layer / (num_layers - 1))) for layer in range(num_layers)]


def profile_mean(alpha: float, beta: float) -> float:
    """The mean ratio of a depth profile, without the number of layers: the mean of the clipped line over depth
    [0, 1]. Exactly the mean over any L >= 2 layers when nothing is clipped (``alpha + beta / 2``)."""

    def at(x: float) -> float:
        return min(1.0, max(0.0, alpha + beta * x))

    cuts = sorted({0.0, 1.0, *(x for x in ((-alpha / beta, (1 - alpha) / beta) if beta else ()) if 0 < x < 1)})
    return sum((right - left) * (at(left) + at(right)) / 2 for left, right in zip(cuts, cuts[1:]))


class MergeSpec(RatioFields, ShardedOutput):
    """What to merge, how, and where to write it. See the module docstring for the ratio conventions."""

    model_config = ConfigDict(extra="forbid")

    sft: Path = Field(description="the SFT model folder (a = 0)")
    aligned: Path = Field(description="the aligned (RLHF/DPO) model folder (a = 1)")
    out: Path | None = Field(None, description="the destination folder")

    extrapolate: bool = Field(False, description="allow ratios outside [0, 1] (ExPO)")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="output dtype (default: the inputs')"
    )
    max_shard_size: int | str = Field("5GB", description="largest output file, e.g. 5GB or 500MB")
    files_from: Literal["aligned", "sft"] = Field("aligned", description="whose config/tokenizer files to copy")
    allow_tokenizer_mismatch: bool = Field(
        False, description="merge although the models' tokenizer files give the same text other token ids"
    )
    fit: FitRecord | None = None  # how learned ratios were fitted (written by `taxcut fit`; not used to merge)

    @field_validator("sft", "aligned", "out")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator(
        "alpha",
        "alphas",
        "layer_alphas",
        "profile",
        "max_shard_size",
        "extrapolate",
        "allow_tokenizer_mismatch",
        mode="before",
    )
    @classmethod
    def _no_booleans(cls, value: Any, info) -> Any:
        values = value if isinstance(value, list) else [value]
        flag = info.field_name in ("extrapolate", "allow_tokenizer_mismatch")
        if not flag and any(isinstance(v, bool) for v in values):
            raise ValueError("expected a number, got true/false")
        if flag and not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value

    @model_validator(mode="after")
    def _check_ratios(self) -> MergeSpec:
        given = [name for name in ONE_RATIO_PER if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'alpha', 'alphas' (per block) or 'layer_alphas' (per layer); got "
                + (", ".join(repr(g) for g in given) or "none")
                + " (or 'profile: [alpha, beta]', a depth profile)"
            )
        for field_name, values in (("alphas", self.alphas), ("layer_alphas", self.layer_alphas)):
            if values is not None and not values:
                raise ValueError(f"'{field_name}' is empty: give at least one ratio")
        if self.block_bounds is not None:
            self._check_block_bounds()
        if self.profile is not None:
            self._check_profile()
        for where, value in self._all_ratios():
            if not math.isfinite(value):
                raise ValueError(f"{where} = {value} is not a finite number")
            if not self.extrapolate and not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"{where} = {value} is outside [0, 1]; set 'extrapolate: true' (on the command line: "
                    "--extrapolate) to extrapolate past a model (ExPO)"
                )
        return self

    def _check_block_bounds(self) -> None:
        bounds = self.block_bounds or []
        if self.alphas is None:
            raise ValueError("'block_bounds' goes with 'alphas' (one ratio per block)")
        if len(bounds) != len(self.alphas):
            raise ValueError(f"'block_bounds' has {len(bounds)} blocks but 'alphas' has {len(self.alphas)} ratios")
        expected_first = 0
        for index, (first, last) in enumerate(bounds):
            if first != expected_first or last < first:
                raise ValueError(
                    f"'block_bounds[{index}]' = [{first}, {last}]: blocks must be contiguous, start at layer 0 and "
                    f"list [first, last] inclusive (this block should start at {expected_first})"
                )
            expected_first = last + 1

    def _check_profile(self) -> None:
        """``[alpha, beta]``, finite, alpha in [0, 1]; any beta (the ratios are clipped to [0, 1], so
        'extrapolate' does not apply)."""
        if len(self.profile) != 2:
            raise ValueError(
                f"'profile' has {len(self.profile)} values: give two, [alpha, beta] (bottom layer's "
                "ratio, and how much it rises to the top layer)"
            )
        for name, value in zip(("alpha", "beta"), self.profile):
            if not math.isfinite(value):
                raise ValueError(f"'profile' {name} = {value} is not a finite number")
        if not 0.0 <= self.profile[0] <= 1.0:
            raise ValueError(f"'profile' alpha = {self.profile[0]} is outside [0, 1]: it is the bottom layer's ratio")

    def _all_ratios(self) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        if self.alpha is not None:
            found.append(("'alpha'", self.alpha))
        for field_name in ("alphas", "layer_alphas"):
            for index, value in enumerate(getattr(self, field_name) or []):
                found.append((f"'{field_name}[{index}]'", value))
        for index, rule in enumerate(self.rules):
            found.append((f"'rules[{index}].alpha'", rule.alpha))
        return found

    # --- YAML -------------------------------------------------------------------------------------------------

    def to_yaml(self) -> str:
        dumped = self.model_dump(mode="json", exclude_defaults=True)
        data = {"sft": str(self.sft), "aligned": str(self.aligned)}  # always written, first
        data.update((key, dumped.pop(key)) for key in ("out",) if key in dumped)
        data.update(dumped)
        if self.fit is not None:  # the fit record whole, its default-valued settings included
            data["fit"] = self.fit.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> MergeSpec:
        """Read a spec file; relative paths in it are relative to the file's folder. ``overrides`` win."""
        data = apply_overrides(read_spec_file(Path(path)), overrides or {})
        return spec_from_dict(data, source=str(path))


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A spec file's fields with ``overrides`` (the command line's flags) laid over them.

    A ratio given as an override (``alpha``, ``alphas`` or ``layer_alphas``) replaces the file's way of giving
    ratios, ``block_bounds`` included; override ``rules`` come before the file's rules.
    """
    merged = dict(data)
    if any(name in overrides for name in ONE_RATIO_PER):
        for name in RATIO_FIELDS:
            if name != "rules":
                merged.pop(name, None)
    for key, value in overrides.items():
        if key == "rules" and "rules" in merged:
            if isinstance(merged["rules"], list):
                merged["rules"] = list(value) + merged["rules"]
            # otherwise the file's malformed 'rules' stays, for validation to name it
        else:
            merged[key] = value
    return merged


def read_spec_file(path: Path) -> dict[str, Any]:
    """The fields of a YAML spec file, its relative model paths made relative to the file's folder (a Hub repo ID
    stays as written)."""
    data = read_yaml_mapping(path)
    for key in ("sft", "aligned"):
        if key in data:
            data[key] = model_relative(data[key], path.parent)
    if "out" in data:
        destination_path(data["out"], f"'out' in {path}")  # an empty 'out:' must not become the spec's folder
        data["out"] = file_relative(data["out"], path.parent)
    return data


def spec_from_dict(data: dict[str, Any], source: str = "spec", model: type[BaseModel] | None = None):
    """Validate ``data`` into a spec (a :class:`MergeSpec` unless ``model`` says otherwise), turning pydantic's
    report into one line naming the field."""
    try:
        return (model or MergeSpec).model_validate(data)
    except ValidationError as exc:
        raise TaxcutError(f"{source}: {describe_validation_error(exc)}") from None
    except TaxcutError as exc:
        raise TaxcutError(f"{source}: {exc}") from None


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "is required"
    elif first["type"] == "extra_forbidden":
        message = "is not a known field (check its spelling)"
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    return f"field '{field}' {message}{more}" if field else f"{message}{more}"
