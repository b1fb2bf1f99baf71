"""The streaming merge: execute a :class:`MergePlan`, chunk by chunk, into a staged destination folder.

For each output tensor, equal element ranges of the two inputs are read into reusable buffers, averaged
(:func:`taxcut.methods.interpolation.interpolate`) and appended to the output shard. Peak memory is a few chunk
buffers plus the Python runtime, whatever the size of the model or of its largest tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from taxcut.errors import TaxcutError
from taxcut.io.destination import staged_folder
from taxcut.io.model_folder import copy_side_files, set_config_dtype
from taxcut.io.provenance import fingerprint, write_model_card, write_provenance
from taxcut.io.writer import ShardWriter, WriteBehind, write_index
from taxcut.methods.interpolation import BLOCK_ELEMENTS, all_finite, interpolate
from taxcut.merging.plan import MergePlan, PlannedTensor
from taxcut.spec import MergeSpec

CHUNK_BYTES = 4 * 2**20  # per buffer: small enough to stay in cache between reading, averaging and writing


def run_merge(plan: MergePlan, *, overwrite: bool = False, progress: bool | None = None) -> Path:
    """Write the merged model of ``plan`` to ``plan.spec.out``; return the destination. Closes the plan."""
    spec = plan.spec
    with plan:
        if spec.out is None:
            raise TaxcutError("no destination: give --out DIR (or 'out:' in the spec)")
        inputs = [("sft", spec.sft), ("aligned", spec.aligned)]
        with staged_folder(spec.out, overwrite=overwrite, inputs=inputs) as staging:
            _write_weights(plan, staging, progress)
            _write_side_files(plan, staging)
    return spec.out


def _write_weights(plan: MergePlan, staging: Path, progress: bool | None) -> None:
    with _one_compute_thread():  # the averaging is memory-bound; the other core serves the write-behind thread
        _write_shards(plan, staging, progress)
    write_index(staging, plan.shards)


@contextmanager
def _one_compute_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _write_shards(plan: MergePlan, staging: Path, progress: bool | None) -> None:
    buffers = ChunkBuffers()
    by_name = {tensor.name: tensor for tensor in plan.tensors}
    bar = tqdm(total=plan.total_bytes, unit="B", unit_scale=True, desc="merging", disable=_bar_disabled(progress))
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
    """The reusable byte buffers of the two inputs, the float32 scratch, and the write-behind output buffers."""

    def __init__(self) -> None:
        self.sft = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        self.aligned = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        self.scratch = torch.empty(2 * BLOCK_ELEMENTS, dtype=torch.float32)
        self.output = WriteBehind(CHUNK_BYTES)


def _merge_tensor(plan: MergePlan, tensor: PlannedTensor, writer: ShardWriter, buffers: ChunkBuffers, bar) -> None:
    sft_info, aligned_info = tensor.sft, tensor.aligned
    widest = max(sft_info.dtype.itemsize, aligned_info.dtype.itemsize, tensor.out_dtype.itemsize)
    step = CHUNK_BYTES // widest
    for start in range(0, sft_info.numel, step):
        stop = min(sft_info.numel, start + step)
        left = plan.sft.read_into(sft_info, start, stop, buffers.sft)
        right = plan.aligned.read_into(aligned_info, start, stop, buffers.aligned)
        out = buffers.output.buffer()[: (stop - start) * tensor.out_dtype.itemsize].view(tensor.out_dtype)
        if tensor.averaged:
            if not interpolate(left, right, tensor.decision.alpha, out, scratch=buffers.scratch):
                raise TaxcutError(_non_finite_message(tensor, left, right))
        else:
            if not torch.equal(left, right):
                raise TaxcutError(
                    f"tensor '{tensor.name}' ({sft_info.dtype}) is not floating point and differs between the "
                    "two models, so it cannot be averaged; both models must share it"
                )
            out.copy_(left)
        buffers.output.submit(writer, out)
        bar.update(out.numel() * out.element_size())


def _non_finite_message(tensor: PlannedTensor, left: torch.Tensor, right: torch.Tensor) -> str:
    for role, chunk, info in (("sft", left, tensor.sft), ("aligned", right, tensor.aligned)):
        if not all_finite(chunk):
            return (
                f"tensor '{tensor.name}' of the {role} model ({info.file}) contains NaN or Inf values; "
                "fix or re-export that checkpoint"
            )
    return (
        f"tensor '{tensor.name}': averaging with a = {tensor.decision.alpha:g} overflows {tensor.out_dtype}; "
        "choose a wider 'dtype' (float32) or a smaller ratio"
    )


def _write_side_files(plan: MergePlan, staging: Path) -> None:
    spec = plan.spec
    source = plan.aligned if spec.files_from == "aligned" else plan.sft
    for folder in source.side_file_folders:  # an adapter: its base's config, then the adapter's own files
        copy_side_files(folder, staging, overwrite=True)
    set_config_dtype(staging, plan.out_dtype)
    spec_yaml = spec.model_copy(update={"sft": Path(spec.sft.name), "aligned": Path(spec.aligned.name),
                                        "out": None}).to_yaml()
    write_provenance(staging, {
        "method": "model averaging (MA/HMA): (1 - a) * sft + a * aligned",
        "spec": _resolved(spec).model_dump(mode="json"),
        "inputs": {"sft": fingerprint(plan.sft), "aligned": fingerprint(plan.aligned)},
        "side_files_from": spec.files_from,
        "plan": plan.summary(),
    })
    blocks = ", ".join(f"{b.label}: {b.alpha:g}" for b in plan.resolver.blocks)
    summary = [f"Mean ratio a of the decoder layers: {plan.resolver.mean_alpha:g}", f"Layer ratios: {blocks or 'n/a'}"]
    write_model_card(staging, sft=spec.sft.name, aligned=spec.aligned.name, summary_lines=summary,
                     spec_yaml=spec_yaml)


def _resolved(spec: MergeSpec) -> MergeSpec:
    """The spec with absolute paths, as recorded in the provenance file."""
    paths = {key: getattr(spec, key).expanduser().resolve() for key in ("sft", "aligned", "out")}
    return spec.model_copy(update=paths)


def _bar_disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
