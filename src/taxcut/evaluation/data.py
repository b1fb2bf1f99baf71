"""Reading JSONL files with errors that name the file and the line.

A line is read with a size bound (:data:`MAX_LINE_BYTES`, its newline included): a longer one is refused before it
is held whole in memory and before any tokenisation, so that a 10 GB single-line file costs one bounded read. The
bound is above any text a model's context can hold (128k tokens are about 0.5 MiB of English text; JSON escapes of
other scripts may triple that).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from taxcut.errors import TaxcutError

MAX_LINE_BYTES = 4 * 2**20  # one JSONL line of prompts, task items or fit examples: 4 MiB


def read_jsonl(
    path: Path,
    *,
    needs: Sequence[Sequence[str]],
    what: str,
    limit: int | None = None,
    check: Callable[[dict], str | None] | None = None,
) -> list[dict]:
    """The records of a JSONL file; each must hold, for every group in ``needs``, at least one of its fields.

    ``needs=[("prompt", "messages")]`` means each line needs ``prompt`` or ``messages``. ``check`` may describe
    what else is wrong with a record (None when nothing is); its answer is reported with the file and line. A line
    over :data:`MAX_LINE_BYTES` is refused after reading at most that many bytes of it.
    """
    path = Path(path)
    if not path.is_file():
        raise TaxcutError(f"{path}: {what} file not found")
    records = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(_bounded_lines(handle, path, what), start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise TaxcutError(f"{path}: not UTF-8 text (line {number}); save the {what} file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaxcutError(
                    f"{path}, line {number}: not valid JSON ({exc.msg}); one JSON object per line"
                ) from None
            except RecursionError:
                raise TaxcutError(f"{path}, line {number}: JSON nested too deeply") from None
            if not isinstance(record, dict):
                raise TaxcutError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
            for group in needs:
                if not any(record.get(field) is not None for field in group):
                    wanted = " or ".join(f"'{f}'" for f in group)
                    raise TaxcutError(f"{path}, line {number}: no {wanted} field; each {what} line needs it")
            problem = check(record) if check is not None else None
            if problem is not None:
                raise TaxcutError(f"{path}, line {number}: {problem}")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise TaxcutError(f"{path}: no records; the {what} file is empty")
    return records


def _bounded_lines(handle, path: Path, what: str):
    """The lines of a binary file, each read with ``readline(MAX_LINE_BYTES + 1)``: a longer one is an error."""
    number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise TaxcutError(
                f"{path}, line {number}: over {MAX_LINE_BYTES} bytes; a {what} line holds one record "
                "of text a model can read: split or shorten it"
            )
        yield raw


def prompt_problem(record: dict) -> str | None:
    """What is wrong with a prompt record (``prompt`` text or a chat of ``messages``), or None."""
    prompt = record.get("prompt")
    if prompt is not None:
        return None if isinstance(prompt, str) else f"'prompt' must be text, got {_kind(prompt)}"
    messages = record.get("messages")
    shape = 'a list of {"role": ..., "content": ...} objects'
    if not isinstance(messages, list):
        return f"'messages' must be {shape}, got {_kind(messages)}; give plain text as 'prompt' instead"
    if not messages:
        return f"'messages' is an empty list; it must be {shape}"
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            return f"'messages' item {number} must be an object with 'role' and 'content', got {_kind(message)}"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                return f"'messages' item {number}: '{key}' must be text, got {_kind(message.get(key))}"
    return None


def _kind(value) -> str:
    names = {str: "text", bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "nothing" if value is None else names.get(type(value), type(value).__name__)
