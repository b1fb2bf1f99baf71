"""Do two models' tokenizers turn the same text into the same token ids? Answered from the tokenizer FILES, without
transformers: averaging weights is only meaningful when row i of every embedding means the same token.

What decides the ids is compared by meaning, not bytes: the vocabulary, the merges, the added tokens, the model's
and the pipeline's settings (normalizer, pre-tokenizer, post-processor) and the special tokens. So a tokenizer saved
again (other JSON formatting, the newer list form of merges, other truncation, padding, decoder, chat template or
``model_max_length``) matches. A pad token set in one model only (common after fine-tuning) is not a difference:
padding is masked. Binary or very large files (sentencepiece models, ``*.tiktoken``) are compared byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

_MAX_PARSED = 256 * 2**20  # larger text files are compared byte for byte
_BYTE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.txt")
_SPECIAL_ROLES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
    "add_bos_token",
    "add_eos_token",
)  # not pad_token: padding is masked
_PIPELINE = ("normalizer", "pre_tokenizer", "post_processor")
_EXACT = ("vocabulary", "merges", "added tokens")  # compared whole; the settings only where both files have a field


@dataclass(frozen=True)
class Aspect:
    """One thing that decides the ids ("vocabulary", "merges", ...), its value and the file it was read from."""

    file: str
    value: Any


def tokenizer_aspects(folders: Sequence[Path]) -> dict[str, Aspect]:
    """What decides a model's token ids, by aspect; a file in a later folder wins (an adapter's own files over its
    base's). Empty when the model has no tokenizer files."""
    files: dict[str, Path] = {}
    for folder in folders:
        for entry in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
            if entry.is_file() and (
                entry.name in _READERS or entry.name in _BYTE_FILES or entry.name.endswith(".tiktoken")
            ):
                files[entry.name] = entry
    aspects: dict[str, Aspect] = {}
    for name in sorted(files, key=_reading_order):
        found = files[name].stat()  # a sweep plans every candidate: each file is parsed once while it is unchanged
        identity = (found.st_size, found.st_mtime_ns, found.st_ino)  # a Hub snapshot's file links to a blob
        for aspect, value in _read(name, files[name].resolve(), *identity).items():
            _add(aspects, aspect, Aspect(name, value))
    return aspects


def tokenizer_difference(reference: dict[str, Aspect], other: dict[str, Aspect], names: tuple[str, str]) -> str | None:
    """The first difference between two models' aspects, as "FILE: what differs" (``names`` name the models in it),
    or None when every aspect both have agrees."""
    for aspect in sorted((a for a in reference if a in other), key=_importance):
        left, right = reference[aspect], other[aspect]
        values = (left.value, right.value)
        if aspect not in _EXACT:  # a field one version writes and another leaves out is not a difference
            values = _shared(*values), _shared(*values[::-1])
        detail = _describe(aspect, *values, names)
        if detail is not None:
            where = right.file if right.file == left.file else f"{right.file} (the {names[0]}'s {left.file})"
            return f"{where}: {detail}"
    return None


def _importance(aspect: str) -> tuple[int, str]:
    """The order differences are reported in: the ids themselves first, files compared by hash last."""
    order = ("vocabulary", "merges", "added tokens", "model settings", *_PIPELINE, "special tokens")
    return (order.index(aspect) if aspect in order else len(order), aspect)


def _shared(value: Any, other: Any) -> Any:
    """``value`` with only the mapping keys ``other`` has too, at every depth."""
    if isinstance(value, dict) and isinstance(other, dict):
        return {key: _shared(item, other[key]) for key, item in value.items() if key in other}
    if isinstance(value, list) and isinstance(other, list) and len(value) == len(other):
        return [_shared(a, b) for a, b in zip(value, other)]
    return value


def _reading_order(name: str) -> tuple[int, str]:
    """tokenizer.json last, so that its vocabulary and merges win over vocab.json and merges.txt beside it."""
    return (name == "tokenizer.json", name)


def _add(aspects: dict[str, Aspect], aspect: str, found: Aspect) -> None:
    """Added and special tokens gather from several files; any other aspect is read from the last file that has it."""
    if aspect in ("added tokens", "special tokens") and aspect in aspects:
        found = Aspect(
            found.file if aspect == "added tokens" else aspects[aspect].file, {**aspects[aspect].value, **found.value}
        )
    aspects[aspect] = found


@lru_cache(maxsize=16)
def _read(name: str, path: Path, size: int, *_identity: int) -> dict[str, Any]:
    """The aspects one file gives (never modified: cached); a binary, very large or unreadable file is its own
    aspect, compared by hash."""
    reader = _READERS.get(name)
    if reader is not None and size <= _MAX_PARSED:
        try:
            return reader(path)
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError):  # not the expected layout
            pass
    return {name: _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _from_tokenizer_json(path: Path) -> dict[str, Any]:
    data = _json(path)
    model = dict(data["model"])
    found: dict[str, Any] = {}
    if "vocab" in model:
        vocab = model.pop("vocab")
        found["vocabulary"] = vocab if isinstance(vocab, dict) else [list(entry) for entry in vocab]
    if "merges" in model:
        found["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model.pop("merges")]
    found["added tokens"] = {token["content"]: token["id"] for token in data.get("added_tokens") or []}
    found["model settings"] = model
    found.update((key, data.get(key)) for key in _PIPELINE)
    return found


def _from_merges_txt(path: Path) -> dict[str, Any]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {"merges": [line for line in lines if line.strip() and not line.startswith("#version")]}


def _from_tokenizer_config(path: Path) -> dict[str, Any]:
    data = _json(path)
    added = {entry["content"]: int(key) for key, entry in (data.get("added_tokens_decoder") or {}).items()}
    return {"added tokens": added, "special tokens": _special(data)}


def _special(data: dict) -> dict[str, Any]:
    """The special tokens' roles, each token by its text (files write a token as text or as a mapping)."""

    def text(token: Any) -> Any:
        if isinstance(token, list):
            return [text(t) for t in token]
        return token.get("content") if isinstance(token, dict) else token

    return {role: text(data[role]) for role in _SPECIAL_ROLES if data.get(role) is not None}


_READERS = {
    "tokenizer.json": _from_tokenizer_json,
    "vocab.json": lambda path: {"vocabulary": dict(_json(path))},
    "merges.txt": _from_merges_txt,
    "tokenizer_config.json": _from_tokenizer_config,
    "special_tokens_map.json": lambda path: {"special tokens": _special(_json(path))},
    "added_tokens.json": lambda path: {"added tokens": dict(_json(path))},
}


def _describe(aspect: str, left: Any, right: Any, names: tuple[str, str]) -> str | None:
    """What differs between two values of ``aspect``, in words, or None when they agree."""
    if left == right:
        return None
    if isinstance(left, dict) and isinstance(right, dict) and aspect in ("vocabulary", "added tokens"):
        return _token_difference(left, right, names)
    if isinstance(left, list) and isinstance(right, list) and aspect in ("vocabulary", "merges"):
        entry = "token" if aspect == "vocabulary" else "merge"
        for index, (a, b) in enumerate(zip(left, right)):
            if a != b:
                return f"{entry} {index} is {_short(a)} in the {names[0]} but {_short(b)} in the {names[1]}"
        return f"the {names[0]} has {len(left)} {entry}s, the {names[1]} {len(right)}"
    if aspect == "special tokens":
        role = next(r for r in left if left[r] != right.get(r))
        return f"'{role}' is {_short(left[role])} in the {names[0]} but {_short(right.get(role))} in the {names[1]}"
    if aspect not in _PIPELINE and aspect != "model settings":
        return "the file's contents differ"  # a file compared byte for byte
    return f"the {aspect} differ" if aspect.endswith("s") else f"the {aspect.replace('_', '-')} differs"


def _token_difference(left: dict, right: dict, names: tuple[str, str]) -> str:
    for token, index in sorted(left.items(), key=lambda item: (_number(item[1]), item[0])):
        if token not in right:
            return f"token {_short(token)} (id {index}) is in the {names[0]} but not in the {names[1]}"
        if right[token] != index:
            return f"token {_short(token)} is id {index} in the {names[0]} but {right[token]} in the {names[1]}"
    token = min(set(right) - set(left))
    return f"token {_short(token)} (id {right[token]}) is in the {names[1]} but not in the {names[0]}"


def _number(value: Any) -> float:
    return value if isinstance(value, int) else float("inf")


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
