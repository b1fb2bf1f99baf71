from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from models import build_pair, build_trio

ARCHITECTURES = ["llama", "qwen2", "gpt2", "gpt_neox"]


@pytest.fixture(scope="session")
def pairs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """One (sft, aligned) pair of tiny float32 models per architecture, shared by the session's tests."""
    root = tmp_path_factory.mktemp("pairs")
    return {arch: build_pair(root, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def llama_pair(pairs) -> tuple[Path, Path]:
    return pairs["llama"]


@pytest.fixture(scope="session")
def trio(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A base model and three fine-tunes of it, for the toolkit's methods."""
    return build_trio(tmp_path_factory.mktemp("trio"))
