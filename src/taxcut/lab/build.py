"""Build (or reuse) a lab: data files, the SFT model, one RAFT checkpoint per iteration, and a ready sweep spec.

A lab is a folder of ordinary Hugging Face model folders and JSONL files, determined by its :class:`LabConfig`
(seed included). Without ``out`` it lives in the user's cache (``$XDG_CACHE_HOME/taxcut/lab`` or
``~/.cache/taxcut/lab``) under a hash of the config, and is reused when asked for again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from taxcut.errors import TaxcutError
from taxcut.evaluation.loading import no_transformers_bars
from taxcut.io.destination import staged_folder
from taxcut.lab import tasks
from taxcut.lab.tokenizer import build_tokenizer
from taxcut.training import StageProgress

LAB_FORMAT = 3  # bump when the recipe changes, so that cached labs are rebuilt (2: graded reward, 3: item streams)
REWARD_FUNCTION = "taxcut.lab.tasks:reward"


@dataclass(frozen=True)
class LabConfig:
    seed: int = 0
    # the model: a tiny Llama (about 0.7M parameters)
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 256
    # data
    train_per_task: int = 4000
    test_per_task: int = 100
    facts: int = 60
    chat_train: int = 3000
    chat_test: int = 200
    # stage 1: supervised fine-tuning on the mixture
    sft_steps: int = 1000
    sft_batch: int = 64
    sft_lr: float = 2e-3
    # stage 2: RAFT on chat prompts only
    raft_iterations: int = 5
    raft_prompts: int = 150
    raft_samples: int = 8
    raft_epochs: int = 3
    raft_batch: int = 16
    raft_lr: float = 1e-3

    @classmethod
    def quick(cls, seed: int = 0) -> LabConfig:
        """A reduced lab that builds in seconds (for tests): the same recipe, far fewer steps and examples."""
        return cls(
            seed=seed,
            hidden_size=32,
            layers=3,
            heads=2,
            intermediate_size=64,
            train_per_task=200,
            test_per_task=10,
            facts=10,
            chat_train=100,
            chat_test=10,
            sft_steps=20,
            sft_batch=16,
            raft_iterations=2,
            raft_prompts=8,
            raft_samples=2,
            raft_epochs=1,
            raft_batch=8,
        )

    def key(self) -> str:
        payload = json.dumps({"format": LAB_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class Lab:
    """Paths of a built lab."""

    folder: Path
    config: LabConfig
    raft_iterations: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def sft(self) -> Path:
        return self.folder / "sft"

    @property
    def checkpoints(self) -> list[Path]:
        return [self.folder / f"raft-{i}" for i in range(1, self.raft_iterations + 1)]

    @property
    def aligned(self) -> Path:
        return self.checkpoints[-1]

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def capability_tasks(self) -> list[str]:
        return ["uppercase", "reversal", "facts"]


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "taxcut" / "lab"


def build_lab(config: LabConfig, out: Path | None = None, *, log=print, progress: bool = True) -> Lab:
    """The lab of ``config``: reused from ``out`` (or the cache) when already built there, built otherwise.
    ``progress``: show the SFT and RAFT stages' progress on stderr (a bar on a terminal, else a line per ~10%)."""
    folder = Path(out) if out is not None else default_cache() / f"lab-{config.key()}"
    existing = _load(folder, config)
    if existing is not None:
        log(f"lab: reusing {folder}")
        return existing
    if folder.exists() and any(folder.iterdir()):
        raise TaxcutError(f"{folder}: exists and holds something other than this lab; choose another --out")
    with staged_folder(folder, overwrite=False, inputs=[], kind="lab") as staging:
        timings = _build(config, staging, log, progress)
    return Lab(folder, config, config.raft_iterations, timings)


def _load(folder: Path, config: LabConfig) -> Lab | None:
    manifest = folder / "lab.json"
    if not manifest.is_file():
        return None
    recorded = json.loads(manifest.read_text())
    if recorded.get("key") != config.key():
        return None
    return Lab(folder, config, config.raft_iterations, recorded.get("timings", {}))


def _build(config: LabConfig, folder: Path, log, progress: bool = True) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from taxcut.lab.train import fine_tune, raft

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # data: held-out test sets first, training sets drawn disjoint from them
    upper_test, rev_test = tasks.uppercase(rng, config.test_per_task), tasks.reversal(rng, config.test_per_task)
    facts = tasks.knowledge_base(rng, config.facts)
    upper_train = tasks.uppercase(rng, config.train_per_task, exclude={e.prompt for e in upper_test})
    rev_train = tasks.reversal(rng, config.train_per_task, exclude={e.prompt for e in rev_test})
    chat_train = tasks.chat(rng, config.chat_train, styled=True)
    chat_test = tasks.chat(rng, config.chat_test)
    data = folder / "data"
    data.mkdir()
    for name, examples in (("uppercase", upper_test), ("reversal", rev_test), ("facts", facts)):
        _write_jsonl(data / f"{name}.jsonl", [{"prompt": e.prompt, "answer": e.answer} for e in examples])
    _write_jsonl(data / "chat_prompts.jsonl", [{"prompt": e.prompt} for e in chat_test])
    mixture = upper_train + rev_train + facts * max(1, config.train_per_task // (2 * len(facts))) + chat_train

    tokenizer = build_tokenizer()
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=96,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = AutoModelForCausalLM.from_config(model_config)
    log(
        f"lab: SFT of a {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter Llama, "
        f"{config.sft_steps} steps on {len(mixture)} examples"
    )
    step_started = time.perf_counter()
    with StageProgress("lab: sft", config.sft_steps, enabled=progress) as bar:
        losses = fine_tune(
            model,
            tokenizer,
            mixture,
            steps=config.sft_steps,
            batch_size=config.sft_batch,
            lr=config.sft_lr,
            seed=config.seed,
            on_step=lambda loss: bar.update(loss=loss),
        )
    timings["sft_seconds"] = time.perf_counter() - step_started
    _save(model, tokenizer, folder / "sft")
    log(f"lab: SFT done in {timings['sft_seconds']:.0f} s (final loss {losses[-1]:.3f})")

    step_started = time.perf_counter()
    prompts = [e.prompt for e in rng.sample(chat_train, min(config.raft_prompts, len(chat_train)))]

    with StageProgress("lab: raft", config.raft_iterations, "iteration", enabled=progress) as bar:

        def save_checkpoint(iteration: int, stats: dict) -> None:
            _save(model, tokenizer, folder / f"raft-{iteration}")
            bar.update(reward=stats["sample_reward"], loss=stats["final_loss"])
            log(f"lab: RAFT iteration {iteration}: mean sampled reward {stats['sample_reward']:+.3f}")

        history = raft(
            model,
            tokenizer,
            prompts,
            tasks.reward,
            iterations=config.raft_iterations,
            samples=config.raft_samples,
            epochs=config.raft_epochs,
            batch_size=config.raft_batch,
            lr=config.raft_lr,
            seed=config.seed,
            after_iteration=save_checkpoint,
        )
    timings["raft_seconds"] = time.perf_counter() - step_started
    timings["total_seconds"] = time.perf_counter() - started
    manifest = {
        "key": config.key(),
        "format": LAB_FORMAT,
        "config": asdict(config),
        "timings": timings,
        "raft": history,
        "sft_final_loss": losses[-1],
        "reward_function": REWARD_FUNCTION,
    }
    (folder / "lab.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return timings


def _save(model, tokenizer, folder: Path) -> None:
    with no_transformers_bars():  # transformers' "Writing model shards" bar: the lab shows its own progress
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
