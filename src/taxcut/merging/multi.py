"""The toolkit's engine: a registered method over N models (and a base), one tensor of each model at a time.

Elementwise methods (linear soups, checkpoint averaging, task arithmetic, ExPO, sparse soups) are streamed in 4 MB
chunks of every input, so memory does not grow with tensor size; methods that need whole tensors (TIES, DARE,
SLERP, variance correction) get one whole tensor of every input at a time, so memory grows with the largest
tensor times the number of inputs, never with the model. Writing, staging, side files and provenance are those of
``taxcut merge``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

CHUNK_BYTES = 4 * 2**20  # per input, for the methods streamed chunk by chunk

from taxcut.errors import TaxcutError
from taxcut.io.checkpoint import Checkpoint
from taxcut.io.destination import staged_folder
from taxcut.io.dtypes import TORCH_DTYPES, dtype_label
from taxcut.io.model_folder import copy_side_files, set_config_dtype
from taxcut.io.provenance import fingerprint, write_provenance
from taxcut.io.writer import OutputTensor, ShardWriter, plan_shards, write_index
from taxcut.methods.interpolation import all_finite
from taxcut.io.layers import config_ties_embeddings, detect_layers
from taxcut.merging.plan import stored_tied_heads
from taxcut.methods.registry import get_method
from taxcut.spec.toolkit import ToolkitSpec


def run_method_merge(spec: ToolkitSpec, *, overwrite: bool = False, progress: bool | None = None) -> Path:
    """Write the merge of ``spec`` to ``spec.out``; return the destination."""
    if spec.out is None:
        raise TaxcutError("no destination: give --out DIR (or 'out:' in the spec)")
    method = get_method(spec.method)
    if spec.method == "greedy_soup":  # choose the ingredients first, with the held-out evaluation
        from taxcut.spec.toolkit import ModelInput
        from taxcut.tuning.greedy_soup import greedy_soup

        soup = greedy_soup([m.path for m in spec.models], spec.evaluation, str(spec.parameters["score"]))
        spec = spec.model_copy(update={"models": [ModelInput(path=p) for p in soup.chosen],
                                       "parameters": {**spec.parameters, "greedy": {
                                           "individual": soup.individual,
                                           "trials": [list(t) for t in soup.trials]}}})
    if spec.method == "adamerging" and "coefficients" not in spec.parameters:  # learn them first
        from taxcut.tuning.adamerging import fit_adamerging

        options = {k: spec.parameters[k] for k in ("granularity", "epochs", "batch_size", "lr", "init", "seed")
                   if k in spec.parameters}
        if "data" not in spec.parameters:
            raise TaxcutError("adamerging needs parameters.data: a JSONL file of unlabelled prompts")
        learned = fit_adamerging(spec.base, [m.path for m in spec.models], Path(spec.parameters["data"]), **options)
        fitted = {"coefficients": learned["coefficients"], "layers": learned["layers"],
                  "fit": {"entropy": learned["entropy"], "granularity": learned["granularity"]}}
        spec = spec.model_copy(update={"parameters": {**spec.parameters, **fitted}})
    roles = _roles(spec)
    checkpoints = []
    try:
        for role, folder in roles:
            checkpoints.append(Checkpoint(folder, role))
        reference = checkpoints[0]
        dropped = _check_compatible(roles, checkpoints)
        names = [name for name in reference.tensors if name not in dropped]
        out_dtype = TORCH_DTYPES[spec.dtype] if spec.dtype else None
        dtypes = {n: (out_dtype or reference.tensors[n].dtype) if reference.tensors[n].dtype.is_floating_point
                  else reference.tensors[n].dtype for n in names}
        shards = plan_shards([OutputTensor(n, dtypes[n], reference.tensors[n].shape) for n in names],
                             _size(spec))
        base = checkpoints[0] if spec.base is not None else None
        models = checkpoints[1:] if spec.base is not None else checkpoints
        weights = [m.weight for m in spec.models]
        buffers = [torch.empty(CHUNK_BYTES, dtype=torch.uint8) for _ in range(len(checkpoints) + 1)]
        layers = detect_layers(reference.tensors).num_layers
        with staged_folder(spec.out, overwrite=overwrite, inputs=roles) as staging:
            bar = tqdm(total=len(names), unit="tensor", desc=spec.method,
                       disable=None if progress is None else not progress)
            for shard in shards:
                writer = ShardWriter(staging / shard.file_name, shard)
                try:
                    for out in shard.tensors:
                        for piece in _merge_one(out, models, base, weights, spec, method, buffers, layers):
                            writer.write(piece)
                        bar.update()
                except BaseException:
                    writer.close(complete=False)
                    raise
                writer.close()
            bar.close()
            write_index(staging, shards)
            for folder in reference.side_file_folders:
                copy_side_files(folder, staging, overwrite=True)
            float_dtypes = [dtypes[n] for n in names if dtypes[n].is_floating_point]
            set_config_dtype(staging, dtype_label(max(set(float_dtypes), key=float_dtypes.count)))
            write_provenance(staging, {
                "method": f"{spec.method} ({method.paper})",
                "spec": spec.model_dump(mode="json"),
                "inputs": {role: fingerprint(c) for (role, _), c in zip(roles, checkpoints)},
            })
    finally:
        for checkpoint in checkpoints:
            checkpoint.close()
    return spec.out


def describe(spec: ToolkitSpec) -> str:
    """``taxcut plan`` for a toolkit spec: the method, the inputs, and how list parameters split over the layers
    (headers only; checks that the inputs fit together)."""
    method = get_method(spec.method)
    roles = _roles(spec)
    checkpoints = [Checkpoint(folder, role) for role, folder in roles]
    try:
        dropped = _check_compatible(roles, checkpoints)
        reference = checkpoints[0]
        layers = detect_layers(reference.tensors).num_layers
        lines = [f"method   {spec.method}: {method.paper}",
                 *[f"{role:<8} {folder}" + (f"  (weight {spec.models[i - (spec.base is not None)].weight:g})"
                                            if role != "base" else "")
                   for i, (role, folder) in enumerate(roles)],
                 f"tensors  {len(reference.tensors) - len(dropped)}, {layers} decoder layers; "
                 + ("streamed in chunks" if method.elementwise else "one whole tensor of each input at a time")]
        for key, values in spec.parameters.items():
            if isinstance(values, list) and key not in _WHOLE_LIST_PARAMETERS and values and layers:
                from taxcut.merging.ratios import split_blocks

                blocks = split_blocks(layers, len(values), field=f"parameters.{key}")
                lines.append(f"{key:<8} " + ", ".join(f"layers {a}-{b}: {v:g}" for (a, b), v in zip(blocks, values))
                             + f"; embeddings {values[0]:g}; after the layers {sum(values) / len(values):g}")
            elif not isinstance(values, (list, dict)):
                lines.append(f"{key:<8} {values}")
        return "\n".join(lines)
    finally:
        for checkpoint in checkpoints:
            checkpoint.close()


def parameters_for(parameters: dict, name: str, layers: int) -> dict:
    """A method's parameters for one tensor: a list value (``density: [0.2, 0.5, 0.8]``) gives one value per block
    of decoder layers (split as ``taxcut merge`` splits ``alphas``); outside the layers, embeddings take the first
    block's value and the rest the mean, as in ``taxcut merge``."""
    lists = {k: v for k, v in parameters.items() if isinstance(v, list) and v and k not in _WHOLE_LIST_PARAMETERS
             and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)}
    if not lists:
        return parameters
    from taxcut.io.layers import EMBEDDING_GLOBS
    from taxcut.merging.ratios import split_blocks
    from taxcut.methods.adamerging import group_of

    from fnmatch import fnmatchcase

    layer = group_of(name, layers)
    resolved = dict(parameters)
    for key, values in lists.items():
        if layer < layers:
            bounds = split_blocks(layers, len(values), field=f"parameters.{key}")
            block = next(i for i, (first, last) in enumerate(bounds) if first <= layer <= last)
            resolved[key] = values[block]
        elif any(fnmatchcase(name, glob) for glob in EMBEDDING_GLOBS):
            resolved[key] = values[0]
        else:
            resolved[key] = sum(values) / len(values)
    return resolved


