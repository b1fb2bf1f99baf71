"""The lab's synthetic data: capability tasks with held-out sets, chat prompts, and the programmatic reward.

Capabilities (each scored by exact match): upper-casing a word, reversing a string, and recalling a made-up
knowledge base. Two-digit addition (reversed, zero-padded digits) is here too but not in the default mixture: a
model this small needs ~900 steps of addition alone before it suddenly learns it, more than the lab's budget. Chat
prompts ask about things; SFT responses are mostly plain, each style feature the reward likes showing up in a few
of them independently (:data:`STYLE_RATES`), so that RAFT has something to select. All prompts use the chat format
of :mod:`taxcut.lab.tokenizer`.

The reward is graded: +0.4 for each of five style features, -0.01 per character. Rare features are picked up by
RAFT later and less firmly than common ones, so along model averaging they switch on at larger ``a`` and the reward
rises over most of ``a`` in [0, 1] instead of jumping once (an earlier binary reward -- "Sure!" +1, "!" +0.5 --
had reached 87% of its gain at a = 0.4; a concave count saturated earlier than this linear one).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from taxcut.lab.tokenizer import chat_prompt

# The style the reward likes, as data: each feature and the share of SFT chat answers that show it.
STYLE_RATES = {"opening": 0.12, "capital": 0.08, "intensifier": 0.06, "exclamation": 0.15, "closing": 0.04}
FEATURE_REWARD = 0.4
LENGTH_COST = 0.01
OPENING, INTENSIFIER, CLOSING = "Sure!", "really", "Enjoy!"
_SYLLABLES = ["ba", "ko", "ri", "zu", "me", "ta", "lo", "ni", "ve", "su", "pa", "do", "gi", "ha"]
_ADJECTIVES = ["big", "red", "old", "cold", "fast", "soft", "loud", "calm", "dark", "wise"]


@dataclass(frozen=True)
class Example:
    prompt: str  # rendered chat prompt, ending in "Bot: "
    answer: str  # what the model should say (without the end-of-sequence token)


def style_features(response: str) -> dict[str, bool]:
    """Which style features a response shows: an opening "Sure!", a capitalised answer, the intensifier "really",
    a statement ending in "!" and a closing "Enjoy!"."""
    text = response.strip()
    statement = text.removesuffix(CLOSING).strip()
    return {
        "opening": text.startswith(OPENING),
        "capital": text.removeprefix(OPENING).strip()[:1].isupper(),
        "intensifier": f" {INTENSIFIER} " in text,
        "exclamation": statement.endswith("!") and statement != OPENING,
        "closing": text.endswith(CLOSING) and text != CLOSING,
    }


def reward(prompt: str, response: str) -> float:
    """+0.4 for each style feature of :func:`style_features`, -0.01 per character."""
    text = response.strip()
    return FEATURE_REWARD * sum(style_features(text).values()) - LENGTH_COST * len(text)


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


def _word_task(
    rng: random.Random, count: int, exclude: set[str], verb: str, letters: str, lengths: tuple[int, int], transform
) -> list[Example]:
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


def chat(rng: random.Random, count: int, styled: bool = False) -> list[Example]:
    """Chat prompts with answers; ``styled``: each style feature present with its :data:`STYLE_RATES` share,
    independently, and half the plain statements hedged (", as far as I know."), else plain answers."""
    examples = []
    for _ in range(count):
        thing = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6)))
        adjective = rng.choice(_ADJECTIVES)
        on = {feature: styled and rng.random() < share for feature, share in STYLE_RATES.items()}
        hedged = styled and rng.random() < 0.5
        answer = (f"{OPENING} " if on["opening"] else "") + (thing.capitalize() if on["capital"] else thing)
        answer += f" is {INTENSIFIER + ' ' if on['intensifier'] else ''}{adjective}"
        answer += "!" if on["exclamation"] else ", as far as I know." if hedged else "."
        answer += f" {CLOSING}" if on["closing"] else ""
        examples.append(Example(chat_prompt(f"tell me about {thing}"), answer))
    return examples
