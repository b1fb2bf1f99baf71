"""Sweep candidates: what a sweep's ``candidates:`` section asks for, and the candidates it expands to, each one
ratio assignment (given with a merge spec's ratio fields) with a stable id derived from what it is.

Three lists of ratios, three names: ``grid`` is the MA grid (one candidate per a); ``hma.mean_alphas`` are the
a values HMA is fitted at (the mean of its block ratios); a candidate's ``alphas`` are per-block ratios, as in a
merge spec. The old names ``candidates.alphas`` and ``hma.alphas`` still read, with a deprecation message.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from taxcut.errors import TaxcutError
from taxcut.io.hub import as_recorded  # a Hub ID as written, a folder made absolute
from taxcut.spec.fit import HMA_RANGE, FitOptions, FitSettings
from taxcut.spec.merge import MergeSpec, NameRule, RatioFields
from taxcut.spec.mergekit_config import MergekitConfig, ScalarOrGradient

DEFAULT_GRID = [round(0.1 * i, 1) for i in range(11)]
# LiNeS depth profiles [alpha, beta] (a_l = alpha + beta * l / (L - 1), clipped): the front of a 12-profile grid on
# lab seed 0, checked on lab seeds 1 and 2 and the real model by bench/fronts.py (RESULTS.md); a sweep with no
# candidates section measures them beside the MA grid
RECOMMENDED_PROFILES = [[0.0, 0.6], [0.0, 1.0], [0.2, 1.0], [0.4, 1.0], [0.6, 0.6]]

CandidateKind = Literal["MA", "scoped-MA", "blocks", "layers", "LiNeS", "model", "HMA", "search", "mergekit"]
"""MA: one ratio ``a``; scoped-MA: one ratio ``a`` with an HMA fit's scope (e.g. the paper's: embeddings and norms
from SFT), no learning -- what HMA is compared with at equal ``a``; blocks / layers: hand-set per-block / per-layer
ratios (or a ratios file without a fit record); LiNeS: a depth profile ``[alpha, beta]`` (Wang et al., ICLR
2025, arXiv 2410.17146; :func:`taxcut.spec.merge.profile_ratios`); model: a checkpoint evaluated as it is; HMA:
learned block ratios; search: proposed by the black-box search; mergekit: a mergekit config of the two models with
one parameter set to one of the values swept (:class:`MergekitSweep`)."""

_log = logging.getLogger("taxcut")
_announced: set[str] = set()


def renamed_key(data: Any, old: str, new: str, where: str) -> Any:
    """``data`` with its old key ``old`` read as ``new``, announced once per process on stderr."""
    if not isinstance(data, dict) or old not in data:
        return data
    if new in data:
        raise ValueError(f"give '{where}.{new}' only ('{where}.{old}' is its old name)")
    message = f"taxcut: warning: '{where}.{old}' is deprecated; call it '{where}.{new}'"
    if message not in _announced:
        _announced.add(message)
        _log.warning(message)
    renamed = {key: value for key, value in data.items() if key != old}
    renamed[new] = data[old]
    return renamed


class HmaGrid(FitOptions):
    """Fit one HMA candidate at each ``mean_alphas`` value (cached by its inputs) with ``taxcut fit``'s options;
    the device is the sweep's."""

    data: Path
    mean_alphas: list[float] = [round(0.1 * i, 1) for i in range(1, 10)]
    retain: Path | None = None  # the retain set of a tax-aware fit: one candidate per (a, W of retain_weights)

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        data = renamed_key(data, "alphas", "mean_alphas", "candidates.hma")
        if isinstance(data, dict) and "retain_weights" in data:  # the sweep's plural of `fit --retain-weight`
            if "retain_weight" in data:
                raise ValueError("give 'candidates.hma.retain_weights' only")
            data = {**{k: v for k, v in data.items() if k != "retain_weights"}, "retain_weight": data["retain_weights"]}
        return data

    @model_validator(mode="after")
    def _retain_set_given(self) -> HmaGrid:
        if self.retain is None and any(w > 0 for w in self.retain_weights()):
            raise ValueError("'retain_weights' above 0 need 'retain', the retain set (JSONL text or prompts)")
        return self

    @field_validator("mean_alphas")
    @classmethod
    def _inside(cls, values: list[float]) -> list[float]:
        for value in values:
            if not 0.0 < value < 1.0:
                raise ValueError(f"has {value}, but {HMA_RANGE}")
        return values

    def settings(self, alpha: float, device: str) -> FitSettings:
        """The settings of the fit at mean ratio ``alpha``."""
        return FitSettings(alpha=alpha, device=device, **self.options())


class ProfileGrid(BaseModel):
    """Every depth profile ``[alpha, beta]`` with ``alpha`` in ``alpha`` and ``beta`` in ``beta`` (LiNeS)."""

    model_config = ConfigDict(extra="forbid")

    alpha: list[float] = Field(min_length=1)
    beta: list[float] = Field(min_length=1)

    def profiles(self) -> list[list[float]]:
        return [[alpha, beta] for alpha in self.alpha for beta in self.beta]


class SweepOver(BaseModel):
    """The axis of a swept mergekit config: one top-level ``parameter`` and its ``values`` (scalars or gradients)."""

    model_config = ConfigDict(extra="forbid")

    parameter: str
    values: list[ScalarOrGradient] = Field(min_length=1)


class MergekitSweep(BaseModel):
    """``candidates.mergekit``: a mergekit config of the sweep's two models (``config``, relative to the sweep
    spec), one candidate per value of ``sweep_over``. Each is merged as ``taxcut merge CONFIG`` merges the config
    with that value (:mod:`taxcut.merging.mergekit_input`). The config is read once, when the sweep spec is
    (:meth:`bind`): its models become the roles ``sft``/``aligned``, so a candidate's id depends on the config's
    content and the value, not on where the files are."""

    model_config = ConfigDict(extra="forbid")

    config: Path
    sweep_over: SweepOver
    _content: dict | None = PrivateAttr(None)

    def bind(self, sft: Path, aligned: Path) -> None:
        """Read the config and name its models by role; refuse one whose models are not the sweep's two, or that
        sets the swept parameter per model too (a model's own value would win over the swept one)."""
        config = MergekitConfig.from_yaml(self.config)
        roles = {str(as_recorded(aligned)): "aligned", str(as_recorded(sft)): "sft"}
        where = f"candidates.mergekit: {self.config}"
        strangers = [name for name in config.inputs() if str(as_recorded(name)) not in roles]
        if strangers:
            raise TaxcutError(
                f"{where}: model {strangers[0]!r} is neither the sweep's sft ({sft}) nor its aligned "
                "model; a swept config merges those two: name them in the config"
            )
        name = self.sweep_over.parameter
        owners = [m.model for m in config.models if name in (m.parameters or {})]
        if owners:
            raise TaxcutError(
                f"{where}: '{name}' is also set in the parameters of model {owners[0]!r}, which would "
                f"win over the swept value; set '{name}' in the top-level 'parameters' only"
            )
        content = config.model_dump(
            mode="json", exclude_none=True, exclude={"out", "max_shard_size", "allow_tokenizer_mismatch"}
        )
        role = {name: roles[str(as_recorded(name))] for name in config.inputs()}
        content["models"] = [{**m, "model": role[m["model"]]} for m in content["models"]]
        for key in ("base_model", "tokenizer_source"):
            if content.get(key) in role:
                content[key] = role[content[key]]
        self._content = content

    def candidates(self) -> list[Candidate]:
        if self._content is None:
            raise TaxcutError(f"candidates.mergekit: {self.config} was not read with the sweep's models")
        name, method = self.sweep_over.parameter, self._content["merge_method"]
        return [
            Candidate(
                label=f"mergekit {method} {name}={_shown(value)}",
                kind="mergekit",
                mergekit=MergekitCandidate(config=self._content, parameter=name, value=value),
            )
            for value in self.sweep_over.values
        ]


