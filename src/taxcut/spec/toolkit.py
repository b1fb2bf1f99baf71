"""The spec of the merging toolkit: a named method over N models (and a base model where the method needs one).

```yaml
method: ...                        # a method registered in taxcut.methods (see `taxcut plan SPEC`)
base: models/base                  # the methods on task vectors need it (theta_i - theta_base)
models:
  - models/ft-math                 # a folder or a Hub ID (org/name[@revision]), or {path: ..., weight: ...}
  - {path: models/ft-code, weight: 0.5}
parameters: {density: 0.2, lambda: 1.0}
out: merged/
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from taxcut.io.destination import destination_path
from taxcut.io.yaml_file import read_yaml_mapping
from taxcut.spec.evaluation import EvaluationSpec
from taxcut.spec.merge import ShardedOutput, spec_from_dict
from taxcut.spec.spec_file import file_relative, model_relative


class ToolkitModel(BaseModel):
    """One model of a toolkit spec's ``models`` list: its folder (or Hub ID) and its weight."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    weight: float = 1.0


class CheckpointSelection(BaseModel):
    """The checkpoints of one run: ``folder`` (its ``checkpoint-*`` subfolders) or a ``glob``, ordered by step;
    all of them, the ``last`` k, or weighted as an exponential moving average with ``ema`` decay."""

    model_config = ConfigDict(extra="forbid")

    folder: Path | None = None
    glob: str | None = None
    last: int | None = Field(None, ge=1)
    ema: float | None = Field(None, gt=0, lt=1)

    def expand(self) -> list[dict]:
        if (self.folder is None) == (self.glob is None):
            raise ValueError("'checkpoints' needs exactly one of 'folder' or 'glob'")
        if self.folder is not None:
            found = [p for p in Path(self.folder).glob("checkpoint-*") if p.is_dir()]
        else:
            pattern = Path(self.glob)
            found = [
                p
                for p in Path(pattern.anchor or ".").glob(str(pattern.relative_to(pattern.anchor or ".")))
                if p.is_dir()
            ]
        found.sort(key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)])
        if self.last is not None:
            found = found[-self.last :]
        if not found:
            raise ValueError(f"no checkpoint folders found for {self.folder or self.glob}")
        if self.ema is None:
            return [{"path": p, "weight": 1.0} for p in found]
        count = len(found)  # ema_t = d * ema_(t-1) + (1 - d) * theta_t, ema_0 = theta_0
        weights = [self.ema ** (count - 1)] + [(1 - self.ema) * self.ema ** (count - 1 - i) for i in range(1, count)]
        return [{"path": p, "weight": w} for p, w in zip(found, weights)]


class ToolkitSpec(ShardedOutput):
    """A named method over N models. ``parameters`` are the method's own (typed and checked by the method when the
    merge is planned: see :mod:`taxcut.methods`); ``evaluation`` is a held-out evaluation for methods that score
    their inputs before merging."""

    model_config = ConfigDict(extra="forbid")

    method: str
    models: list[ToolkitModel] = []
    checkpoints: CheckpointSelection | None = None
    base: Path | None = None
    parameters: dict[str, Any] = {}
    out: Path | None = None
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    max_shard_size: int | str = "5GB"
    evaluation: EvaluationSpec | None = None
    allow_tokenizer_mismatch: StrictBool = False  # merge although the tokenizer files give the same text other ids

    @field_validator("models", mode="before")
    @classmethod
    def _paths_or_mappings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, (str, Path)) else item for item in value]
        return value

    @model_validator(mode="after")
    def _expand_checkpoints(self) -> ToolkitSpec:
        if self.checkpoints is not None:
            if self.models:
                raise ValueError("give 'models' or 'checkpoints', not both")
            self.models = [ToolkitModel(**item) for item in self.checkpoints.expand()]
        if not self.models:
            raise ValueError("no input models: list them under 'models' (or pick them with 'checkpoints')")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> ToolkitSpec:
        """Read a toolkit spec; relative paths are relative to the file's folder."""
        path = Path(path)
        data = read_yaml_mapping(path)

        def fix(value):
            return file_relative(value, path.parent)

        if "out" in data:  # an empty 'out:' must not become the spec's own folder
            destination_path(data["out"], f"'out' in {path}")

        def model(value):  # a Hub repo ID stays as written
            return model_relative(value, path.parent)

        data["base"], data["out"] = model(data.get("base")), fix(data.get("out"))
        if isinstance(data.get("models"), list):
            data["models"] = [
                model(m) if not isinstance(m, dict) else {**m, "path": model(m.get("path"))} for m in data["models"]
            ]
        if isinstance(data.get("parameters"), dict) and isinstance(data["parameters"].get("data"), str):
            data["parameters"]["data"] = fix(data["parameters"]["data"])
        if isinstance(data.get("checkpoints"), dict):
            for key in ("folder", "glob"):
                data["checkpoints"][key] = fix(data["checkpoints"].get(key))
            data["checkpoints"] = {k: v for k, v in data["checkpoints"].items() if v is not None}
        data = {k: v for k, v in data.items() if v is not None}
        data.update(overrides or {})
        spec = spec_from_dict(data, source=str(path), model=cls)
        if spec.evaluation is not None:
            spec = spec.model_copy(update={"evaluation": spec.evaluation.relative_to(path.parent)})
        return spec