_WHOLE_LIST_PARAMETERS = {"coefficients"}


def _merge_one(out: OutputTensor, models, base, weights, spec: ToolkitSpec, method, buffers, layers: int):
    """The pieces of one output tensor, in order: chunks for elementwise methods, else the whole tensor."""
    infos = [m.tensors[out.name] for m in models]
    base_info = base.tensors[out.name] if base is not None else None
    if not infos[0].dtype.is_floating_point:
        values = [m.read(info) for m, info in zip(models, infos)]
        if any(not torch.equal(values[0], v) for v in values[1:]):
            raise TaxcutError(f"tensor '{out.name}' is not floating point and differs between the models; "
                              "it cannot be merged")
        yield values[0]
        return
    numel = infos[0].numel
    widest = max([i.dtype.itemsize for i in infos] + [out.dtype.itemsize, 4])
    step = CHUNK_BYTES // widest if method.elementwise else max(numel, 1)
    for start in range(0, numel, step):
        stop = min(numel, start + step)
        if method.elementwise:
            tensors = [m.read_into(i, start, stop, buf).float() for m, i, buf in zip(models, infos, buffers)]
            base_tensor = base.read_into(base_info, start, stop, buffers[-1]).float() if base is not None else None
        else:
            tensors = [m.read(i).float() for m, i in zip(models, infos)]
            base_tensor = base.read(base_info).float() if base is not None else None
        parameters = parameters_for(spec.parameters, out.name, layers)
        merged = method.function(tensors, base_tensor, weights, parameters, out.name).to(out.dtype)
        if not all_finite(merged):
            raise TaxcutError(f"tensor '{out.name}': the {spec.method} merge is NaN or Inf; check the inputs and "
                              "the method's parameters")
        yield merged.contiguous()


