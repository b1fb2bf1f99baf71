"""The results file: one JSON line per evaluated candidate, appended and flushed to disk as each one finishes.

Nothing in it is ever rewritten: a sweep killed at any point and run again finds every finished candidate there
and evaluates only the rest. A line cut short by a kill is kept as it is and skipped when reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from taxcut.errors import TaxcutError


class ResultsStore:
    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        """Every complete record, in the order written."""
        if not self.path.exists():
            return []
        records = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
                if isinstance(record, dict) and "candidate_id" in record:
                    records.append(record)
        return records

    def append(self, record: dict) -> None:
        """Add one record durably (flushed and fsynced before returning)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # a cut-short line: leave it, start on a fresh line
                    line = "\n" + line
            handle.write(line.encode())
            handle.flush()
            os.fsync(handle.fileno())

    def find(self, candidate: str) -> dict:
        """The newest record whose candidate id starts with ``candidate`` (an id or an unambiguous prefix)."""
        if not self.path.is_file():
            raise TaxcutError(f"{self.path}: results file not found")
        matches = [r for r in self.records() if r["candidate_id"].startswith(candidate)]
        ids = {r["candidate_id"] for r in matches}
        if not ids:
            raise TaxcutError(f"{self.path}: no candidate with id {candidate!r}; see candidates.csv for the ids")
        if len(ids) > 1:
            raise TaxcutError(f"{self.path}: {candidate!r} matches {len(ids)} candidates; give more of the id")
        return matches[-1]
