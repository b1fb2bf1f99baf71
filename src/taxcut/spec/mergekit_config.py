"""A mergekit YAML config, read as it is (``merge_method`` marks one), and mergekit's rules for its parameter values.

mergekit (arcee-ai/mergekit, 0.1.5) gives each parameter as a scalar, a *gradient* (a list interpolated over the
decoder layers) or a list of ``{filter: ..., value: ...}`` conditions; :func:`evaluate_setting` and
:func:`layer_t` are exact ports of ``mergekit.config.evaluate_setting`` and of the ``t`` its planner gives each
layer, so a tensor gets the value mergekit gives it:

- layer ``i`` of ``L`` gets ``t = i / (L - 1)`` (1 when L = 1); every tensor outside the layers (embeddings, final
  norm, head) gets ``t = 0``, the gradient's FIRST value;
- a gradient ``[v0 .. vn]`` at ``t``: ``s = t * n``, ``i = int(s)``, ``(1 - (s - i)) * v[i] + (s - i) * v[i + 1]``
  (booleans and strings pick ``v[int(t * n)]``);
- conditions are tried in order; ``filter`` matches when it is a SUBSTRING of the tensor name (no glob, no regex),
  is ``*`` or is absent; when none matches the next source is asked (a model's own parameters, then the top-level
  ``parameters``), then the method's default.

What taxcut does not run is refused by name, never ignored: ``slices``/``layer_range`` (frankenmerges),
``modules``, a ``tokenizer`` section, ``chat_template``, ``tokenizer_source: union``, ``model+lora`` references and
any unknown field. Which ``merge_method`` values run is the methods' business (:mod:`taxcut.merging.request`).
Relative model paths are relative to the config file, as in every taxcut spec (mergekit reads them from the current
folder).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, field_validator, model_validator

from taxcut.errors import TaxcutError
from taxcut.io.destination import destination_path
from taxcut.io.yaml_file import read_yaml_mapping
from taxcut.spec.merge import ShardedOutput, spec_from_dict
from taxcut.spec.spec_file import file_relative, model_relative

Scalar = StrictBool | int | float | str
ScalarOrGradient = Scalar | list[Scalar]

# mergekit fields taxcut does not run, and what to do instead.
REFUSED_FIELDS = {
    "slices": "'slices' (layer_range frankenmerges) stack layers of several models; taxcut merges whole models "
    "tensor by tensor: list them under 'models'",
    "modules": "'modules' (per-module merges of multimodal models) is not run by taxcut: list the models under "
    "'models'",
    "tokenizer": "a 'tokenizer' section (building a new vocabulary) is not run by taxcut: merge models that share a "
    "tokenizer, with 'tokenizer_source: base' or a model name",
    "chat_template": "'chat_template' is not applied by taxcut: the output keeps the chosen model's chat template",
}


class Condition(BaseModel):
    """One ``{filter: ..., value: ...}`` entry: ``filter`` is matched as a substring of the tensor name."""

    model_config = ConfigDict(extra="forbid")

    value: ScalarOrGradient
    filter: str | None = None


Setting = Condition | list[Condition] | ScalarOrGradient


class MergekitModel(BaseModel):
    """One entry of ``models``: a folder or Hub ID (``org/name[@revision]``) and its own parameters."""

    model_config = ConfigDict(extra="forbid")

    model: str
    parameters: dict[str, Setting] | None = None

    @field_validator("model")
    @classmethod
    def _no_lora(cls, value: str) -> str:
        if "+" in value:
            raise ValueError(
                f"'{value}': mergekit's model+lora syntax is not read by taxcut; give the LoRA adapter "
                "folder itself as the model (taxcut applies it to its base)"
            )
        return value


class MergekitConfig(ShardedOutput):
    """A mergekit config as written (``out``, ``max_shard_size`` and ``allow_tokenizer_mismatch`` are taxcut's own,
    from the command line). :meth:`with_parameter` replaces one top-level parameter (a scalar or a gradient), what a
    sweep along the config's own axis changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    merge_method: str
    models: list[MergekitModel]
    base_model: str | None = None
    parameters: dict[str, Setting] | None = None
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    out_dtype: Literal["float32", "float16", "bfloat16"] | None = None
    tokenizer_source: str | None = None
    out: Path | None = None
    max_shard_size: int | str = "5GB"
    allow_tokenizer_mismatch: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in REFUSED_FIELDS.items():
                if key in data:
                    raise ValueError(why)
            for key in ("dtype", "out_dtype"):
                if isinstance(data.get(key), str):
                    data = {**data, key: data[key].removeprefix("torch.")}
        return data

    @field_validator("tokenizer_source")
    @classmethod
    def _tokenizer(cls, value: str | None) -> str | None:
        if value == "union":
            raise ValueError(
                "'union' (a vocabulary built from every model's) is not run by taxcut; use 'base' or a "
                "model name, with models that share a tokenizer"
            )
        return value

    @field_validator("models")
    @classmethod
    def _some(cls, value: list[MergekitModel]) -> list[MergekitModel]:
        if not value:
            raise ValueError("lists no model")
        return value

    def inputs(self) -> list[str]:
        """mergekit's input order: the models as listed, then the base model unless it is one of them."""
        names = [m.model for m in self.models]
        return names + ([self.base_model] if self.base_model is not None and self.base_model not in names else [])

    def sources(self, model: str | None) -> list[dict[str, Setting]]:
        """Where a parameter is looked up, highest precedence first: the model's own ``parameters`` (for per-model
        parameters), then the top-level ones."""
        own = [m.parameters for m in self.models if model is not None and m.model == model]
        return [s for s in own + [self.parameters] if s is not None]

    def with_parameter(self, name: str, value: ScalarOrGradient) -> MergekitConfig:
        """The same config with top-level parameter ``name`` set to ``value`` (a scalar or a gradient)."""
        return self.model_copy(update={"parameters": {**(self.parameters or {}), name: value}})

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> MergekitConfig:
        """Read a mergekit config; relative model paths are relative to the file's folder (Hub IDs stay)."""
        path = Path(path)
        data = read_yaml_mapping(path)
        return cls.from_dict(data, path.parent, overrides, source=str(path))

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        folder: Path,
        overrides: dict[str, Any] | None = None,
        source: str = "mergekit config",
    ) -> MergekitConfig:
        data = dict(data)
        if "out" in data:
            destination_path(data["out"], f"'out' in {source}")
            data["out"] = file_relative(data["out"], folder)
        for key in ("base_model", "tokenizer_source"):
            if isinstance(data.get(key), str) and data[key] not in ("base", "union"):
                data[key] = model_relative(data[key], folder)
        if isinstance(data.get("models"), list):
            data["models"] = [
                {**m, "model": model_relative(m["model"], folder)}
                if isinstance(m, dict) and isinstance(m.get("model"), str)
                else m
                for m in data["models"]
            ]
        data.update(overrides or {})
        return spec_from_dict(data, source=source, model=cls)


