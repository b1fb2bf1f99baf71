"""A small real example of taxcut's merge, on a pair built here in seconds (no downloads).

1. Build a character-level tokenizer and a tiny Llama; train it briefly on one kind of text ("sft") and then
   continue training on another kind ("aligned"), saving both as ordinary Hugging Face folders.
2. Plan a per-block merge (header-only), then merge at a = 0, 0.5 and 1 and at a per-block profile.
3. Reload each merged folder with transformers, measure its loss on both kinds of text and generate.

The built-in alignment lab (a real alignment tax, RAFT, the Pareto front) replaces this example as ``taxcut demo``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from taxcut import MergeSpec, merge, plan

SFT_TEXT = "the cat sat on the mat. the dog sat on the log. "
ALIGNED_TEXT = "thank you! happy to help! glad to help you! "


def char_tokenizer(text: str) -> PreTrainedTokenizerFast:
    chars = sorted(set(text))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def train(model, ids: torch.Tensor, steps: int, lr: float) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def loss_on(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="taxcut-example-"))

    tokenizer = char_tokenizer(SFT_TEXT + ALIGNED_TEXT)
    ids = {
        name: tokenizer(text * 3, return_tensors="pt").input_ids
        for name, text in (("sft text", SFT_TEXT), ("aligned text", ALIGNED_TEXT))
    }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = AutoModelForCausalLM.from_config(config)
    train(model, ids["sft text"], steps=150, lr=3e-3)
    model.save_pretrained(workdir / "sft")
    tokenizer.save_pretrained(workdir / "sft")
    train(model, ids["aligned text"], steps=80, lr=3e-3)
    model.save_pretrained(workdir / "aligned")
    tokenizer.save_pretrained(workdir / "aligned")
    print(f"built a tiny SFT/aligned pair in {time.perf_counter() - started:.1f} s under {workdir}\n")

    profile = MergeSpec(sft=workdir / "sft", aligned=workdir / "aligned", alphas=[0.2, 0.5, 0.8])
    with plan(profile) as merge_plan:
        print(merge_plan.render(), "\n")

    print(f"{'model':<28} {'loss on sft text':>17} {'loss on aligned text':>21}  sample")
    candidates = [
        ("a = 0 (sft)", {"alpha": 0.0}),
        ("a = 0.5 (MA)", {"alpha": 0.5}),
        ("a = [0.2, 0.5, 0.8] (blocks)", {"alphas": [0.2, 0.5, 0.8]}),
        ("a = 1 (aligned)", {"alpha": 1.0}),
    ]
    for index, (label, ratio) in enumerate(candidates):
        out = merge(
            MergeSpec(sft=workdir / "sft", aligned=workdir / "aligned", out=workdir / f"merged-{index}", **ratio),
            progress=False,
        )
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        merged_tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
        prompt = merged_tokenizer("th", return_tensors="pt")
        with torch.no_grad():
            generated = merged.generate(**prompt, max_new_tokens=24, do_sample=False, pad_token_id=0)
        sample = "".join(merged_tokenizer.convert_ids_to_tokens(generated[0].tolist()))
        losses = [loss_on(merged, ids[name]) for name in ("sft text", "aligned text")]
        assert all(math.isfinite(x) for x in losses)
        print(f"{label:<28} {losses[0]:>17.3f} {losses[1]:>21.3f}  {sample!r}")
    print(f"\nmerged folders (ordinary Hugging Face models, with taxcut_provenance.json): {workdir}")
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
