"""What the destination tests share: a pid no process has."""

import subprocess
import sys


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid
