"""From a spec to a :class:`~taxcut.methods.request.MergeRequest`: the method it names (or that owns its type),
the inputs with their roles, the method's validated parameters, and the output settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taxcut.errors import TaxcutError
from taxcut.io.hub import as_recorded
from taxcut.merging.mergekit_input import mergekit_request
from taxcut.methods.registry import method_for_spec
from taxcut.methods.request import MergeRequest, ModelInput
from taxcut.spec.mergekit_config import MergekitConfig
from taxcut.spec.toolkit import ToolkitSpec


def request_for(spec: Any) -> MergeRequest:
    """The request of a toolkit spec (a named method over N models) or of a spec owned by a method (MA/HMA)."""
    if isinstance(spec, MergekitConfig):
        return mergekit_request(spec)
    method = method_for_spec(spec)
    if isinstance(spec, ToolkitSpec):
        request = _toolkit_request(method, spec)
    else:
        request = method.request_from_spec(spec)
    method.validate(request)
    return request


def _toolkit_request(method, spec: ToolkitSpec) -> MergeRequest:
    if method.needs_base and spec.base is None:
        raise TaxcutError(f"method '{method.name}' works on task vectors: give a 'base' model")
    if not method.needs_base and spec.base is not None:
        raise TaxcutError(f"method '{method.name}' takes no 'base' model; list every input under 'models'")
    count = len(spec.models)
    if count < method.min_models or (method.max_models is not None and count > method.max_models):
        wanted = (
            f"exactly {method.min_models}"
            if method.max_models == method.min_models
            else f"at least {method.min_models}"
        )
        raise TaxcutError(f"method '{method.name}' takes {wanted} model(s) in 'models'; got {count}")
    inputs = ([ModelInput("base", spec.base)] if spec.base is not None else []) + [
        ModelInput(f"model {i + 1}", m.path, m.weight) for i, m in enumerate(spec.models)
    ]
    return MergeRequest(
        method=method,
        inputs=tuple(inputs),
        parameters=method.parameters(spec.parameters),
        out=spec.out,
        dtype=spec.dtype,
        max_shard_bytes=spec.max_shard_bytes,
        spec=spec,
        evaluation=spec.evaluation,
    )


def spec_record(request: MergeRequest) -> dict[str, Any]:
    """The spec as executed, with absolute paths (what the provenance file records): a prepare step's choices
    (ingredients, learned coefficients) included."""
    spec = request.spec
    if isinstance(spec, ToolkitSpec):
        models = [{"path": str(as_recorded(m.path)), "weight": m.weight} for m in request.models]
        record = spec.model_dump(mode="json")
        record.update(models=models, parameters=request.parameters.dump())
        if request.base is not None:
            record["base"] = str(as_recorded(request.base.path))
        return record
    if isinstance(spec, MergekitConfig):  # the config as written, its models by resolved path or Hub commit
        record = spec.model_dump(mode="json", exclude_none=True)
        recorded = {name: str(as_recorded(Path(name))) for name in spec.inputs()}
        record["models"] = [{**m, "model": recorded[m["model"]]} for m in record["models"]]
        if spec.base_model is not None:
            record["base_model"] = recorded[spec.base_model]
        return record
    paths = {
        key: getattr(spec, key).expanduser().resolve() if key == "out" else as_recorded(getattr(spec, key))
        for key in ("sft", "aligned", "out")
        if getattr(spec, key, None) is not None
    }
    return spec.model_copy(update=paths).model_dump(mode="json")
