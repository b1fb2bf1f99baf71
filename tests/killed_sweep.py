"""A sweep run as a user runs it (``taxcut sweep`` in a child process), killed with SIGKILL part way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_sweep_after(spec: Path, results: Path, lines: int, timeout: float = 300) -> bytes:
    """Start ``taxcut sweep spec``, SIGKILL it once ``results`` holds ``lines`` lines, and return the bytes it had
    written by then. Fails if the sweep finishes first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "taxcut.cli", "sweep", str(spec), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= lines:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the sweep finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return results.read_bytes()
