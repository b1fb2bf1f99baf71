"""Greedy soup and AdaMerging on the alignment lab.

From the lab's SFT model (seed 0, cached), three short fine-tunes, each on one capability (upper-casing, reversal,
facts) mixed with a little of the others; then, on the lab's held-out tasks (exact match): each fine-tune alone,
their uniform soup, the greedy soup (ranked and accepted by the mean task score), and AdaMerging (task-wise and
layer-wise coefficients on the SFT model's task vectors, fitted on the held-out prompts without their answers).

    python bench/soups_lab.py
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from taxcut.evaluation.suite import evaluate_folder
from taxcut.lab import tasks
from taxcut.lab.build import LabConfig, build_lab
from taxcut.lab.train import fine_tune
from taxcut.merging.multi import run_method_merge
from taxcut.spec.evaluation import EvaluationSpec
from taxcut.spec.toolkit import ToolkitSpec


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="taxcut-soups-"))
    lab = build_lab(LabConfig(seed=0), log=lambda *_: None)
    evaluation = EvaluationSpec.model_validate(
        {
            "tasks": [
                {
                    "name": n,
                    "type": "generation",
                    "path": str(lab.data / f"{n}.jsonl"),
                    "max_new_tokens": 8,
                    "batch_size": 128,
                }
                for n in lab.capability_tasks
            ]
        }
    )
    rng = random.Random(7)
    facts = [
        tasks.Example(json.loads(line)["prompt"], json.loads(line)["answer"]) for line in open(lab.data / "facts.jsonl")
    ]
    pools = {"uppercase": tasks.uppercase(rng, 2000), "reversal": tasks.reversal(rng, 2000), "facts": facts * 30}
    ingredients = []
    for focus in lab.capability_tasks:
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(lab.sft)
        tokenizer = AutoTokenizer.from_pretrained(lab.sft)
        mixture = pools[focus] + [e for other, pool in pools.items() if other != focus for e in pool[:100]]
        fine_tune(model, tokenizer, mixture, steps=150, batch_size=32, lr=1e-3, seed=len(ingredients))
        folder = work / f"ft-{focus}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        ingredients.append(folder)
        print(f"fine-tuned {folder.name} in {time.perf_counter() - started:.0f} s")
    prompts = work / "unlabelled.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": json.loads(line)["prompt"]}) + "\n"
            for n in lab.capability_tasks
            for line in open(lab.data / f"{n}.jsonl")
        )
    )

    def report(label: str, folder: Path, extra: str = "") -> None:
        primary = evaluate_folder(folder, evaluation, device="cpu").primary
        mean = sum(primary.values()) / len(primary)
        print(
            f"{label:<28} "
            + "  ".join(f"{k} {100 * v:5.1f}" for k, v in primary.items())
            + f"  mean {100 * mean:5.1f}{extra}"
        )

    report("SFT (the base)", lab.sft)
    for folder in ingredients:
        report(folder.name, folder)
    for label, method, parameters, base in (
        ("uniform soup", "linear", {}, None),
        ("greedy soup", "greedy_soup", {"score": "tasks"}, None),
        ("task arithmetic (lambda 0.5)", "task_arithmetic", {"lambda": 0.5}, lab.sft),
        ("AdaMerging, task-wise", "adamerging", {"data": str(prompts), "granularity": "task", "epochs": 3}, lab.sft),
        ("AdaMerging, layer-wise", "adamerging", {"data": str(prompts), "granularity": "layer", "epochs": 3}, lab.sft),
    ):
        started = time.perf_counter()
        spec = ToolkitSpec.model_validate(
            {
                "method": method,
                "models": [str(f) for f in ingredients],
                "base": str(base) if base else None,
                "parameters": parameters,
                "out": str(work / method / label.replace(" ", "-").replace(",", "")),
                "evaluation": evaluation.model_dump(mode="json") if method == "greedy_soup" else None,
            }
        )
        out = run_method_merge(spec, progress=False)
        provenance = json.loads((out / "taxcut_provenance.json").read_text())["spec"]
        extra = ""
        if method == "greedy_soup":
            extra = f"  (kept {', '.join(Path(m['path']).name for m in provenance['models'])})"
        if method == "adamerging":
            rows = provenance["parameters"]["coefficients"]
            extra = "  (coefficients " + "; ".join(", ".join(f"{c:.2f}" for c in row) for row in rows) + ")"
        report(label, out, extra + f"  [{time.perf_counter() - started:.0f} s]")


if __name__ == "__main__":
    main()
