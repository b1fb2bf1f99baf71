"""The results file: one JSON line per evaluated candidate, appended and flushed to disk as each one finishes.

Nothing in it is ever rewritten: a sweep killed at any point and run again finds every finished candidate there
and evaluates only the rest. A line cut short by a kill (the start of a JSON object that some ending completes) is
kept as it is and skipped when reading; any other line that is not JSON, or not a record, or whose ``candidate_id``
is not the id of its own candidate fields (a forged or hand-edited line), is an error naming the file and line --
in resume and in export alike, so an edited line can never lend its scores to another candidate. The file is never
read or written through a symbolic link.

A line holds the candidate (``candidate_id``, ``label``, ``kind`` and its ratio fields under ``candidate``), what
it was measured against (``context``, ``sft``, ``aligned``, ``extrapolate``, ``dtype``), the evaluation's fields
at top level (``reward``, ``tasks``, ``primary``, ``directions``, ``seconds``, ``stderr``, ``primary_stderr``,
``cost``, ``items``; see :class:`taxcut.evaluation.result.EvaluationResult`), ``finished``, ``taxcut_version``, and
for a stage of successive halving ``share``: the share of the evaluation data it saw (no ``share``: all of it). A
stage has a context of its own (:func:`taxcut.sweep.halving.stage_context`), so that only full-data results count as a
candidate's result, and keeps its item statistics under ``stats`` for the next stage to add items to.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from taxcut.errors import TaxcutError
from taxcut.evaluation.result import EvaluationResult
from taxcut.spec.candidates import Candidate

_EVALUATION_KEYS = ("reward", "tasks", "primary", "directions", "seconds", "stderr", "primary_stderr", "cost", "items")
_CANDIDATE_KEYS = ("label", "kind")


@dataclass(frozen=True)
class ResultRecord:
    """One evaluated candidate, as a line of the results file."""

    candidate_id: str
    candidate: Candidate
    result: EvaluationResult
    mean_alpha: float | None
    sft: str
    aligned: str
    context: str | None = None  # what the result depends on besides the candidate (see sweep_context)
    extrapolate: bool = False
    dtype: str | None = None
    finished: str = ""
    taxcut_version: str = ""
    inputs: dict[str, Any] | None = None  # the models' weights_identity when measured (export checks it)
    share: float = 1.0  # the share of the evaluation data it saw (successive halving's stages; 1: all of it)
    stats: dict[str, Any] | None = None  # a stage's item statistics (Measurement.to_json), grown by the next stage
    allow_tokenizer_mismatch: bool = False  # the sweep allowed models whose tokenizers differ (export does too)

    @property
    def label(self) -> str:
        return self.candidate.label

    @property
    def kind(self) -> str:
        return self.candidate.kind

    def to_json(self) -> dict[str, Any]:
        """The line's fields (the evaluation's at top level, seconds rounded to milliseconds)."""
        evaluation = self.result.to_dict()
        evaluation["seconds"] = round(evaluation["seconds"], 3)
        return {
            "candidate_id": self.candidate_id,
            "label": self.label,
            "kind": self.kind,
            "candidate": self.candidate.ratio_fields(),
            "mean_alpha": self.mean_alpha,
            "context": self.context,
            "sft": self.sft,
            "aligned": self.aligned,
            "extrapolate": self.extrapolate,
            "dtype": self.dtype,
            **evaluation,
            "finished": self.finished,
            "taxcut_version": self.taxcut_version,
            **({"inputs": self.inputs} if self.inputs is not None else {}),
            **({"share": self.share, "stats": self.stats} if self.share < 1.0 else {}),
            **({"allow_tokenizer_mismatch": True} if self.allow_tokenizer_mismatch else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResultRecord:
        """The record of a line's fields; a missing or mistyped field raises pydantic's ``ValidationError``."""
        shaped = {key: value for key, value in data.items() if key not in _EVALUATION_KEYS + _CANDIDATE_KEYS}
        fields = data.get("candidate")
        shaped["candidate"] = (
            {**fields, **{key: data.get(key) for key in _CANDIDATE_KEYS}} if isinstance(fields, dict) else fields
        )
        shaped["result"] = {key: data[key] for key in _EVALUATION_KEYS if key in data}
        return _ADAPTER.validate_python(shaped)


_ADAPTER = TypeAdapter(ResultRecord)


class ResultsStore:
    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[ResultRecord]:
        """Every complete record, in the order written."""
        return [record for _, record in self.numbered()]

    def numbered(self) -> list[tuple[int, ResultRecord]]:
        """Every complete record with its line number, in the order written."""
        if not os.path.lexists(self.path):
            return []
        records = []
        with self._open(os.O_RDONLY | os.O_NONBLOCK, "r") as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    if _cut_short(line):
                        continue  # a line cut short by a killed run
                    raise TaxcutError(f"{self.path}, line {number}: not JSON; fix or delete the line") from None
                records.append((number, self._parse(data, number)))
        return records

    def _parse(self, data: Any, number: int) -> ResultRecord:
        where = f"{self.path}, line {number}"
        if not isinstance(data, dict):
            raise TaxcutError(f"{where}: not a result record (expected a JSON object); fix or delete the line")
        try:
            record = ResultRecord.from_json(data)
        except ValidationError as exc:
            raise TaxcutError(f"{where}: not a result record: {_describe(exc)}; fix or delete the line") from None
        # a model's id also covers its weights today, which may have changed since: only ratios are checked here
        if record.candidate.model is None and record.candidate.id != record.candidate_id:
            raise TaxcutError(
                f"{where}: candidate_id {record.candidate_id!r} is not the id of the line's candidate "
                f"fields ({record.candidate.id}): the line was edited; restore it, or delete it and "
                "rerun the sweep"
            )
        return record

    def _open(self, flags: int, mode: str):
        """The results file opened without following a symbolic link; it must be a regular file."""
        if self.path.is_symlink():
            raise TaxcutError(_LINK.format(self.path))
        try:
            descriptor = os.open(self.path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # made a link since the check above
                raise TaxcutError(_LINK.format(self.path)) from None
            raise TaxcutError(f"{self.path}: cannot open the results file ({exc.strerror})") from None
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise TaxcutError(f"{self.path}: not a regular file; taxcut keeps its results in one: remove it")
        return os.fdopen(descriptor, mode, **({} if "b" in mode else {"encoding": "utf-8"}))

    def append(self, record: ResultRecord) -> None:
        """Add one record durably (flushed and fsynced before returning)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record.to_json(), sort_keys=True) + "\n"
        with self._open(os.O_RDWR | os.O_CREAT | os.O_APPEND, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # a cut-short line: leave it, start on a fresh line
                    line = "\n" + line
            handle.write(line.encode())
            handle.flush()
            os.fsync(handle.fileno())

    def find(self, candidate: str) -> ResultRecord:
        """The newest record whose candidate id starts with ``candidate`` (an id or an unambiguous prefix): its
        newest full-data record, or for a candidate dropped by successive halving, its newest stage."""
        return self.locate(candidate)[1]

    def locate(self, candidate: str) -> tuple[int, ResultRecord]:
        """:meth:`find`'s record with its line number."""
        if not self.path.is_symlink() and not self.path.is_file():
            raise TaxcutError(f"{self.path}: results file not found")
        matches = [(n, r) for n, r in self.numbered() if r.candidate_id.startswith(candidate)]
        ids = {r.candidate_id for _, r in matches}
        if not ids:
            raise TaxcutError(f"{self.path}: no candidate with id {candidate!r}; see candidates.csv for the ids")
        if len(ids) > 1:
            raise TaxcutError(f"{self.path}: {candidate!r} matches {len(ids)} candidates; give more of the id")
        return ([(n, r) for n, r in matches if r.share >= 1.0] or matches)[-1]


_LINK = "{} is a symbolic link; taxcut does not follow links for its results: remove it"
# what completes a line cut inside a value, after its open string is closed: a number, a value, a key's value,
# the next key, or the rest of true / false / null
_ENDINGS = ("", "0", "null", ":null", '"":null', "rue", "ue", "e", "alse", "lse", "se", "ull", "ll", "l")


def _cut_short(line: str) -> bool:
    """Whether ``line`` is the start of a JSON object cut off by a kill: some ending makes it whole."""
    if not line.startswith("{"):
        return False
    closers: list[str] = []
    in_string = escaped = False
    for char in line:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
        elif char in "}]":
            if not closers:
                return False
            closers.pop()
    if not closers:
        return False  # whole, so not cut short: broken some other way
    close = ""
    if in_string:
        partial = re.search(r"\\u[0-9a-fA-F]{0,3}$", line)  # cut inside a \uXXXX escape
        close = ("n" if escaped else "0" * (6 - len(partial.group())) if partial else "") + '"'
    for ending in _ENDINGS:
        try:
            json.loads(line + close + ending + "".join(reversed(closers)))
        except json.JSONDecodeError:
            continue
        return True
    return False


def _describe(exc: ValidationError) -> str:
    """pydantic's first problem, its field written with the line's own (flat) field names."""
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"]]
    if location[:1] == ["result"] or (location[:1] == ["candidate"] and location[1:2] in (["label"], ["kind"])):
        location = location[1:]
    message = "is missing" if first["type"] == "missing" else first["msg"].removeprefix("Value error, ")
    return f"field '{'.'.join(location)}' {message}"
