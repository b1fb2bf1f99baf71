"""A method's parameters, typed (pydantic): the base class and the per-block field types.

:class:`MethodParameters` is the base of every method's parameters. A field typed :data:`PerBlock` (or
:func:`per_block`, which also checks every value) takes one number or a list with one number per block of decoder
layers; such values are resolved per tensor by :class:`taxcut.methods.block_values.BlockValues`, the one resolver
the averaging ratios use too. :func:`describe_parameter_error` makes pydantic's report one line naming the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError


class _PerBlockMarker:
    def __repr__(self) -> str:
        return "PerBlock"


PER_BLOCK = _PerBlockMarker()
#: One number, or a list with one number per block of decoder layers (split like ``alphas``).
PerBlock = Annotated[float | list[float], PER_BLOCK]


class MethodParameters(BaseModel):
    """The base of every method's parameters: unknown fields are refused by name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    @classmethod
    def per_block_fields(cls) -> list[str]:
        """The fields that may hold one value per block of layers."""
        return [name for name, info in cls.model_fields.items() if PER_BLOCK in info.metadata]

    def dump(self) -> dict[str, Any]:
        """The parameters as plain data, by their YAML names (for provenance and ``taxcut plan``)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def per_block(what: str, test: Callable[[float], bool] = lambda value: True):
    """A :data:`PerBlock` field type whose every value must be a finite number passing ``test`` (``what`` says
    what it must be, for the error message)."""

    def check(value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        if not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and test(v) for v in values
        ):
            raise ValueError(f"must be {what} (or a list of them, one per block); got {value!r}")
        return value

    return Annotated[float | list[float], PER_BLOCK, BeforeValidator(check)]


def describe_parameter_error(method: str, exc: ValidationError) -> str:
    """pydantic's report on a method's parameters as one line naming the parameter."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    if first["type"] == "extra_forbidden":
        message = "is not a parameter of this method (check its spelling)"
    elif first["type"] == "missing":
        message = "is required"
    elif first["type"] == "literal_error":
        message = f"is {first['ctx']['expected']}; got {first['input']!r}"
    else:
        message = first["msg"].removeprefix("Value error, ")
    return f"method '{method}': parameter '{field}' {message}" if field else f"method '{method}': {message}"
