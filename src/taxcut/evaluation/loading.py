"""The one place where transformers loads anything from a model folder: never a folder's own code, never stdin.

Every ``from_pretrained`` of the package (causal LMs, tokenizers, reward models, generation configs) goes through
this module. Before transformers is called, the JSON files it reads are checked for custom-code hooks
(``auto_map`` and the like): such a folder is refused with one line naming the file, so transformers never gets
to ask "run the custom code? [y/N]". The calls themselves pass ``trust_remote_code=False``, run with an empty
stdin and with transformers' remote-code prompt switched off, as a second and third line of defence. A Hub ID
(``org/name[@revision]``) is resolved to its snapshot in the Hugging Face cache first (:mod:`taxcut.io.hub`), so
transformers only ever reads local files.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from taxcut.errors import TaxcutError, first_line
from taxcut.io.hub import model_path

# The JSON files transformers (and peft, through transformers) reads from a model folder when loading a model,
# a tokenizer, a processor or a generation config.
CONFIG_FILES: tuple[str, ...] = (
    "config.json",
    "tokenizer_config.json",
    "generation_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "feature_extractor_config.json",
    "adapter_config.json",
)
# Keys through which such a file asks for code shipped with the model (or named by it) to be imported and run.
CODE_HOOKS: tuple[str, ...] = ("auto_map", "auto_mapping", "custom_pipelines")
# Files whose mere presence asks transformers to run them (a model's own ``generate``).
CODE_FILES: tuple[str, ...] = ("custom_generate/generate.py",)
_MAX_CONFIG_BYTES = 64 * 2**20


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise TaxcutError("device 'cuda' was asked for but no GPU is available; use 'auto' or 'cpu'")
    return torch.device(device)


def refuse_custom_code(folder: Path) -> None:
    """Raise a one-line :class:`TaxcutError` if ``folder`` asks transformers to run code of its own."""
    folder = Path(folder)
    for name in CODE_FILES:
        if (folder / name).exists():
            raise TaxcutError(
                f"{folder / name}: a model's own code; taxcut never runs code shipped with a model — "
                "remove it or use a folder without it"
            )
    for name in CONFIG_FILES:
        path = folder / name
        if not path.is_file():
            continue
        hook = _code_hook(_read_json(path))
        if hook is not None:
            raise TaxcutError(
                f"{path}: '{hook}' asks to run code shipped with the model; taxcut never runs a "
                "model's own code — use a model whose architecture transformers supports natively"
            )


def _read_json(path: Path):
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise TaxcutError(f"{path}: larger than {_MAX_CONFIG_BYTES // 2**20} MB; not a model configuration file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TaxcutError(f"{path}: not UTF-8 text; restore the file") from None
    except json.JSONDecodeError as exc:
        raise TaxcutError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); restore the file") from None
    except RecursionError:
        raise TaxcutError(f"{path}: nested too deeply; restore the file") from None


def _code_hook(value, depth: int = 0) -> str | None:
    """The first custom-code key anywhere in a parsed JSON value (sub-configs included), or None."""
    if depth > 64:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if key in CODE_HOOKS:
                return key
            found = _code_hook(item, depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _code_hook(item, depth + 1)
            if found is not None:
                return found
    return None


@contextmanager
def no_transformers_bars() -> Iterator[None]:
    """Run transformers without progress bars of its own on stderr (taxcut reports its own progress)."""
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            transformers_logging.enable_progress_bar()


@contextmanager
def _no_prompt() -> Iterator[None]:
    """Run transformers with an empty stdin, its remote-code prompt turned into an immediate refusal, and no
    progress bar of its own on stderr (taxcut reports its own progress and errors)."""
    from transformers import dynamic_module_utils

    dynamic_module_utils.TIME_OUT_REMOTE_CODE = 0  # 0: refuse at once instead of asking on stdin
    previous = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        with no_transformers_bars():
            yield
    finally:
        sys.stdin = previous


def _checked_folder(folder: Path, what: str) -> Path:
    folder = model_path(folder)
    if not (folder / "config.json").is_file():
        raise TaxcutError(f"{folder}: {what} folder not found or has no config.json")
    refuse_custom_code(folder)
    return folder


def load_causal_lm(folder: Path, *, device: torch.device | str = "cpu", dtype: str | None = None):
    """A causal LM from a local folder or a Hub ID (never remote code), in eval mode, with a one-line error if it
    won't load."""
    from transformers import AutoModelForCausalLM

    folder = _checked_folder(folder, "model")
    try:
        with _no_prompt():
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype or "auto", trust_remote_code=False, local_files_only=True
            )
    except Exception as exc:  # transformers raises many kinds; all mean "does not load"
        raise TaxcutError(f"{folder}: does not load as a causal language model ({first_line(exc)})") from None
    return model.to(device).eval()


def load_tokenizer(folder: Path):
    """The tokenizer of a local folder or a Hub ID (never remote code), with a one-line error if it won't load."""
    from transformers import AutoTokenizer

    folder = model_path(folder)
    refuse_custom_code(folder)
    try:
        with _no_prompt():
            return AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except Exception as exc:
        raise TaxcutError(f"{folder}: the tokenizer does not load ({first_line(exc)})") from None


def load_reward_model(folder: Path, *, device: torch.device | str = "cpu"):
    """``(model, tokenizer)`` of an ``AutoModelForSequenceClassification`` folder or Hub ID, the model in eval
    mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = _checked_folder(folder, "reward model")
    try:
        with _no_prompt():
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, trust_remote_code=False, local_files_only=True
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; all mean "does not load"
        raise TaxcutError(
            f"{folder}: the reward model does not load as a sequence classifier ({first_line(exc)})"
        ) from None
    return model.to(device).eval(), tokenizer


def load_generation_config(folder: Path):
    """The ``generation_config.json`` of a local folder as a ``GenerationConfig``, with a one-line error.

    ``GenerationConfig`` has no remote-code path and takes no ``trust_remote_code`` (it would be stored as a
    generation attribute); the folder is still checked for code hooks first.
    """
    from transformers import GenerationConfig

    folder = model_path(folder)
    refuse_custom_code(folder)
    try:
        with _no_prompt():
            return GenerationConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise TaxcutError(f"{folder / 'generation_config.json'}: does not load ({first_line(exc)})") from None
