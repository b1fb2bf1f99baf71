"""What the destination tests share: an input model folder the user cares about, and a pid no process has."""

import subprocess
import sys
from pathlib import Path

import pytest


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def model(tmp_path) -> Path:
    """An input model folder the user cares about."""
    folder = tmp_path / "models" / "sft"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder
