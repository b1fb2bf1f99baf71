"""Loading local models for evaluation: never remote code, one-line errors when a folder does not load."""

from __future__ import annotations

from pathlib import Path

import torch

from taxcut.errors import TaxcutError, first_line


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise TaxcutError("device 'cuda' was asked for but no GPU is available; use 'auto' or 'cpu'")
    return torch.device(device)


def load_causal_lm(folder: Path, *, device: torch.device | str = "cpu", dtype: str | None = None):
    """A causal LM from a local folder (never remote code), in eval mode, with a one-line error if it won't load."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise TaxcutError(f"{folder}: model folder not found or has no config.json")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or "auto")
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; all mean "does not load"
        raise TaxcutError(f"{folder}: does not load as a causal language model ({first_line(exc)})") from None
    return model.to(device).eval()


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(Path(folder))
    except Exception as exc:  # noqa: BLE001
        raise TaxcutError(f"{folder}: the tokenizer does not load ({first_line(exc)})") from None
