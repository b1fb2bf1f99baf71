"""The spec of the merging toolkit: a named method over N models (and a base model where the method needs one).

```yaml
method: ties                       # linear, task_arithmetic, ties, dare_linear, dare_ties, slerp, expo, ...
base: models/base                  # the methods on task vectors need it (theta_i - theta_base)
models:
  - models/ft-math                 # a folder, or {path: ..., weight: ...}
  - {path: models/ft-code, weight: 0.5}
parameters: {density: 0.2, lambda: 1.0}
out: merged/
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from taxcut.spec.merge import _read_yaml_mapping, spec_from_dict


class ModelInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    weight: float = 1.0


class ToolkitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str
    models: list[ModelInput]
    base: Path | None = None
    parameters: dict[str, Any] = {}
    out: Path | None = None
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    max_shard_size: int | str = "5GB"

    @field_validator("models", mode="before")
    @classmethod
    def _paths_or_mappings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, (str, Path)) else item for item in value]
        return value

    @model_validator(mode="after")
    def _fits_the_method(self) -> ToolkitSpec:
        from taxcut.methods.registry import get_method

        found = get_method(self.method)
        if found.needs_base and self.base is None:
            raise ValueError(f"method '{self.method}' works on task vectors: give a 'base' model")
        count = len(self.models)
        if count < found.min_models or (found.max_models is not None and count > found.max_models):
            wanted = (f"exactly {found.min_models}" if found.max_models == found.min_models
                      else f"at least {found.min_models}")
            raise ValueError(f"method '{self.method}' takes {wanted} model(s) in 'models'; got {count}")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> ToolkitSpec:
        """Read a toolkit spec; relative paths are relative to the file's folder."""
        path = Path(path)
        data = _read_yaml_mapping(path)

        def fix(value):
            return str(path.parent / value) if isinstance(value, str) and not Path(value).is_absolute() else value

        for key in ("base", "out"):
            data[key] = fix(data.get(key))
        if isinstance(data.get("models"), list):
            data["models"] = [fix(m) if not isinstance(m, dict) else {**m, "path": fix(m.get("path"))}
                              for m in data["models"]]
        data = {k: v for k, v in data.items() if v is not None}
        data.update(overrides or {})
        return spec_from_dict(data, source=str(path), model=cls)
