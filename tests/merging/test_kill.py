"""A merge killed with SIGKILL midway leaves no destination folder, and the next run cleans up after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from models import write_synthetic_pair

from taxcut import MergeSpec, merge


@pytest.mark.slow
def test_sigkill_midway_leaves_no_destination(tmp_path):
    sft, aligned = write_synthetic_pair(tmp_path, layers=24, elements=2_000_000)  # 2 x 48 x 8 MB
    out = tmp_path / "merged"
    command = [
        sys.executable,
        "-m",
        "taxcut.cli",
        "merge",
        "--sft",
        str(sft),
        "--aligned",
        str(aligned),
        "--alpha",
        "0.5",
        "--out",
        str(out),
        "--max-shard-size",
        "50MB",
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    written = []
    while time.monotonic() < deadline and process.poll() is None:
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".merged.taxcut-partial-")]
        written = [f for s in staging for f in s.glob("model-*.safetensors")]
        if len(written) >= 2:  # midway: some shards written, more to come
            break
        time.sleep(0.002)
    assert process.poll() is None, "the merge finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert written
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if ".taxcut-" in p.name]
    assert leftovers  # the killed run's staging folder, hidden beside the destination

    merge(MergeSpec(sft=sft, aligned=aligned, alpha=0.5, out=out))  # the next run removes it and succeeds
    assert (out / "model.safetensors.index.json").is_file() or (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if ".taxcut-" in p.name]