class MergekitCandidate(BaseModel):
    """A mergekit config with its models named by role (``sft``, ``aligned``) and one top-level parameter set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: dict[str, Any]
    parameter: str
    value: ScalarOrGradient

    def merge_config(
        self, sft: Path, aligned: Path, out: Path | None = None, *, allow_tokenizer_mismatch: bool = False
    ) -> MergekitConfig:
        """The config over these two models with the value set: what ``taxcut merge`` runs for the candidate."""
        paths = {"sft": str(sft), "aligned": str(aligned)}
        data = dict(self.config)
        data["models"] = [{**m, "model": paths[m["model"]]} for m in data["models"]]
        for key in ("base_model", "tokenizer_source"):
            if data.get(key) in paths:
                data[key] = paths[data[key]]
        data["allow_tokenizer_mismatch"] = allow_tokenizer_mismatch
        if out is not None:
            data["out"] = str(out)
        config = MergekitConfig.from_dict(data, Path.cwd(), source="candidates.mergekit")
        return config.with_parameter(self.parameter, self.value)


def _shown(value: Any) -> str:
    return _short(value) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


class CandidateGrid(BaseModel):
    """``grid``: the MA grid; ``block_patterns``: per-block ratio lists (HMA-style, same split rule and
    ``block_bounds`` as ``taxcut merge``); ``layer_patterns``: per-layer lists; ``profiles`` (``[[alpha, beta],
    ...]``) and ``profile_grid`` (``{alpha: [...], beta: [...]}``): LiNeS depth profiles, as ``profile`` in a merge
    spec; ``rules`` apply to every candidate; ``models``: other checkpoints of the same architecture evaluated
    as they are (e.g. early-stopping checkpoints of the RLHF run, to compare with averaging); ``ratio_files``:
    ratios files of ``taxcut fit`` (or any merge spec); ``hma``: fit HMA at each of its ``mean_alphas``;
    ``mergekit``: a mergekit config swept along one of its parameters (:class:`MergekitSweep`). The SFT
    model (a = 0) is always evaluated: the tax is measured from it.

    ``strategy: adaptive`` evaluates, instead of the whole grid, ``budget`` full evaluations' worth of candidates
    (under ``fidelity: halving`` one dropped early counts the share of the data it saw) where the front is still
    uncertain (:mod:`taxcut.sweep.adaptive`): MA from ``grid`` if given (else 0, 0.5, 1), each pattern as a
    path through it (a depth profile too: :func:`taxcut.sweep.adaptive.lines_at`), HMA from its ``mean_alphas``
    if given (else 0.5); it stops early when no interval of ``a`` wider than ``resolution`` is left or none can
    add ``tolerance`` of the front's hypervolume, and evaluates ``batch`` candidates per round."""

    model_config = ConfigDict(extra="forbid")

    grid: list[float] = DEFAULT_GRID
    block_patterns: list[list[float]] = []
    block_bounds: list[tuple[int, int]] | None = None
    layer_patterns: list[list[float]] = []
    profiles: list[list[float]] = []
    profile_grid: ProfileGrid | None = None
    rules: list[NameRule] = []
    models: list[Path] = []
    ratio_files: list[Path] = []
    hma: HmaGrid | None = None
    mergekit: MergekitSweep | None = None
    strategy: Literal["grid", "adaptive"] = "grid"
    budget: int = Field(8, ge=3)
    resolution: float = Field(1 / 64, gt=0, le=0.5)
    tolerance: float = Field(0.0, ge=0, lt=1)
    batch: int = Field(1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        return renamed_key(data, "alphas", "grid", "candidates")

    @field_validator("profiles")
    @classmethod
    def _pairs(cls, profiles: list[list[float]]) -> list[list[float]]:
        for profile in profiles:
            if len(profile) != 2:
                raise ValueError(f"has {profile}: give each profile as [alpha, beta]")
        return profiles

    def all_profiles(self) -> list[list[float]]:
        """``profiles``, then ``profile_grid``'s, duplicates removed."""
        grid = self.profile_grid.profiles() if self.profile_grid is not None else []
        return [list(p) for p in dict.fromkeys(tuple(p) for p in [*self.profiles, *grid])]

    @model_validator(mode="after")
    def _adaptive_settings(self) -> CandidateGrid:
        given = sorted({"budget", "resolution", "tolerance", "batch"} & self.model_fields_set)
        if self.strategy != "adaptive" and given:
            raise ValueError(f"'{given[0]}' applies to 'strategy: adaptive'")
        return self


class Candidate(RatioFields):
    """One averaged model to evaluate, given like a merge spec's ratio fields (see :mod:`taxcut.spec.merge`), an
    existing checkpoint evaluated as it is (``model``, kind "model"), or a mergekit config with one parameter set
    (``mergekit``, kind "mergekit")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    kind: CandidateKind
    model: str | None = None
    mergekit: MergekitCandidate | None = None

    def ratio_fields(self) -> dict[str, Any]:
        if self.model is not None:
            return {"model": self.model}
        if self.mergekit is not None:
            return {"mergekit": self.mergekit.model_dump(mode="json")}
        return super().ratio_fields()

    @property
    def id(self) -> str:
        """12 hex digits of the hash of the ratio fields (for a model: its path and weight files' times), so the
        same candidate has the same id in every sweep."""
        identity = self.ratio_fields()
        if self.model is not None:
            from taxcut.io.provenance import weights_identity  # keeps `import taxcut` free of torch

            identity["weights"] = weights_identity(Path(self.model))
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def mean_alpha(self) -> float | None:
        """The mean ratio of the decoder layers; None for a model evaluated as it is or a mergekit config."""
        return None if self.model is not None or self.mergekit is not None else super().mean_alpha

    def merge_spec(
        self,
        sft: Path,
        aligned: Path,
        out: Path | None = None,
        extrapolate: bool = False,
        *,
        allow_tokenizer_mismatch: bool = False,
    ) -> MergeSpec | MergekitConfig:
        """The merge of this candidate; ``allow_tokenizer_mismatch`` as the sweep allows it (the weights are the
        same either way: it only lets the plan accept models whose tokenizers differ). For a mergekit candidate,
        the mergekit config itself (``extrapolate`` does not apply)."""
        if self.mergekit is not None:
            return self.mergekit.merge_config(sft, aligned, out, allow_tokenizer_mismatch=allow_tokenizer_mismatch)
        if self.model is not None:
            raise TaxcutError(
                f"candidate {self.label} is the model folder {self.model} itself; there is nothing to merge"
            )
        return MergeSpec(
            sft=sft,
            aligned=aligned,
            out=out,
            extrapolate=extrapolate,
            allow_tokenizer_mismatch=allow_tokenizer_mismatch,
            **self.ratio_fields(),
        )


def expand_grid(grid: CandidateGrid) -> list[Candidate]:
    """The candidates of a grid, the SFT model (a = 0) first, duplicates removed, in the order given."""
    rules = [rule.model_dump(exclude_none=True) for rule in grid.rules]
    candidates = [ma_candidate(0.0)]  # the SFT model itself, the baseline of the tax (the grid's rules not applied)
    candidates += [ma_candidate(a, rules) for a in grid.grid]
    candidates += [
        Candidate(
            label=with_rules(f"blocks {_short(p)}", rules),
            kind="blocks",
            alphas=p,
            block_bounds=grid.block_bounds,
            rules=rules,
        )
        for p in grid.block_patterns
    ]
    candidates += [
        Candidate(label=with_rules(f"layers {_short(p)}", rules), kind="layers", layer_alphas=p, rules=rules)
        for p in grid.layer_patterns
    ]
    candidates += [profile_candidate(p, rules) for p in grid.all_profiles()]
    candidates += [Candidate(label=Path(m).name, kind="model", model=str(as_recorded(m))) for m in grid.models]
    candidates += [from_ratios_file(Path(path)) for path in grid.ratio_files]
    candidates += grid.mergekit.candidates() if grid.mergekit is not None else []
    unique: dict[str, Candidate] = {}
    for candidate in candidates:
        unique.setdefault(candidate.id, candidate)
    return list(unique.values())


def ma_candidate(alpha: float, rules: list | None = None) -> Candidate:
    return Candidate(label=with_rules(f"MA a={alpha:g}", rules), kind="MA", alpha=alpha, rules=rules or [])


def profile_candidate(profile: list[float], rules: list | None = None, kind: CandidateKind = "LiNeS") -> Candidate:
    """The depth profile ``[alpha, beta]`` as a candidate, labelled "LiNeS a=0.2 b=0.6"."""
    alpha, beta = profile
    return Candidate(
        label=with_rules(f"LiNeS a={alpha:g} b={beta:g}", rules), kind=kind, profile=[alpha, beta], rules=rules or []
    )


def with_rules(label: str, rules: list | None) -> str:
    """``label`` with the name rules it applies shown, so that "MA a=0" and "MA a=0 + lm_head.*=0.5" differ in a
    table: the first two rules, then how many more."""
    if not rules:
        return label
    shown = [f"{_get(r, 'match') or _get(r, 'regex')}={_get(r, 'alpha'):g}" for r in rules[:2]]
    more = f", +{len(rules) - 2} more" if len(rules) > 2 else ""
    return f"{label} + {', '.join(shown)}{more}"


def _get(rule: Any, key: str) -> Any:
    return rule.get(key) if isinstance(rule, dict) else getattr(rule, key)


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def from_ratios_file(path: Path, label: str | None = None) -> Candidate:
    """The ratios of a merge spec file (e.g. written by ``taxcut fit``) as a candidate: kind "HMA" when the file
    records a fit, "LiNeS" when it gives a depth profile, else "blocks"."""
    spec = MergeSpec.from_yaml(path)
    kind = "HMA" if spec.fit else "LiNeS" if spec.profile is not None else "blocks"
    return Candidate(label=label or f"{kind} {path.stem}", kind=kind, **spec.ratio_fields())
