"""Reading JSONL files with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from taxcut.errors import TaxcutError


def read_jsonl(path: Path, *, needs: Sequence[Sequence[str]], what: str, limit: int | None = None) -> list[dict]:
    """The records of a JSONL file; each must hold, for every group in ``needs``, at least one of its fields.

    ``needs=[("prompt", "messages")]`` means each line needs ``prompt`` or ``messages``.
    """
    path = Path(path)
    if not path.is_file():
        raise TaxcutError(f"{path}: {what} file not found")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaxcutError(f"{path}, line {number}: not valid JSON ({exc.msg}); one JSON object per line") from None
            if not isinstance(record, dict):
                raise TaxcutError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
            for group in needs:
                if not any(record.get(field) is not None for field in group):
                    wanted = " or ".join(f"'{f}'" for f in group)
                    raise TaxcutError(f"{path}, line {number}: no {wanted} field; each {what} line needs it")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise TaxcutError(f"{path}: no records; the {what} file is empty")
    return records