def _check_compatible(roles, checkpoints: list[Checkpoint]) -> set[str]:
    """Same architecture, tensors and shapes as the first input; returns stored tied heads (not written)."""
    reference = checkpoints[0]
    for (_, folder), checkpoint in zip(roles[1:], checkpoints[1:]):
        for key in ("model_type", "architectures"):
            left, right = reference.config.get(key), checkpoint.config.get(key)
            if left is not None and right is not None and left != right:
                raise TaxcutError(f"{folder}: config.json '{key}' is {right!r} but the {roles[0][0]}'s is {left!r}; "
                                  "all models must have the same architecture")
    dropped: set[str] = set()
    if config_ties_embeddings(reference.config):
        layout = detect_layers(reference.tensors)
        for checkpoint in checkpoints:
            dropped |= set(stored_tied_heads(layout, reference, checkpoint))
    for (role, folder), checkpoint in zip(roles[1:], checkpoints[1:]):
        names, expected = set(checkpoint.tensors) - dropped, set(reference.tensors) - dropped
        if names != expected:
            first = sorted(names ^ expected)[0]
            raise TaxcutError(f"tensor '{first}' is in only one of {roles[0][0]} and {role} ({folder}); all models "
                              "must have the same architecture")
        for name in sorted(expected):
            if checkpoint.tensors[name].shape != reference.tensors[name].shape:
                raise TaxcutError(f"tensor '{name}' has shape {list(checkpoint.tensors[name].shape)} in {role} but "
                                  f"{list(reference.tensors[name].shape)} in {roles[0][0]}")
    return dropped


def _roles(spec: ToolkitSpec) -> list[tuple[str, Path]]:
    """(role, folder) of every input, the base first: the first one is the reference for checks and side files."""
    return ([("base", spec.base)] if spec.base is not None else []) + [
        (f"model {i + 1}", m.path) for i, m in enumerate(spec.models)]


def _size(spec: ToolkitSpec) -> int:
    from taxcut.spec.merge import parse_size

    return parse_size(spec.max_shard_size)
