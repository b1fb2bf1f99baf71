"""The toolkit engine's peak memory with N inputs (target: bench/README.md).

On bench/merge_speed.py's cached ~1B bfloat16 Llama pair, a ``linear`` soup of N = 2 and N = 4 inputs (the pair
repeated) runs in a subprocess that reports its own peak RSS. ``linear`` is elementwise, so it streams 4 MB chunks
of every input: the peak must stay flat from N = 2 to N = 4 (the model is 1.9 GB per input). Methods that need
whole tensors (TIES, DARE, SLERP, variance correction) hold one whole tensor of every input at a time instead.

    python bench/toolkit_memory.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

CACHE = Path(__file__).parent / ".cache"
CHILD = (
    "import sys, taxcut.cli as cli\n"
    "code = cli.main(sys.argv[1:])\n"
    "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "sys.stderr.write(f'VmHWM_KB={peak}\\n')\n"
    "sys.exit(code)\n"
)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from merge_speed import build_model

    sft, aligned = CACHE / "llama-16L-sft", CACHE / "llama-16L-aligned"
    build_model(sft, 16, seed=1, shards=4)
    build_model(aligned, 16, seed=2, shards=4)
    for count in (2, 4):
        spec = CACHE / f"soup-{count}.yaml"
        spec.write_text(
            yaml.safe_dump(
                {
                    "method": "linear",
                    "models": [str(p) for p in [sft, aligned] * (count // 2)],
                    "max_shard_size": "500MB",
                }
            )
        )
        out = CACHE / f"soup-{count}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", CHILD, "merge", str(spec), "--out", str(out), "--no-progress"],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise SystemExit(result.stderr)
        peak = int(result.stderr.rsplit("VmHWM_KB=", 1)[1].split()[0]) / 2**20
        print(
            f"linear soup of N = {count} inputs (1.9 GB each): {time.perf_counter() - started:.1f} s, "
            f"peak RSS {peak:.2f} GB"
        )
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
