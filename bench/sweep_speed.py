"""Sweep speed (targets: bench/README.md), measured side by side in one run.

1. Candidate swap: setting the resident model to a new ratio vector (``ResidentModel.apply``: plan from the
   headers, then one blocked pass over the weights) against one ``torch.add`` pass over all parameters
   (``torch.add(sft, aligned, out=param)``). Target: <= 2x.
2. Generation: batched, KV-cached, left-padded generation (``taxcut.evaluation.generation.generate``) against a
   one-prompt-at-a-time loop of ``model.generate``, in generated tokens per second.

The pair is a random Llama (hidden 512, 8 layers, intermediate 1408, vocab 32000: ~60M parameters, float32),
built once and cached in bench/.cache.

    python bench/sweep_speed.py [--repeats 5] [--prompts 32] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from taxcut.evaluation.generation import GenerationSettings, generate
from taxcut.spec.candidates import Candidate, ma_candidate
from taxcut.sweep.resident import ResidentModel

CACHE = Path(__file__).parent / ".cache"


def build_pair() -> tuple[Path, Path]:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from models import save_tokenizer  # a word-level tokenizer built locally

    folders = CACHE / "sweep-sft", CACHE / "sweep-aligned"
    if all((f / "config.json").exists() for f in folders):
        return folders
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    for index, folder in enumerate(folders):
        if index:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(torch.randn_like(parameter) * 0.01)
        model.save_pretrained(folder)
        save_tokenizer(folder)
    return folders


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    sft, aligned = build_pair()
    resident = ResidentModel(sft, aligned)
    params = sum(p.numel() for p in resident.parameters.values())
    print(f"model: {params / 1e6:.1f} M parameters, float32, threads {torch.get_num_threads()}")

    candidates = [ma_candidate(0.3), Candidate(label="b", kind="blocks", alphas=[0.2, 0.5, 0.8])]
    turn = iter(range(10**9))

    def swap() -> None:
        resident.apply(candidates[next(turn) % 2])

    def one_add_pass() -> None:
        with torch.no_grad():
            for name, parameter in resident.parameters.items():
                torch.add(resident.sft[name], resident.aligned[name], out=parameter.data)

    swap_s, add_s = median_seconds(swap, args.repeats), median_seconds(one_add_pass, args.repeats)
    print(f"candidate swap (plan + blocked interpolation), median: {swap_s * 1000:.1f} ms")
    print(f"one torch.add pass over all parameters, median:       {add_s * 1000:.1f} ms")
    print(f"ratio swap / add: {swap_s / add_s:.2f}  (target <= 2)")

    resident.apply(ma_candidate(0.5))
    model, tokenizer = resident.model, resident.tokenizer
    prompts = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(4 + i % 9)) for i in range(args.prompts)]
    settings = GenerationSettings(max_new_tokens=args.new_tokens, batch_size=args.prompts)
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # every row generates the full length: equal work in both loops

    def batched() -> None:
        generate(model, tokenizer, prompts, settings)

    def one_by_one() -> None:
        with torch.no_grad():
            for prompt in prompts:
                encoded = tokenizer(prompt, return_tensors="pt")
                model.generate(**encoded, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    repeats = max(1, args.repeats // 2)
    batched_s, single_s = median_seconds(batched, repeats), median_seconds(one_by_one, repeats)
    model.generation_config.eos_token_id = eos
    tokens = args.prompts * args.new_tokens
    print(f"batched generation ({args.prompts} prompts x {args.new_tokens} tokens): {tokens / batched_s:,.0f} tokens/s")
    print(f"one prompt at a time:                            {tokens / single_s:,.0f} tokens/s")
    print(f"speed-up: {single_s / batched_s:.1f}x")


if __name__ == "__main__":
    main()
