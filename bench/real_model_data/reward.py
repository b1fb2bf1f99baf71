"""The programmatic reward of the real-model benchmark: an enthusiastic style.

``enthusiasm(prompt, response)`` counts exclamation marks and positive words (each capped at 3, half a point
apiece), so it lies in [0, 3] before penalties; an empty response scores -1 and a rambling one (over 60 words)
loses a point, so that the style is not bought with length. It ranks the samples the preference pairs are built
from and it is the sweep's reward function (``function: .../reward.py:enthusiasm``).
"""

from __future__ import annotations

import re

POSITIVE = frozenset(
    [
        "amazing",
        "awesome",
        "beautiful",
        "best",
        "brilliant",
        "cheerful",
        "delight",
        "delighted",
        "delightful",
        "enjoy",
        "enjoyable",
        "excellent",
        "excited",
        "exciting",
        "fabulous",
        "fantastic",
        "fun",
        "glad",
        "good",
        "great",
        "happy",
        "incredible",
        "inspiring",
        "joy",
        "joyful",
        "love",
        "lovely",
        "marvelous",
        "perfect",
        "remarkable",
        "spectacular",
        "splendid",
        "superb",
        "terrific",
        "thrilled",
        "thrilling",
        "wonderful",
        "wow",
        "yay",
    ]
)


def enthusiasm(prompt: str, response: str) -> float:
    words = re.findall(r"[a-z']+", response.lower())
    if not words:
        return -1.0
    exclamations = min(response.count("!"), 3)
    positive = min(sum(word in POSITIVE for word in words), 3)
    return 0.5 * exclamations + 0.5 * positive - (1.0 if len(words) > 60 else 0.0)
