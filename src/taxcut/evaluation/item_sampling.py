"""Per-item random streams for sampled generation (common random numbers across candidates).

Token ``t`` of sample ``j`` of item ``i`` is drawn by Gumbel-max: the argmax of the processed logits (temperature,
then top-p) plus Gumbel noise ``-log(-log(u))``, where ``u`` comes from a counter-based hash of
``(seed, i, j, t, token id)``. The argmax of logits plus independent Gumbel noise is an exact sample from their
softmax, and the noise depends on nothing else, so a response depends on the model and the item alone: not on batch
size, padding, batch composition, executor or device (the hash is int64 arithmetic, identical on every device; only
float rounding of the logits differs). Every candidate of a sweep sees the same noise for the same item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

SAMPLING_SCHEME = 1  # raise it when the noise or its keys change: it enters the evaluation's fingerprint

_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's finalizer multipliers


def _signed(value: int) -> int:
    """``value`` modulo 2**64 as a signed int64 (torch has no uint64 arithmetic)."""
    return ((value % 2**64) ^ 2**63) - 2**63


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 ``z``: torch's ``>>`` is arithmetic, so the copied sign bits are masked off."""
    return (z >> bits).bitwise_and_((1 << (64 - bits)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 (the products wrap modulo 2**64, as unsigned ones would); in place after
    the first step, which makes a new tensor (the noise is rows x vocabulary at every step)."""
    z = (z ^ _shift_right(z, 30)).mul_(_signed(_MIX1))
    z.bitwise_xor_(_shift_right(z, 27)).mul_(_signed(_MIX2))
    return z.bitwise_xor_(_shift_right(z, 31))


def _absorb(state: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    return _mix(state ^ _mix(part + _signed(_GOLDEN)))


def row_states(seed: int, keys: Sequence[tuple[int, int]], device) -> torch.Tensor:
    """The hash state of each (item, sample) key under ``seed``, before the step and token id are absorbed."""
    items = torch.tensor([_signed(item) for item, _ in keys], dtype=torch.int64, device=device)
    samples = torch.tensor([_signed(sample) for _, sample in keys], dtype=torch.int64, device=device)
    state = _mix(torch.full_like(items, _signed(seed)) + _signed(_GOLDEN))
    return _absorb(_absorb(state, items), samples)


def uniforms(states: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """``(rows, vocab)`` uniforms strictly inside (0, 1), one per row state and token id at generation ``step``."""
    state = _absorb(states, torch.full_like(states, _signed(step)))
    tokens = torch.arange(vocab, dtype=torch.int64, device=states.device)
    bits = _shift_right(_absorb(state[:, None], tokens[None, :]), 41)  # the top 23 bits: exact in float32 too
    dtype = torch.float32 if states.device.type == "mps" else torch.float64  # MPS has no float64
    return bits.to(dtype).mul_(2).add_(1).div_(2**24)  # odd multiples of 2**-24: never 0 or 1


class ItemGumbelNoise(LogitsProcessor):
    """Adds each row's Gumbel noise for its (item, sample) key; its step is the number of tokens generated so far,
    counted from the batch's padded prompt length (the same for every row of a left-padded batch)."""

    def __init__(self, seed: int, keys: Sequence[tuple[int, int]], prompt_length: int, device):
        self.states = row_states(seed, keys, device)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        u = uniforms(self.states, input_ids.shape[1] - self.prompt_length, scores.shape[-1])
        return scores + u.log_().neg_().log_().neg_().to(scores.dtype)  # Gumbel: -log(-log(u))


def item_sampling_processors(
    temperature: float, top_p: float, seed: int, keys: Sequence[tuple[int, int]], prompt_length: int, device
) -> LogitsProcessorList:
    """Temperature and top-p (as ``generate`` applies them when sampling), then the items' Gumbel noise: greedy
    decoding over these scores samples each row from its own stream."""
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p, min_tokens_to_keep=1))
    processors.append(ItemGumbelNoise(seed, keys, prompt_length, device))
    return processors
