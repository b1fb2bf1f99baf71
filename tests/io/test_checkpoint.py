"""Checkpoint: header-only opening, ranged reads, safe .bin reading, and an index that must agree with its shards."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import taxcut.io.checkpoint as checkpoint_module
from taxcut import TaxcutError
from taxcut.io.checkpoint import Checkpoint

SHARDS = {
    "model-00001-of-00002.safetensors": ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"],
    "model-00002-of-00002.safetensors": ["model.layers.1.mlp.up_proj.weight", "model.norm.weight"],
}


def tensors_of(names: list[str]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(len(names))
    return {
        name: torch.randn(6, 5, generator=generator).to(torch.bfloat16 if "embed" in name else torch.float32)
        for name in names
    }


def sharded_folder(folder: Path, shards: dict[str, list[str]] = SHARDS, index: dict[str, str] | None = None) -> Path:
    """A Llama-named folder with ``shards`` (file -> tensor names) and an index (by default the true one)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    for file, names in shards.items():
        save_file(tensors_of(names), folder / file, metadata={"format": "pt"})
    weight_map = index if index is not None else {n: file for file, names in shards.items() for n in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def true_index() -> dict[str, str]:
    return {name: file for file, names in SHARDS.items() for name in names}


def refused(folder: Path) -> str:
    with pytest.raises(TaxcutError) as caught:
        Checkpoint(folder, "sft")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_opening_reads_headers_only(tmp_path, monkeypatch):
    folder = sharded_folder(tmp_path / "m")
    read = []

    class Counting:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, size=-1):
            data = self.handle.read(size)
            read.append(len(data))
            return data

    monkeypatch.setattr(checkpoint_module, "open", lambda *a, **k: Counting(open(*a, **k)), raising=False)
    monkeypatch.setattr(checkpoint_module.os, "preadv", lambda *a: pytest.fail("tensor data read on open"))
    with Checkpoint(folder) as checkpoint:
        assert set(checkpoint.tensors) == set(true_index())
        headers = sum(8 + int.from_bytes((folder / f).read_bytes()[:8], "little") for f in SHARDS)
        assert sum(read) == headers  # the 8-byte length and the JSON header of each shard, nothing more
        info = checkpoint.tensors["model.embed_tokens.weight"]
        assert (info.dtype, info.shape, info.file.name) == (torch.bfloat16, (6, 5), "model-00001-of-00002.safetensors")


def test_ranged_reads_match_safetensors(tmp_path):
    folder = sharded_folder(tmp_path / "m")
    buffer = torch.empty(1024, dtype=torch.uint8)
    with Checkpoint(folder) as checkpoint:
        for name, info in checkpoint.tensors.items():
            with safe_open(info.file, framework="pt") as handle:
                expected = handle.get_tensor(name).reshape(-1)
            for start, stop in ((0, 30), (7, 19), (29, 30), (12, 12)):
                got = checkpoint.read_into(info, start, stop, buffer)
                assert got.dtype == expected.dtype and torch.equal(got, expected[start:stop])
            assert torch.equal(checkpoint.read(info), expected.reshape(info.shape))


def test_bin_is_read_with_weights_only(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    state = tensors_of(["model.norm.weight", "lm_head.weight"])
    torch.save(state, folder / "pytorch_model.bin")
    with Checkpoint(folder) as checkpoint:
        for name, tensor in state.items():
            assert torch.equal(checkpoint.read(checkpoint.tensors[name]), tensor)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_with_code_is_refused_with_its_reason(tmp_path, legacy):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if legacy:
        with open(folder / "pytorch_model.bin", "wb") as handle:
            pickle.dump({"w": RunsCode()}, handle)
    else:
        torch.save({"w": torch.zeros(2), "x": RunsCode()}, folder / "pytorch_model.bin")
    message = refused(folder)
    assert "cannot load with torch.load(weights_only=True) (" in message
    assert "convert the checkpoint to safetensors" in message
    assert "False" not in message and "trusted source" not in message  # never torch's advice to unpickle anyway
    if not legacy:
        assert "GLOBAL posix.system" in message or "os.system" in message


def test_overlapping_shards_are_refused(tmp_path):
    shards = {"a.safetensors": ["model.norm.weight", "x"], "b.safetensors": ["x"]}
    folder = sharded_folder(tmp_path / "m", shards, index={"model.norm.weight": "a.safetensors", "x": "b.safetensors"})
    assert "tensor 'x' also stands in a.safetensors; the checkpoint's shards overlap" in refused(folder)


def test_a_tensor_the_index_names_but_its_shard_lacks(tmp_path):
    index = dict(true_index(), **{"model.layers.2.mlp.up_proj.weight": "model-00002-of-00002.safetensors"})
    folder = sharded_folder(tmp_path / "m", index=index)
    assert refused(folder) == (
        f"{folder / 'model.safetensors.index.json'}: names tensor 'model.layers.2.mlp.up_proj.weight' in "
        "model-00002-of-00002.safetensors, but model-00002-of-00002.safetensors does not hold it; "
        "restore the shard or re-save the model"
    )


def test_a_tensor_listed_in_the_wrong_shard(tmp_path):
    index = dict(true_index(), **{"model.norm.weight": "model-00001-of-00002.safetensors"})
    folder = sharded_folder(tmp_path / "m", index=index)
    assert (
        "names tensor 'model.norm.weight' in model-00001-of-00002.safetensors, but it stands in "
        "model-00002-of-00002.safetensors; re-save the model"
    ) in refused(folder)


def test_a_tensor_the_index_does_not_list(tmp_path):
    index = true_index()
    del index["model.layers.0.mlp.up_proj.weight"]
    folder = sharded_folder(tmp_path / "m", index=index)
    assert refused(folder) == (
        f"{folder / 'model-00001-of-00002.safetensors'}: holds tensor 'model.layers.0.mlp.up_proj.weight', which "
        "model.safetensors.index.json does not list; re-save the model"
    )


@pytest.mark.parametrize("escape", ["absolute", "dotdot", "symlinked file", "symlinked folder"])
def test_shards_outside_the_folder_are_refused(tmp_path, escape):
    elsewhere = sharded_folder(tmp_path / "elsewhere")  # a complete, valid model: following it would "work"
    folder = sharded_folder(tmp_path / "m")
    first = "model-00001-of-00002.safetensors"
    name = {
        "absolute": str(elsewhere / first),
        "dotdot": f"../elsewhere/{first}",
        "symlinked file": "linked.safetensors",
        "symlinked folder": f"sub/{first}",
    }[escape]
    if escape == "symlinked file":
        (folder / name).symlink_to(elsewhere / first)
    if escape == "symlinked folder":
        (folder / "sub").symlink_to(elsewhere)
    index = {tensor: (name if file == first else file) for tensor, file in true_index().items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    assert f"names shard {name!r}, which lies outside the model folder" in refused(folder)


def test_the_hub_cache_layout_is_inside(tmp_path):
    """A Hugging Face cache snapshot links its files into the repository's blobs folder: that is still inside."""
    repo = tmp_path / "models--org--name"
    sharded_folder(repo / "blobs")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in ["config.json", "model.safetensors.index.json", *SHARDS]:
        (snapshot / file).symlink_to(Path("../../blobs") / file)
    with Checkpoint(snapshot) as checkpoint:
        assert set(checkpoint.tensors) == set(true_index())


def test_a_consistent_sharded_folder_opens(tmp_path):
    folder = sharded_folder(tmp_path / "m")
    with Checkpoint(folder) as checkpoint:
        assert {name: info.file.name for name, info in checkpoint.tensors.items()} == true_index()
