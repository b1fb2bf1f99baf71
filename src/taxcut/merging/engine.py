"""The one executor: write a :class:`MergePlan` into a staged destination folder, tensor by tensor.

Elementwise methods (model averaging, linear soups, task arithmetic, ...) are streamed: equal element ranges of
every input are read into reusable buffers, merged into an output buffer and appended to the output shard by a
write-behind thread while the next range is computed, so memory does not grow with tensor or model size. Other
methods (TIES, DARE, SLERP, ...) get one whole tensor of every input at a time. Side files, the index, provenance
and the model card are written once, here, for every method.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from taxcut.errors import TaxcutError
from taxcut.io.destination import check_destination, staged_folder
from taxcut.io.hub import display_name
from taxcut.io.model_folder import copy_side_files, set_config_dtype
from taxcut.io.provenance import fingerprint, write_model_card, write_provenance
from taxcut.io.writer import ShardWriter, WriteBehind, write_index
from taxcut.merging.plan import MergePlan, PlannedTensor, build_plan
from taxcut.merging.request import spec_record
from taxcut.methods.interpolation import BLOCK_ELEMENTS, all_finite

CHUNK_BYTES = 4 * 2**20  # per buffer: small enough to stay in cache between reading, merging and writing


def run_merge(
    plan: MergePlan,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    protect: Sequence[tuple[str, Path]] = (),
    provenance: dict | None = None,
) -> Path:
    """Run the method's prepare step (if any), then write the merge of ``plan`` to its destination; return the
    destination. Closes the plan. ``log`` gets the plan's notes and the prepare step's messages (default: stderr);
    ``protect`` names more files the destination must not touch (the spec file, a results file); ``provenance``
    adds fields to the provenance file (an export's origin)."""
    log = log or _to_stderr
    with plan:
        request = plan.request
        if request.out is None:
            raise TaxcutError("no destination: give --out DIR (or 'out:' in the spec)")
        inputs = _inputs(plan, protect)
        check_destination(request.out, overwrite=overwrite, inputs=inputs)  # before a prepare step's long work
        for note in plan.notes:
            log(f"note: {note}")
        prepared = request.method.prepare(request, log)
        if prepared is not request:  # other ingredients or learned parameters: plan again, from headers
            plan.close()
            plan = build_plan(prepared)
        with plan:
            with staged_folder(request.out, overwrite=overwrite, inputs=_inputs(plan, protect)) as staging:
                _write_weights(plan, staging, progress)
                _write_side_files(plan, staging, provenance or {})
    return request.out


def _inputs(plan: MergePlan, protect: Sequence[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Everything the merge reads: the models (and adapters' bases), the method's files, the spec."""
    inputs = []
    for model, checkpoint in zip(plan.request.inputs, plan.checkpoints):
        inputs += [(model.label, folder) for folder in checkpoint.side_file_folders]
    return inputs + plan.method.input_files(plan.request) + list(protect)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _write_weights(plan: MergePlan, staging: Path, progress: bool | None) -> None:
    with _one_compute_thread(plan.method.elementwise):
        _write_shards(plan, staging, progress)
    write_index(staging, plan.shards)


@contextmanager
def _one_compute_thread(elementwise: bool) -> Iterator[None]:
    """Elementwise merges are memory-bound: one compute thread, and the other core serves the write-behind thread."""
    previous = torch.get_num_threads()
    if elementwise:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _write_shards(plan: MergePlan, staging: Path, progress: bool | None) -> None:
    buffers = ChunkBuffers(len(plan.checkpoints))
    by_name = {tensor.name: tensor for tensor in plan.tensors}
    bar = tqdm(
        total=plan.total_bytes,
        unit="B",
        unit_scale=True,
        desc=plan.method.name,
        disable=None if progress is None else not progress,
    )
    try:
        for shard in plan.shards:
            writer = ShardWriter(staging / shard.file_name, shard)
            try:
                for out in shard.tensors:
                    _merge_tensor(plan, by_name[out.name], writer, buffers, bar)
                buffers.output.drain()
            except BaseException:
                buffers.output.drain_quietly()
                writer.close(complete=False)
                raise
            writer.close()
    finally:
        buffers.output.close()
        bar.close()


class ChunkBuffers:
    """The reusable byte buffers of the inputs, the float32 scratch, and the write-behind output buffers."""

    def __init__(self, inputs: int) -> None:
        self.inputs = [torch.empty(CHUNK_BYTES, dtype=torch.uint8) for _ in range(inputs)]
        self.scratch = torch.empty(2 * BLOCK_ELEMENTS, dtype=torch.float32)
        self.output = WriteBehind(CHUNK_BYTES)


def _merge_tensor(plan: MergePlan, tensor: PlannedTensor, writer: ShardWriter, buffers: ChunkBuffers, bar) -> None:
    if not tensor.floating:
        _copy_shared(plan, tensor, writer, buffers, bar)
    elif plan.method.elementwise:
        _merge_chunks(plan, tensor, writer, buffers, bar)
    else:
        _merge_whole(plan, tensor, writer, buffers, bar)


def _split(plan: MergePlan, chunks: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The models' chunks and the base's (the first input, for methods on task vectors)."""
    return (chunks[1:], chunks[0]) if plan.method.needs_base else (chunks, None)


def _merge_chunks(plan: MergePlan, tensor: PlannedTensor, writer: ShardWriter, buffers: ChunkBuffers, bar) -> None:
    method, weights = plan.method, [m.weight for m in plan.request.models]
    widest = max([s.dtype.itemsize for s in tensor.sources] + [tensor.out_dtype.itemsize, 4])
    step = CHUNK_BYTES // widest
    numel = tensor.info.numel
    for start in range(0, numel, step):
        stop = min(numel, start + step)
        chunks = [
            checkpoint.read_into(info, start, stop, buffer)
            for checkpoint, info, buffer in zip(plan.checkpoints, tensor.sources, buffers.inputs)
        ]
        out = buffers.output.buffer()[: (stop - start) * tensor.out_dtype.itemsize].view(tensor.out_dtype)
        models, base = _split(plan, chunks)
        if not method.merge_into(models, base, weights, tensor.parameters, tensor.site, out, buffers.scratch):
            raise TaxcutError(_non_finite_message(plan, tensor, chunks))
        buffers.output.submit(writer, out)
        bar.update(out.numel() * out.element_size())


def _merge_whole(plan: MergePlan, tensor: PlannedTensor, writer: ShardWriter, buffers: ChunkBuffers, bar) -> None:
    """One whole tensor of every input (methods that rank, sort or normalise over the tensor)."""
    values = [checkpoint.read(info) for checkpoint, info in zip(plan.checkpoints, tensor.sources)]
    models, base = _split(plan, values)
    merged = plan.method.merge(
        [m.float() for m in models],
        base.float() if base is not None else None,
        [m.weight for m in plan.request.models],
        tensor.parameters,
        tensor.site,
    )
    out = merged.to(tensor.out_dtype).contiguous()
    if not all_finite(out):
        raise TaxcutError(_non_finite_message(plan, tensor, values))
    buffers.output.drain()  # the write-behind thread writes in order: let it finish before this direct write
    writer.write(out)
    bar.update(out.numel() * out.element_size())


def _copy_shared(plan: MergePlan, tensor: PlannedTensor, writer: ShardWriter, buffers: ChunkBuffers, bar) -> None:
    """A tensor that is not floating point (position ids, masks) must be the same in every input: copied."""
    values = [checkpoint.read(info) for checkpoint, info in zip(plan.checkpoints, tensor.sources)]
    if any(not torch.equal(values[0], other) for other in values[1:]):
        raise TaxcutError(
            f"tensor '{tensor.name}' ({tensor.info.dtype}) is not floating point and differs between the models, "
            "so it cannot be merged; every model must share it"
        )
    buffers.output.drain()
    writer.write(values[0].contiguous())
    bar.update(values[0].numel() * values[0].element_size())


def _non_finite_message(plan: MergePlan, tensor: PlannedTensor, chunks: list[torch.Tensor]) -> str:
    for model, chunk, info in zip(plan.request.inputs, chunks, tensor.sources):
        if not all_finite(chunk):
            return (
                f"tensor '{tensor.name}' of the {model.label} ({info.file}) contains NaN or Inf values; "
                "fix or re-export that checkpoint"
            )
    return (
        f"tensor '{tensor.name}': the merge is not finite in {str(tensor.out_dtype).removeprefix('torch.')}; "
        f"{plan.method.overflow_hint(tensor.parameters)}"
    )


def _write_side_files(plan: MergePlan, staging: Path, extra: dict) -> None:
    request = plan.request
    source = plan.checkpoints[request.side_files_from]
    for folder in source.side_file_folders:  # an adapter: its base's config, then the adapter's own files
        copy_side_files(folder, staging, overwrite=True)
    set_config_dtype(staging, plan.out_dtype)
    write_provenance(
        staging,
        {
            "method": request.method.describe(request.parameters),
            "spec": spec_record(request),
            "inputs": {
                model.role: fingerprint(checkpoint) for model, checkpoint in zip(request.inputs, plan.checkpoints)
            },
            "side_files_from": request.inputs[request.side_files_from].role,
            "plan": plan.summary(),
            **extra,
        },
    )
    write_model_card(
        staging,
        method=request.method.describe(request.parameters),
        inputs=[(m.label, display_name(m.path), m.weight) for m in request.inputs],
        summary_lines=_card_lines(plan),
        spec_yaml=_card_yaml(request),
    )


def _card_lines(plan: MergePlan) -> list[str]:
    resolver = plan.resolver
    if resolver is None:
        return [f"Parameters: {plan.request.parameters.dump() or 'defaults'}"]
    blocks = ", ".join(f"{b.label}: {b.value:g}" for b in resolver.blocks)
    if resolver.unequal_means:  # blocks of unequal size: the block mean and the layer-weighted mean differ
        mean = (
            f"Mean {resolver.noun} of the {len(resolver.blocks)} blocks ({resolver.field}; the tensors after the "
            f"layers get it): {resolver.mean:g}; over the {len(resolver.layer_values)} decoder layers: "
            f"{resolver.layer_mean:g}"
        )
    else:
        mean = f"Mean {resolver.noun} of the decoder layers ({resolver.field}): {resolver.mean:g}"
    return [mean, f"Per layer: {blocks or 'n/a'}"]


def _card_yaml(request) -> str:
    """The spec with input folders by name only (the card travels with the model; provenance has full paths)."""
    record = spec_record(request)
    for key in ("sft", "aligned", "base"):
        if record.get(key):
            record[key] = display_name(record[key])
    for model in record.get("models") or []:
        key = "path" if "path" in model else "model"  # a mergekit config names its models under 'model'
        model[key] = display_name(model[key])
    record.pop("out", None)
    return yaml.safe_dump({k: v for k, v in record.items() if v not in (None, [], {})}, sort_keys=False)
