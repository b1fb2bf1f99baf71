"""No foreign code, ever: a folder that asks transformers to run its own Python is refused before transformers is
called, even with ``y`` waiting on stdin (the marker file that the folder's code would create never appears)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from models import build_reward_model

from taxcut import TaxcutError
from taxcut.evaluation.loading import (
    load_causal_lm,
    load_generation_config,
    load_reward_model,
    load_tokenizer,
    refuse_custom_code,
)

EVIL_CODE = """
from pathlib import Path
Path({marker!r}).write_text("the folder's code ran")
from transformers import PretrainedConfig, PreTrainedTokenizerFast
class EvilConfig(PretrainedConfig):
    model_type = "evil_model"
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def plant_code(folder: Path, marker: Path) -> None:
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))


def edit_json(path: Path, **fields) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(fields)
    path.write_text(json.dumps(data))


def evil_config_folder(folder: Path, marker: Path) -> Path:
    """A folder whose config.json names an architecture transformers does not know, implemented in evil.py."""
    folder.mkdir(parents=True)
    plant_code(folder, marker)
    edit_json(
        folder / "config.json",
        model_type="evil_model",
        architectures=["EvilModel"],
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
    )
    return folder


def run_taxcut(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``taxcut ARGS`` in a fresh process with ``y`` answers waiting on stdin and a private transformers cache."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "taxcut.cli", *args],
        input="y\ny\ny\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def eval_spec(tmp_path: Path, **reward) -> Path:
    (tmp_path / "text.jsonl").write_text('{"text": "w1 w2 w3"}\n')
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "w1"}\n')
    spec: dict = {"tasks": [{"name": "ppl", "type": "perplexity", "path": str(tmp_path / "text.jsonl")}]}
    if reward:
        spec["reward"] = {"prompts": str(tmp_path / "prompts.jsonl"), "max_new_tokens": 2, **reward}
    path = tmp_path / "eval.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def assert_refused(result: subprocess.CompletedProcess, file: Path, marker: Path) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("taxcut: error: "), result.stderr
    assert f"{file}: 'auto_map' asks to run code shipped with the model" in lines[0]
    assert "Traceback" not in result.stderr and "[y/N]" not in result.stdout + result.stderr
    assert not marker.exists()


def test_the_hazard_is_real(tmp_path):
    """Without taxcut's check, plain transformers with ``y`` on stdin does run the folder's code."""
    marker = tmp_path / "ran"
    folder = evil_config_folder(tmp_path / "evil", marker)
    code = (
        "from transformers import AutoConfig\n"
        f"try:\n    AutoConfig.from_pretrained({str(folder)!r})\nexcept Exception:\n    pass\n"
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    subprocess.run(
        [sys.executable, "-c", code], input="y\n", capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert marker.exists()


def test_eval_refuses_a_model_with_auto_map_in_config(tmp_path):
    marker = tmp_path / "ran"
    folder = evil_config_folder(tmp_path / "evil", marker)
    assert_refused(run_taxcut(tmp_path, "eval", str(folder), str(eval_spec(tmp_path))), folder / "config.json", marker)


def test_eval_refuses_a_tokenizer_with_auto_map(tmp_path, llama_pair):
    marker = tmp_path / "ran"
    folder = Path(shutil.copytree(llama_pair[0], tmp_path / "model"))
    plant_code(folder, marker)
    edit_json(
        folder / "tokenizer_config.json",
        tokenizer_class="EvilTokenizer",
        auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]},
    )
    result = run_taxcut(tmp_path, "eval", str(folder), str(eval_spec(tmp_path)))
    assert_refused(result, folder / "tokenizer_config.json", marker)


def test_eval_refuses_a_reward_model_with_auto_map(tmp_path, llama_pair):
    marker = tmp_path / "ran"
    reward_model = build_reward_model(tmp_path / "rm")
    plant_code(reward_model, marker)
    edit_json(
        reward_model / "config.json",
        model_type="evil_model",
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"},
    )
    result = run_taxcut(tmp_path, "eval", str(llama_pair[0]), str(eval_spec(tmp_path, model=str(reward_model))))
    assert_refused(result, reward_model / "config.json", marker)


@pytest.mark.parametrize(
    ("file", "content", "hook"),
    [
        ("config.json", {"model_type": "llama", "text_config": {"auto_map": {"AutoConfig": "evil.X"}}}, "auto_map"),
        ("generation_config.json", {"auto_map": {"AutoConfig": "evil.X"}}, "auto_map"),
        ("tokenizer_config.json", {"auto_map": ["evil.X", None]}, "auto_map"),
        ("config.json", {"model_type": "llama", "custom_pipelines": {"evil": {"impl": "evil.X"}}}, "custom_pipelines"),
        ("adapter_config.json", {"auto_mapping": {"base_model_class": "X", "parent_library": "evil"}}, "auto_mapping"),
    ],
)
def test_every_code_hook_is_refused_by_every_loader(tmp_path, llama_pair, file, content, hook):
    folder = Path(shutil.copytree(llama_pair[0], tmp_path / "model"))
    (folder / file).write_text(json.dumps(content))
    message = f"{folder / file}: '{hook}' asks to run code shipped with the model"
    for load in (refuse_custom_code, load_causal_lm, load_tokenizer, load_reward_model, load_generation_config):
        with pytest.raises(TaxcutError, match=message.replace(".", r"\.")):
            load(folder)


def test_a_custom_generate_folder_is_refused(tmp_path, llama_pair):
    folder = Path(shutil.copytree(llama_pair[0], tmp_path / "model"))
    (folder / "custom_generate").mkdir()
    (folder / "custom_generate" / "generate.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(TaxcutError, match="custom_generate/generate.py: a model's own code; taxcut never runs"):
        load_causal_lm(folder)


def test_a_broken_config_is_one_line(tmp_path, llama_pair):
    folder = Path(shutil.copytree(llama_pair[0], tmp_path / "model"))
    (folder / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(TaxcutError, match=r"tokenizer_config.json: not valid JSON \(.*line 1\); restore the file"):
        load_tokenizer(folder)


def test_plain_folders_still_load(llama_pair):
    model = load_causal_lm(llama_pair[0])
    assert not model.training and load_tokenizer(llama_pair[0]).pad_token == "<pad>"


def test_loading_shows_no_progress_bar_of_transformers(llama_pair, capsys):
    """transformers draws a "Loading weights" bar on stderr by default; taxcut reports its own progress (and none
    with --no-progress)."""
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(llama_pair[0])
    assert "Loading weights" in capsys.readouterr().err  # the bar this test would catch
    load_causal_lm(llama_pair[0])
    load_tokenizer(llama_pair[0])
    assert capsys.readouterr().err == ""