def is_mergekit_config(data: dict[str, Any]) -> bool:
    """Whether a spec file's fields are a mergekit config (it names a ``merge_method``)."""
    return "merge_method" in data


def layer_t(layer: int | None, num_layers: int) -> float:
    """The ``t`` mergekit evaluates gradients at: ``i / (L - 1)`` for layer i of L (1 when L = 1), 0 outside."""
    if layer is None:
        return 0.0
    return layer / (num_layers - 1) if num_layers > 1 else 1.0


def evaluate_setting(tensor_name: str, setting: Any, t: float, validate: Callable[[Any], Any]) -> Any:
    """A parameter's value for ``tensor_name`` at ``t`` (None: no condition matched), exactly as mergekit 0.1.5's
    ``evaluate_setting``: gradients interpolate numbers and pick booleans/strings, conditions match by substring."""
    if isinstance(setting, Condition):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return validate(setting)
    if not setting:
        return None
    if all(isinstance(e, (bool, int, float, str)) for e in setting):
        values = [validate(e) for e in setting]
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in values):
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(setting) - 1)
        low = int(scaled)
        high = min(len(setting) - 1, low + 1)
        frac = scaled - low
        return validate((1 - frac) * values[low] + frac * values[high])
    for condition in setting:
        if condition.filter is None or condition.filter == "*" or (tensor_name and condition.filter in tensor_name):
            return evaluate_setting(tensor_name, condition.value, t, validate)
    return None


def resolve_setting(
    name: str, sources: Iterable[dict[str, Any]], tensor_name: str, t: float, validate: Callable[[Any], Any]
) -> Any:
    """The first source that gives ``name`` a value for this tensor (None: none does)."""
    for scope in sources:
        if name in scope:
            value = evaluate_setting(tensor_name, scope[name], t, validate)
            if value is not None:
                return value
    return None


def check_no_unknown(config: MergekitConfig, known: Iterable[str], method: str) -> None:
    """Refuse a parameter the method does not take, by name (mergekit would ignore it silently)."""
    known = set(known)
    for where, scope in [("parameters", config.parameters)] + [
        (f"models[{i}] ({m.model}).parameters", m.parameters) for i, m in enumerate(config.models)
    ]:
        unknown = sorted(set(scope or {}) - known)
        if unknown:
            raise TaxcutError(
                f"'{where}': '{unknown[0]}' is not a parameter of mergekit's '{method}' (it takes "
                f"{', '.join(sorted(known))})"
            )
