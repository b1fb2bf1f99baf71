"""The settings of an HMA fit, declared once: ``taxcut fit`` builds its flags from :class:`FitSettings` (field
``batch_size`` is ``--batch-size``, its description the help), a sweep's ``hma:`` section reuses
:class:`FitOptions`, and a ratios file records the settings it was fitted with in its ``fit:`` section
(:class:`FitRecord`).

Convention: ``alpha`` (a) weighs the ALIGNED model; the paper's code weighs the SFT model (its ``alpha=0.2`` is
``a = 0.8``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from taxcut.errors import TaxcutError

HMA_RANGE = "HMA needs 0 < a < 1 (its block logits start at logit(a))"


# The paper's settings (Lin et al., EMNLP 2024, Sec. 6, App. B.1 and D.5, and its released script), as
# ``--preset paper``; a setting given explicitly wins over its preset. ``preset: taxcut`` is the fields' defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "taxcut": {},
    "paper": {
        "normalize": "sft",
        "eps": 0.2,
        "scope": "paper",
        "loss": "prompt+response",
        "draw": 0.4,
        "reg": "paper",
        "lr": 2e-5,
        "warmup": 0.03,
        "epochs": 1,
        "batch_size": 1,
    },
}


class FitOptions(BaseModel):
    """How the block ratios are learned, at whatever mean ratio ``a`` and on whatever device.

    Each description says which value is taxcut's default and which the paper's (``preset: paper`` takes all of
    the paper's at once).
    """

    model_config = ConfigDict(extra="forbid")

    preset: Literal["taxcut", "paper"] = Field(
        "taxcut",
        description="defaults for the settings not given: taxcut's, or the paper's (normalize sft, eps "
        "0.2, scope paper, loss prompt+response, draw 0.4, reg paper, lr 2e-5, warmup 0.03, 1 epoch, batch 1)",
    )
    blocks: int = Field(3, description="K, the number of blocks of contiguous decoder layers (taxcut and paper: 3)")
    normalize: Literal["sft", "aligned"] = Field(
        "sft",
        description="which share the block logits normalise: sft (the paper's code, 1 - a_k; taxcut's "
        "default) or aligned (a_k; taxcut's earlier default). Either way every a_k stays in [0, 1], mean a",
    )
    eps: list[float] | float = Field(
        0.05,
        description="bounds the spread of the block ratios (smaller: wider), raised where needed to keep every "
        "ratio in [0, 1]; several values fit one candidate each (the paper searches 0,0.1,...,0.9 and its script "
        "uses 0.2; taxcut: 0.05)",
        json_schema_extra={"metavar": "EPS | E1,...,EN"},
    )
    reg: list[float] | float | Literal["paper"] = Field(
        0.0,
        description="weights w_k of the L1 pull sum_k w_k |a_k - a|: one for every block, one per block, or "
        "paper (the released code's weights, the middle block pinned hardest; taxcut: 0)",
        json_schema_extra={"metavar": "W | W1,...,WK | paper"},
        validate_default=True,
    )  # the default: one per block
    scope: Literal["all", "paper"] = Field(
        "all",
        description="all (taxcut): every tensor follows the blocks; paper: only Linear weights (embeddings "
        "and norms from SFT, lm_head at a)",
    )
    loss: Literal["response", "prompt+response"] = Field(
        "response",
        description="which tokens of each example the likelihood covers: response (taxcut) or "
        "prompt+response (the paper, whose fit set is stored as text)",
    )
    draw: float = Field(
        1.0,
        description="share of the fit set used, drawn at random (seeded): taxcut 1.0 (taxcut sample already "
        "kept the top); the paper 0.4, 2,000 random picks of its top 5,000 (so sample with --keep 2.5x the size)",
    )
    epochs: int = Field(1, description="passes over the fit set (taxcut and paper: 1)")
    batch_size: int = Field(8, description="examples per step (taxcut: 8; paper: 1)")
    lr: float = Field(0.05, description="Adam's learning rate on the K block logits (taxcut: 0.05; paper: 2e-5)")
    warmup: float = Field(
        0.1,
        description="share of the steps that warm the learning rate up, then cosine decay (taxcut: 0.1; paper: 0.03)",
    )
    seed: int = Field(0, description="seeds the model's randomness, the draw and the order of the examples")
    retain_weight: list[float] | float = Field(
        0.0,
        description="W: the loss adds W * KL(SFT || merged) of next-token distributions on the retain set "
        "(taxcut fit --retain FILE), a tax term; several values fit one ratios file each, tracing a front (0: no "
        "term, today's fit)",
        json_schema_extra={"metavar": "W | W1,...,WN"},
    )
    granularity: Literal["block", "layer"] = Field(
        "block", description="one ratio per block of layers (K = blocks, the paper) or one per decoder layer"
    )
    mean: Literal["fixed", "free"] = Field(
        "fixed",
        description="fixed: the ratios' mean held at a (the paper); free: each ratio sigmoid(s) within "
        "[0, 1], starting at a",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset_fills_the_rest(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("preset"), str):
            return {**PRESETS.get(data["preset"], {}), **data}
        return data

    @field_validator(
        "blocks", "eps", "reg", "draw", "epochs", "batch_size", "lr", "warmup", "seed", "retain_weight", mode="before"
    )
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
            raise ValueError("expected a number, got true/false")
        return value

    @field_validator("blocks", "epochs", "batch_size")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("lr")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError("must be a positive finite number")
        return value

    @field_validator("eps")
    @classmethod
    def _eps_values(cls, value: list[float] | float) -> list[float] | float:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("give at least one value")
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError("must be non-negative finite numbers")
        return values[0] if len(values) == 1 else values  # one eps is a number, a search a list

    @field_validator("retain_weight")
    @classmethod
    def _retain_weights(cls, value: list[float] | float) -> list[float] | float:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("give at least one value")
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError("must be non-negative finite numbers")
        return values[0] if len(values) == 1 else values  # one W is a number, a front a list

    @field_validator("draw")
    @classmethod
    def _draw_share(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError("must be a share of the fit set: 0 < draw <= 1")
        return value

    @field_validator("warmup")
    @classmethod
    def _share(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be a share of the steps: 0 <= warmup < 1")
        return value

    @field_validator("reg")
    @classmethod
    def _one_weight_per_block(cls, value: list[float] | float | str, info: ValidationInfo) -> list[float] | float | str:
        if value == "paper":
            return value  # weighed per layer by the fit, which knows the layers
        weights = value if isinstance(value, list) else [value]
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError("weights must be non-negative finite numbers")
        blocks = info.data.get("blocks")
        if blocks is None:  # 'blocks' itself is invalid: reported on its own
            return value
        if len(weights) == 1:
            weights = weights * blocks
        if len(weights) != blocks:
            raise ValueError(f"gives {len(weights)} weights for {blocks} blocks: give one weight, or one per block")
        return weights  # always one weight per block from here on

    def eps_values(self) -> list[float]:
        """The eps values to fit at: one, or the values of an eps search."""
        return self.eps if isinstance(self.eps, list) else [self.eps]

    def retain_weights(self) -> list[float]:
        """The retention weights W to fit at: one, or the values of a front."""
        return self.retain_weight if isinstance(self.retain_weight, list) else [self.retain_weight]

    def options(self) -> dict[str, Any]:
        """The fields of :class:`FitOptions` only (what a sweep's ``hma:`` section shares with ``taxcut fit``)."""
        return self.model_dump(include=set(FitOptions.model_fields))


class FitSettings(FitOptions):
    """Everything ``taxcut fit`` needs besides its inputs: the options, the mean ratio ``alpha`` and the device.

    A bad value is a one-line :class:`SettingError` naming the setting (wherever the settings are read: in Python,
    from flags, from a ratios file).
    """

    alpha: float = Field(
        description="the mean ratio a; a weighs the ALIGNED model (the paper's code: alpha=0.2 means a=0.8)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the fit runs")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SettingError(*first_problem(exc)) from None

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, got true/false")
        return value

    @field_validator("alpha")
    @classmethod
    def _inside(cls, value: float) -> float:
        if not 0.0 < value < 1.0:  # NaN fails too
            raise ValueError(HMA_RANGE)
        return value


class SettingError(TaxcutError):
    """A bad fit setting: which one (``setting``, "" when it is the combination), the value given and the problem,
    so that ``taxcut fit`` can name its flag instead."""

    def __init__(self, setting: str, value: Any, problem: str):
        super().__init__(f"fit setting '{setting}' = {value!r}: {problem}" if setting else problem)
        self.setting, self.value, self.problem = setting, value, problem


def first_problem(exc: ValidationError) -> tuple[str, Any, str]:
    """(field name or "", the value given, what is wrong) of the first problem pydantic found."""
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "is not a known setting"
    return name, first.get("input"), message


class FitRecord(BaseModel):
    """The ``fit:`` section of a ratios file: how its ratios were learned (kept with the spec, not used to merge).

    Only these fields are read (any other is dropped), so only they reach a merged model's provenance.
    """

    model_config = ConfigDict(extra="ignore")

    method: str | None = None
    convention: str | None = None
    settings: FitSettings | None = None
    data: str | None = None  # the fit set
    retain: str | None = None  # the retain set of the KL term (settings.retain_weight is its W)
    retain_kl_first: float | None = None  # KL(SFT || merged) on the retain batches, first and last step
    retain_kl_last: float | None = None
    steps: int | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    loss_curve: list[float] = []
    adjustments: list[str] = []  # what the fit decided beyond its settings, e.g. an eps raised to keep [0, 1]

    @field_validator("settings", mode="before")
    @classmethod
    def _written_before_normalize(cls, value: Any) -> Any:
        """Ratios files written before ``normalize`` existed normalised the aligned share."""
        if isinstance(value, dict) and "normalize" not in value:
            return {**value, "normalize": "aligned"}
        return value
