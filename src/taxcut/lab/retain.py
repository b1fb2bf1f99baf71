"""The lab's retain split: capability texts for the tax-aware fit (``taxcut fit --retain``), none of them a test item.

Drawn from the same capability generators as the test sets (upper-casing, reversal), with a stream of its own
(:func:`retain_seed`), excluding every prompt of the lab's evaluation files. The knowledge-base task has no split
to draw from (its test set is the whole knowledge base), so it has no retain records. The file is written on first
use into an already built lab (``data/retain.jsonl``) and is the same every time for the same config: labs built
before it existed stay valid, their cache key unchanged.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from taxcut.errors import TaxcutError
from taxcut.hma.retain import refuse_shared_lines
from taxcut.io.destination import staged_file
from taxcut.lab import tasks
from taxcut.lab.build import Lab

RETAIN_FILE = "retain.jsonl"


def retain_seed(seed: int) -> str:
    """The retain split's random stream: another seed than the lab's, which drew the test and training sets."""
    return f"taxcut-lab-retain-{seed}"


def evaluation_files(lab: Lab) -> list[tuple[str, Path]]:
    """The lab's evaluation files as (role, path): the chat prompts and each capability task's test set."""
    return [
        ("reward prompts", lab.data / "chat_prompts.jsonl"),
        *((f"task '{name}' data", lab.data / f"{name}.jsonl") for name in lab.capability_tasks),
    ]


def retain_set(lab: Lab) -> Path:
    """``data/retain.jsonl`` of ``lab`` (prompt, response), written on first use: ``test_per_task`` records per
    capability with a generator, disjoint from every evaluation file (checked)."""
    path = lab.data / RETAIN_FILE
    if path.is_file():
        return path
    held = {
        json.loads(line)["prompt"]
        for _, file in evaluation_files(lab)
        for line in file.read_text().splitlines()
        if line.strip()
    }
    rng = random.Random(retain_seed(lab.config.seed))
    count = lab.config.test_per_task
    examples = tasks.uppercase(rng, count, exclude=held) + tasks.reversal(rng, count, exclude=held)
    try:
        with staged_file(path, overwrite=False, inputs=[], kind="lab retain set") as partial:
            partial.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.answer}) + "\n" for e in examples))
    except TaxcutError:
        if not path.is_file():  # another process wrote the same file first: use it
            raise
    refuse_shared_lines(path, evaluation_files(lab))
    return path
