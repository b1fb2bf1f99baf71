"""The non-weight files of a Hugging Face model folder: config, tokenizer, generation config, chat template."""

from __future__ import annotations

import json
import shutil
from fnmatch import fnmatchcase
from pathlib import Path

# Files copied from the input folder beside the merged weights. Weights, optimizer states and code are never copied.
SIDE_FILE_GLOBS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
)
SIDE_FOLDERS: tuple[str, ...] = ("additional_chat_templates",)


def copy_side_files(source: Path, destination: Path, *, overwrite: bool = False) -> list[str]:
    """Copy the config, tokenizer and template files of ``source`` into ``destination``; return their names."""
    copied = []
    for entry in sorted(source.iterdir()):
        if entry.is_file() and any(fnmatchcase(entry.name, glob) for glob in SIDE_FILE_GLOBS):
            shutil.copy2(entry, destination / entry.name)
            copied.append(entry.name)
        elif entry.is_dir() and entry.name in SIDE_FOLDERS:
            shutil.copytree(entry, destination / entry.name, dirs_exist_ok=overwrite)
            copied.append(entry.name + "/")
    return copied


def set_config_dtype(folder: Path, dtype_label: str) -> None:
    """Record the weights' dtype in ``config.json`` (``dtype``, and the older ``torch_dtype`` where present)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["dtype"] = dtype_label
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype_label
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
