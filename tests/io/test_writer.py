"""The streaming shard writer: headers laid out first, data appended in chunks, files safetensors can read."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from safetensors import safe_open

from taxcut.io.writer import OutputTensor, ShardWriter, WriteBehind, plan_shards, write_index


def tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(7, 5, generator=generator),
        "b.weight": torch.randn(3, generator=generator).to(torch.bfloat16),
        "c.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d.scalar": torch.tensor(2.5, dtype=torch.float16),
        "e.empty": torch.empty(0, 4),
    }


def outputs(values: dict[str, torch.Tensor]) -> list[OutputTensor]:
    return [OutputTensor(name, t.dtype, tuple(t.shape)) for name, t in values.items()]


def test_plan_shards_fills_in_order_and_gives_oversized_tensors_their_own():
    sizes = [OutputTensor(f"t{i}", torch.float32, (n,)) for i, n in enumerate((10, 10, 40, 5, 5))]
    shards = plan_shards(sizes, max_shard_bytes=80)  # 40, 40, 160, 20, 20 bytes
    assert [[t.name for t in s.tensors] for s in shards] == [["t0", "t1"], ["t2"], ["t3", "t4"]]
    assert [s.file_name for s in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    (single,) = plan_shards(sizes, max_shard_bytes=10**9)
    assert single.file_name == "model.safetensors" and single.nbytes == 280


def test_chunked_writes_give_a_file_safetensors_reads(tmp_path):
    values = tensors()
    (shard,) = plan_shards(outputs(values), 10**9)
    writer = ShardWriter(tmp_path / shard.file_name, shard)
    for tensor in values.values():
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), 4):  # several appends per tensor
            writer.write(flat[start : start + 4].contiguous())
    writer.close()
    with safe_open(tmp_path / shard.file_name, framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        for name, tensor in values.items():
            assert torch.equal(handle.get_tensor(name), tensor)
    raw = (tmp_path / shard.file_name).read_bytes()
    assert (8 + int.from_bytes(raw[:8], "little")) % 8 == 0  # the data section starts aligned


def test_a_short_write_is_caught_at_close(tmp_path):
    values = tensors()
    (shard,) = plan_shards(outputs(values), 10**9)
    writer = ShardWriter(tmp_path / "x.safetensors", shard)
    writer.write(values["a.weight"])
    with pytest.raises(RuntimeError, match="header promised"):
        writer.close()
    ShardWriter(tmp_path / "y.safetensors", shard).close(complete=False)  # an abandoned file: no complaint


def test_index_names_every_tensor_in_its_shard(tmp_path):
    values = tensors()
    shards = plan_shards(outputs(values), max_shard_bytes=100)
    write_index(tmp_path, shards)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(s.nbytes for s in shards)
    assert index["weight_map"] == {t.name: s.file_name for s in shards for t in s.tensors}


def test_write_behind_keeps_order_and_reuses_its_buffers(tmp_path):
    values = tensors()["a.weight"].reshape(-1)
    shard = plan_shards([OutputTensor("a", torch.float32, (values.numel(),))], 10**9)[0]
    writer = ShardWriter(tmp_path / "a.safetensors", shard)
    behind = WriteBehind(chunk_bytes=16, depth=2)
    written_by = set()
    original = writer.write

    def write(data):
        written_by.add(threading.current_thread().name)
        original(data)

    writer.write = write
    for start in range(0, values.numel(), 4):
        chunk = values[start : start + 4]
        out = behind.buffer()[: chunk.numel() * 4].view(torch.float32)
        out.copy_(chunk)
        behind.submit(writer, out)
    behind.drain()
    behind.close()
    writer.close()
    with safe_open(tmp_path / "a.safetensors", framework="pt") as handle:
        assert torch.equal(handle.get_tensor("a"), values)
    assert all(name.startswith("taxcut-writer") for name in written_by)


def test_write_behind_surfaces_a_failed_write(tmp_path):
    behind = WriteBehind(chunk_bytes=16, depth=1)

    class Broken:
        def write(self, data):
            raise OSError(28, "No space left on device")

    behind.submit(Broken(), behind.buffer()[:4])
    with pytest.raises(OSError, match="No space left"):
        behind.drain()
    behind.close()
