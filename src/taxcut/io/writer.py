"""Streaming writer of sharded safetensors.

The ``safetensors`` library serialises a whole dict of tensors at once, which holds a shard in memory. A merge
knows every output tensor's dtype and shape before it reads any data, so this writer lays out each shard's header
first and then appends tensor data chunk by chunk: memory stays at one chunk, whatever the shard size. The files
are ordinary safetensors (``safe_open`` and ``transformers`` read them) with ``{"format": "pt"}`` metadata, plus a
``model.safetensors.index.json`` when there is more than one shard.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from taxcut.io.checkpoint import SAFETENSORS_INDEX, SAFETENSORS_SINGLE
from taxcut.io.dtypes import SAFETENSORS_NAME


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Shard:
    file_name: str
    tensors: tuple[OutputTensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(tensors: list[OutputTensor], max_shard_bytes: int) -> list[Shard]:
    """Fill shards in order, starting a new one when the next tensor would pass ``max_shard_bytes``.

    A tensor larger than the limit gets a shard of its own (as in ``transformers``' ``save_pretrained``).
    """
    groups: list[list[OutputTensor]] = [[]]
    filled = 0
    for tensor in tensors:
        if groups[-1] and filled + tensor.nbytes > max_shard_bytes:
            groups.append([])
            filled = 0
        groups[-1].append(tensor)
        filled += tensor.nbytes
    if len(groups) == 1:
        return [Shard(SAFETENSORS_SINGLE, tuple(groups[0]))]
    total = len(groups)
    return [Shard(f"model-{i + 1:05d}-of-{total:05d}.safetensors", tuple(g)) for i, g in enumerate(groups)]


def write_index(folder: Path, shards: list[Shard]) -> None:
    """The ``model.safetensors.index.json`` of the written weights, a single file's too (transformers and vLLM
    read an index naming one file; tools that list a model's tensors from its index then work on every output)."""
    weight_map = {t.name: shard.file_name for shard in shards for t in shard.tensors}
    index = {
        "metadata": {"total_size": sum(s.nbytes for s in shards)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


class ShardWriter:
    """Writes one safetensors file: the header at once, then the data of its tensors, in order, in chunks."""

    def __init__(self, path: Path, shard: Shard):
        self.path = path
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for tensor in shard.tensors:
            header[tensor.name] = {
                "dtype": SAFETENSORS_NAME[tensor.dtype],
                "shape": list(tensor.shape),
                "data_offsets": [offset, offset + tensor.nbytes],
            }
            offset += tensor.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
        self.expected = offset
        self.written = 0
        self._descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._write_all(memoryview(len(encoded).to_bytes(8, "little") + encoded))

    def write(self, data: torch.Tensor) -> None:
        """Append the bytes of a contiguous tensor (any dtype)."""
        raw = data.reshape(-1).view(torch.uint8)
        self._write_all(memoryview(raw.numpy()).cast("B"))
        self.written += raw.numel()

    def close(self, *, complete: bool = True) -> None:
        """Close the file; with ``complete`` (the normal case) check that all promised data was written."""
        os.close(self._descriptor)
        if complete and self.written != self.expected:
            raise RuntimeError(f"{self.path}: wrote {self.written} data bytes, header promised {self.expected}")

    def _write_all(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            done += os.write(self._descriptor, view[done:])


class WriteBehind:
    """Overlaps writing with computing: data is written by one background thread, in submission order.

    ``buffer()`` hands out one of ``depth`` reusable byte buffers, waiting until the write that last used it is
    done; ``submit`` queues a view of that buffer for writing. Errors of the background writes surface at the next
    ``buffer()``, ``submit`` or ``drain()``.
    """

    def __init__(self, chunk_bytes: int, depth: int = 3):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taxcut-writer")
        self._buffers = [torch.empty(chunk_bytes, dtype=torch.uint8) for _ in range(depth)]
        self._pending: list = [None] * depth
        self._next = 0

    def buffer(self) -> torch.Tensor:
        slot = self._next
        if self._pending[slot] is not None:
            self._pending[slot].result()
            self._pending[slot] = None
        return self._buffers[slot]

    def submit(self, writer: ShardWriter, data: torch.Tensor) -> None:
        self._pending[self._next] = self._executor.submit(writer.write, data)
        self._next = (self._next + 1) % len(self._buffers)

    def drain(self) -> None:
        for index, future in enumerate(self._pending):
            if future is not None:
                self._pending[index] = None
                future.result()

    def drain_quietly(self) -> None:
        """Wait for queued writes, ignoring their errors (on the way out of a failed merge)."""
        try:
            self.drain()
        except Exception:  # the error that stopped the merge is the one to report
            pass

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
