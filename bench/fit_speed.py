"""HMA fit step against a plain fine-tuning step of the same model and batch (target: bench/README.md).

Each mode runs in its own process on the same data: ``hma`` runs ``taxcut.hma.fit.fit_ratios`` (only the K block
logits train; weights are materialised from theta_sft and theta_aligned each step); ``plain`` runs the lab's
fine-tuning loop (AdamW on every parameter). Printed: seconds per step (median over steps after warm-up), the
process's peak RSS and the peak above the resident weights, in copies of the weights.
Targets: step time <= 1.5x plain; about two copies of the weights plus activations.

The pair is bench/sweep_speed.py's (58.5M parameters, float32). Run on a GPU the same way: ``--device cuda``.

    python bench/fit_speed.py [--examples 64] [--batch 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
mode, sft, aligned, data, batch, device = sys.argv[1:7]
batch = int(batch)

def peak_gb():
    if torch.cuda.is_available() and device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 2**20

if mode == "hma":
    from taxcut.hma.fit import fit_ratios
    from taxcut.spec.fit import FitSettings
    import taxcut.hma.fit as fit
    stamps = []
    original = fit.collate
    def timed(*args, **kwargs):
        stamps.append(time.perf_counter())
        return original(*args, **kwargs)
    fit.collate = timed
    fit_ratios(Path(sft), Path(aligned), Path(data), FitSettings(alpha=0.5, batch_size=batch, device=device),
               log=lambda *_: None)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
else:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from taxcut.lab.tasks import Example
    from taxcut.lab.train import fine_tune
    model = AutoModelForCausalLM.from_pretrained(sft).to(device)
    tokenizer = AutoTokenizer.from_pretrained(aligned)
    rows = [json.loads(l) for l in open(data)]
    examples = [Example(r["prompt"], r["response"]) for r in rows]
    import taxcut.lab.train as train
    stamps = []
    original = train.collate
    def timed(*args, **kwargs):
        stamps.append(time.perf_counter())
        return original(*args, **kwargs)
    train.collate = timed
    fine_tune(model, tokenizer, examples, steps=len(examples) // batch, batch_size=batch, lr=1e-5, seed=0)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
print(json.dumps({"step": sorted(steps)[len(steps) // 2] if steps else None, "peak_gb": peak_gb()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from sweep_speed import build_pair

    sft, aligned = build_pair()
    data = Path(__file__).parent / ".cache" / "fit-set.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": " ".join(f"w{(i + j) % 50}" for j in range(24)),
                    "response": " ".join(f"w{(i * 3 + j) % 50}" for j in range(24)),
                }
            )
            + "\n"
            for i in range(args.examples)
        )
    )
    weights_gb = sum(p.stat().st_size for p in sft.glob("*.safetensors")) / 2**30
    results = {}
    for mode in ("plain", "hma"):
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(sft), str(aligned), str(data), str(args.batch), args.device],
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        results[mode]["wall"] = time.perf_counter() - started
    print(f"weights: {weights_gb:.3f} GB per copy; batch {args.batch} x ~50 tokens; device {args.device}")
    for mode, label in (
        ("plain", "plain fine-tuning step (AdamW, all parameters)"),
        ("hma", "HMA fit step (K block logits)"),
    ):
        r = results[mode]
        print(f"{label:<48} {1000 * r['step']:7.1f} ms/step, peak {r['peak_gb']:.2f} GB")
    print(f"ratio HMA / plain step time: {results['hma']['step'] / results['plain']['step']:.2f}  (target <= 1.5)")
    print(
        f"peak memory HMA / plain: {results['hma']['peak_gb'] / results['plain']['peak_gb']:.2f} "
        f"(plain: weights + grads + 2 AdamW states; HMA: theta_sft + theta_aligned, layers recomputed)"
    )


if __name__ == "__main__":
    main()
