"""taxcut and mergekit 0.1.5 side by side on the same mergekit configs: wall time, peak RSS and how far apart the
outputs are (the figures are in docs/mergekit.md and bench/README.md).

On the ~1B bfloat16 Llama pair of bench/merge_speed.py (built once, cached in bench/.cache) it runs two configs
in mergekit's own format -- a gradient SLERP (``t`` per layer, filtered by ``self_attn`` / ``mlp``) and a TIES
merge (``base_model`` the SFT model, density 0.5) -- each as a child process, first with ``taxcut merge CONFIG``
and then with mergekit's ``mergekit-yaml CONFIG OUT`` (from ``.venv-parity``, ``make parity-env``; CPU, default
options). Peak RSS is the child's maximum resident set (``/usr/bin/time -f %M``). The outputs are compared tensor by
tensor: max |taxcut - mergekit| and how many elements differ at all.

    nice -n 5 python bench/mergekit_side_by_side.py [--layers 16] [--mergekit .venv-parity/bin/mergekit-yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
from merge_speed import CACHE, build_model, llama_shapes  # the bench pair, built once

ROOT = Path(__file__).resolve().parents[1]
TAXCUT = [sys.executable, "-c", "import sys, taxcut.cli as cli; sys.exit(cli.main(sys.argv[1:]))"]
T_GRADIENT = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]


def configs(sft: Path, aligned: Path) -> dict[str, dict]:
    """The two configs, in the forms of mergekit's examples/."""
    return {
        "gradient SLERP": {
            "merge_method": "slerp",
            "base_model": str(sft),
            "dtype": "bfloat16",
            "models": [{"model": str(sft)}, {"model": str(aligned)}],
            "parameters": {"t": T_GRADIENT},
        },
        "TIES": {
            "merge_method": "ties",
            "base_model": str(sft),
            "dtype": "bfloat16",
            "models": [{"model": str(aligned), "parameters": {"weight": 1.0, "density": 0.5}}],
            "parameters": {"normalize": True},
        },
    }


def run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of a child process (no dirty pages left by the previous one)."""
    os.sync()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "MAXRSS_KB=%M", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "HF_HUB_OFFLINE": "1"},
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return wall, float(done.stderr.rsplit("MAXRSS_KB=", 1)[1].split()[0]) / 2**20


def tensors_of(folder: Path) -> dict[str, Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return {name: folder / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    return {name: folder / "model.safetensors" for name in _keys(folder / "model.safetensors")}


def _keys(path: Path) -> list[str]:
    with safe_open(path, "pt") as f:
        return list(f.keys())


def compare(ours: Path, theirs: Path) -> tuple[float, int, int, list[str]]:
    """Max |difference|, the number of differing elements, the number compared, and dtype mismatches."""
    mine, other = tensors_of(ours), tensors_of(theirs)
    worst, differing, total, dtypes = 0.0, 0, 0, []
    for name, path in mine.items():
        with safe_open(path, "pt") as a, safe_open(other[name], "pt") as b:
            x, y = a.get_tensor(name), b.get_tensor(name)
        if x.dtype != y.dtype:
            dtypes.append(f"{name}: {x.dtype} vs {y.dtype}")
        differing += int((x != y).sum())
        total += x.numel()
        worst = max(worst, float((x.double() - y.double()).abs().max()))
    return worst, differing, total, dtypes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--mergekit", default=str(ROOT / ".venv-parity" / "bin" / "mergekit-yaml"))
    parser.add_argument("--only", choices=["gradient SLERP", "TIES"], help="run one config")
    args = parser.parse_args()

    sft, aligned = CACHE / f"llama-{args.layers}L-sft", CACHE / f"llama-{args.layers}L-aligned"
    shards = 4 * args.layers // 16
    build_model(sft, args.layers, seed=1, shards=shards)
    build_model(aligned, args.layers, seed=2, shards=shards)
    params = sum(torch.Size(s).numel() for s in llama_shapes(args.layers).values())
    work = CACHE / "side-by-side"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    subprocess.run(
        ["cat", *sorted(str(p) for p in (*sft.iterdir(), *aligned.iterdir()))], stdout=subprocess.DEVNULL, check=True
    )  # warm the page cache for both tools alike
    print(
        f"model: {params / 1e9:.2f} B params, bfloat16, {args.layers} layers; {os.cpu_count()} CPUs; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'config':<16} {'tool':<9} {'wall s':>8} {'peak RSS GB':>12}")
    for label, config in configs(sft, aligned).items():
        if args.only and label != args.only:
            continue
        path = work / f"{label.replace(' ', '_')}.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        ours, theirs = work / "taxcut-out", work / "mergekit-out"
        taxcut = run([*TAXCUT, "merge", str(path), "--out", str(ours), "--no-progress"])
        mergekit = run([args.mergekit, str(path), str(theirs)])
        print(f"{label:<16} {'taxcut':<9} {taxcut[0]:>8.1f} {taxcut[1]:>12.2f}")
        print(f"{label:<16} {'mergekit':<9} {mergekit[0]:>8.1f} {mergekit[1]:>12.2f}")
        worst, differing, total, dtypes = compare(ours, theirs)
        print(
            f"{label:<16} taxcut / mergekit: time {taxcut[0] / mergekit[0]:.2f}, peak RSS "
            f"{taxcut[1] / mergekit[1]:.2f}; max |difference| {worst:.3g}; {differing:,} of {total:,} elements "
            f"differ{'; dtypes differ: ' + ', '.join(dtypes[:3]) if dtypes else ''}",
            flush=True,
        )
        shutil.rmtree(ours)
        shutil.rmtree(theirs)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
