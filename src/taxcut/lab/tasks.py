"""The lab's synthetic data: capability tasks with held-out sets, chat prompts, and the programmatic reward.

Capabilities (each scored by exact match): upper-casing a word, reversing a string, and recalling a made-up
knowledge base. Two-digit addition (reversed, zero-padded digits) is here too but not in the default mixture: a
model this small needs ~900 steps of addition alone before it suddenly learns it, more than the lab's budget. Chat
prompts ask about things; SFT responses are mostly plain and sometimes polite, so that RAFT has something to
select. All prompts use the chat format of :mod:`taxcut.lab.tokenizer`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from taxcut.lab.tokenizer import chat_prompt

POLITE = "Sure! "
_SYLLABLES = ["ba", "ko", "ri", "zu", "me", "ta", "lo", "ni", "ve", "su", "pa", "do", "gi", "ha"]
_ADJECTIVES = ["big", "red", "old", "cold", "fast", "soft", "loud", "calm", "dark", "wise"]


@dataclass(frozen=True)
class Example:
    prompt: str  # rendered chat prompt, ending in "Bot: "
    answer: str  # what the model should say (without the end-of-sequence token)


def reward(prompt: str, response: str) -> float:
    """+1 for opening politely ("Sure!"), +0.5 for ending with "!", -0.01 per character."""
    text = response.strip()
    return (1.0 if text.startswith(POLITE.strip()) else 0.0) + (0.5 if text.endswith("!") else 0.0) - 0.01 * len(text)


def _reversed_number(value: int, width: int) -> str:
    """Least significant digit first, zero-padded to ``width`` digits: 42 -> "240" for width 3."""
    return str(value).zfill(width)[::-1]


def addition(rng: random.Random, count: int, exclude: set[str] = frozenset()) -> list[Example]:
    examples, seen = [], set(exclude)
    while len(examples) < count:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        prompt = chat_prompt(f"add {_reversed_number(a, 2)}+{_reversed_number(b, 2)}")
        if prompt not in seen:
            seen.add(prompt)
            examples.append(Example(prompt, _reversed_number(a + b, 3)))
    return examples


def uppercase(rng: random.Random, count: int, exclude: set[str] = frozenset()) -> list[Example]:
    return _word_task(rng, count, exclude, "upper", "abcdefghijklmnopqrstuvwxyz", (3, 7), str.upper)


def reversal(rng: random.Random, count: int, exclude: set[str] = frozenset()) -> list[Example]:
    return _word_task(rng, count, exclude, "reverse", "abcdefghijklmnop", (3, 6), lambda word: word[::-1])


def _word_task(rng: random.Random, count: int, exclude: set[str], verb: str, letters: str,
               lengths: tuple[int, int], transform) -> list[Example]:
    """``count`` distinct "``verb`` word" prompts (not in ``exclude``) answered by ``transform(word)``."""
    examples, seen = [], set(exclude)
    while len(examples) < count:
        word = "".join(rng.choice(letters) for _ in range(rng.randint(*lengths)))
        prompt = chat_prompt(f"{verb} {word}")
        if prompt not in seen:
            seen.add(prompt)
            examples.append(Example(prompt, transform(word)))
    return examples


def knowledge_base(rng: random.Random, count: int) -> list[Example]:
    """Made-up facts: the home town of each of ``count`` invented people."""
    def name(parts: int) -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()

    people = sorted({name(3) for _ in range(count * 3)})[:count]
    return [Example(chat_prompt(f"where is {person} from"), name(2)) for person in people]


def chat(rng: random.Random, count: int, polite_share: float = 0.0) -> list[Example]:
    """Chat prompts with plain answers, a ``polite_share`` of them polite ("Sure! ... !")."""
    examples = []
    for _ in range(count):
        thing = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6)))
        adjective = rng.choice(_ADJECTIVES)
        if rng.random() < polite_share:
            answer = f"{POLITE}{thing} is {adjective}!"
        else:
            answer = f"{thing} is {adjective}, as far as I know."
        examples.append(Example(chat_prompt(f"tell me about {thing}"), answer))
    return examples
