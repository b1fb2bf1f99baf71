"""Merge throughput against the I/O floor, and peak memory (targets: bench/README.md).

Generates (once, cached in bench/.cache) a ~1B-parameter Llama pair in bfloat16 (hidden 2048, intermediate 5504,
16 layers, vocab 32000, untied, 4 shards of ~500 MB) with random weights, then, with a warm page cache, measures
in the same run:

- the floor: ``cat`` both inputs to /dev/null plus ``cp -r`` of one model folder;
- ``taxcut merge`` (a subprocess): wall time and peak RSS (ru_maxrss of the child).

Prints medians of ``--repeats`` runs and the ratio merge / floor (target <= 1.5) and the peak RSS (target <= 1 GB).
``--layers 32`` builds a model twice as deep, to check that peak RSS does not grow with the model.

    python bench/merge_speed.py [--repeats 3] [--layers 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

CACHE = Path(__file__).parent / ".cache"
HIDDEN, INTERMEDIATE, VOCAB = 2048, 5504, 32000


def llama_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{name}.weight"] = (HIDDEN, HIDDEN)
        shapes[p + "mlp.gate_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[p + "mlp.up_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[p + "mlp.down_proj.weight"] = (HIDDEN, INTERMEDIATE)
        shapes[p + "input_layernorm.weight"] = (HIDDEN,)
        shapes[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def build_model(folder: Path, layers: int, seed: int, shards: int) -> None:
    if (folder / "config.json").exists():
        return
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    shapes = llama_shapes(layers)
    total = sum(torch.Size(s).numel() * 2 for s in shapes.values())
    groups, filled = [[]], 0
    for name, shape in shapes.items():
        size = torch.Size(shape).numel() * 2
        if groups[-1] and filled + size > total / shards * 1.02:
            groups.append([])
            filled = 0
        groups[-1].append(name)
        filled += size
    weight_map = {}
    for index, names in enumerate(groups):
        file_name = f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: (torch.randn(shapes[n], generator=generator) * 0.02).to(torch.bfloat16) for n in names}
        save_file(tensors, tmp / file_name, metadata={"format": "pt"})
        weight_map.update({n: file_name for n in names})
        del tensors
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "hidden_act": "silu",
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(folder)


# Runs the CLI and reports the process's own peak RSS (VmHWM): a forked child's ru_maxrss would include the
# memory of this (large) parent at fork time.
_MERGE_AND_REPORT = (
    "import sys, time, taxcut.cli as cli, taxcut.merging.engine as engine\n"
    "run = engine.run_merge\n"
    "def timed_run(*args, **kwargs):\n"
    "    start = time.perf_counter()\n"
    "    result = run(*args, **kwargs)\n"
    "    sys.stderr.write(f'ENGINE_S={time.perf_counter() - start}\\n')\n"
    "    return result\n"
    "engine.run_merge = timed_run\n"
    "code = cli.main(sys.argv[1:])\n"
    "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "sys.stderr.write(f'VmHWM_KB={peak}\\n')\n"
    "sys.exit(code)\n"
)


def timed(command: list[str]) -> tuple[float, str]:
    """Wall seconds and stderr of a command, started with no dirty pages left by the previous one."""
    os.sync()
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(command)}\n{result.stderr}")
    return time.perf_counter() - start, result.stderr


def reported(stderr: str, key: str) -> float:
    return float(stderr.rsplit(f"{key}=", 1)[1].split()[0])


def time_mergekit(executable: str, sft: Path, aligned: Path, out: Path, repeats: int) -> tuple[float, float]:
    """Median wall time and peak RSS (GB, via /usr/bin/time) of mergekit's linear merge of the same pair."""
    config = out.with_name("mergekit.yaml")
    config.write_text(
        "merge_method: linear\ndtype: bfloat16\nmodels:\n"
        f"  - model: {sft}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {aligned}\n    parameters: {{weight: 0.5}}\n"
    )
    seconds, peaks = [], []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        wall, stderr = timed(
            [
                "/usr/bin/time",
                "-f",
                "MAXRSS_KB=%M",
                executable,
                str(config),
                str(out),
                "--lazy-unpickle",
                "--no-copy-tokenizer",
            ]
        )
        seconds.append(wall)
        peaks.append(reported(stderr, "MAXRSS_KB") / 2**20)
    shutil.rmtree(out, ignore_errors=True)
    config.unlink()
    return statistics.median(seconds), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument(
        "--mergekit",
        metavar="MERGEKIT_YAML",
        help="path to a mergekit-yaml executable (its own environment): time its linear merge too",
    )
    args = parser.parse_args()

    sft, aligned = CACHE / f"llama-{args.layers}L-sft", CACHE / f"llama-{args.layers}L-aligned"
    shards = 4 * args.layers // 16
    t0 = time.perf_counter()
    build_model(sft, args.layers, seed=1, shards=shards)
    build_model(aligned, args.layers, seed=2, shards=shards)
    print(f"pair ready in {time.perf_counter() - t0:.1f} s: {sft.parent}")
    out, copy = CACHE / "merged", CACHE / "floor-copy"
    inputs = sorted(str(p) for p in (*sft.iterdir(), *aligned.iterdir()))
    subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

    floors, merges, engines, rss = [], [], [], []
    taxcut = [
        sys.executable,
        "-c",
        _MERGE_AND_REPORT,
        "merge",
        "--sft",
        str(sft),
        "--aligned",
        str(aligned),
        "--alpha",
        "0.5",
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        "--max-shard-size",
        "500MB",
    ]
    for _ in range(args.repeats):  # floor and merge alternate, so that both see the same machine
        shutil.rmtree(copy, ignore_errors=True)
        read_s, _ = timed(["cat", *inputs])
        copy_s, _ = timed(["cp", "-r", str(sft), str(copy)])
        floors.append(read_s + copy_s)
        shutil.rmtree(out, ignore_errors=True)
        seconds, stderr = timed(taxcut)
        merges.append(seconds)
        engines.append(reported(stderr, "ENGINE_S"))
        rss.append(reported(stderr, "VmHWM_KB") / 2**20)
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    mergekit = time_mergekit(args.mergekit, sft, aligned, out, args.repeats) if args.mergekit else None

    floor, merge, engine = statistics.median(floors), statistics.median(merges), statistics.median(engines)
    params = sum(torch.Size(s).numel() for s in llama_shapes(args.layers).values())
    print(f"model: {params / 1e9:.2f} B params, bfloat16, {args.layers} layers; threads {torch.get_num_threads()}")
    print(
        f"I/O floor (cat both + cp one), median of {args.repeats}: {floor:.2f} s  runs {[round(f, 2) for f in floors]}"
    )
    print(f"taxcut merge, median of {args.repeats}:               {merge:.2f} s  runs {[round(m, 2) for m in merges]}")
    print(
        f"  of which the merge itself (plan + stream + side files), median: {engine:.2f} s  "
        f"runs {[round(e, 2) for e in engines]}"
    )
    print(f"  the rest is starting Python and importing torch: {merge - engine:.2f} s")
    print(f"ratio merge / floor, whole command: {merge / floor:.2f}  (target <= 1.5)")
    print(f"ratio merge / floor, merge itself:  {engine / floor:.2f}")
    print(f"peak RSS of the merge: {max(rss):.2f} GB  (target <= 1.0 GB)")
    if mergekit:
        print(
            f"mergekit linear merge, median of {args.repeats}: {mergekit[0]:.2f} s, peak RSS {mergekit[1]:.2f} GB; "
            f"taxcut / mergekit time: {merge / mergekit[0]:.2f}"
        )
    print(f"(the bench process's own peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB)")


if __name__ == "__main__":
    main()
