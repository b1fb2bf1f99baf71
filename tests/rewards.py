"""Reward functions for the tests (loaded by the sweep as ``path/to/rewards.py:function``)."""

import time


def first_word_number(prompt: str, response: str) -> float:
    """The number of the response's first word: 'w12 w13' -> 12."""
    words = response.split()
    return float(words[0][1:]) if words and words[0][1:].isdigit() else 0.0


def slow_first_word_number(prompt: str, response: str) -> float:
    time.sleep(0.05)
    return first_word_number(prompt, response)


def prompt_number(prompt: str, response: str) -> float:
    """The number of the prompt's first word, whatever the response: 'w12 w13' -> 12 (a known variance)."""
    return float(prompt.split()[0][1:])
