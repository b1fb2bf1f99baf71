"""Fixtures of the io tests: an input model folder the user cares about, and a Hub cache with the llama pair."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_cache import lay_out


@pytest.fixture
def model(tmp_path) -> Path:
    """An input model folder the user cares about."""
    folder = tmp_path / "models" / "sft"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


@pytest.fixture
def hub(tmp_path, monkeypatch, llama_pair):
    """A Hub cache with org/sft and org/aligned (the llama pair), HF_HUB_CACHE pointing at it, offline."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    commits = {name: lay_out(cache, f"org/{name}", folder) for name, folder in zip(("sft", "aligned"), llama_pair)}
    return cache, commits
