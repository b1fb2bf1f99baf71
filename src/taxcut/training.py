"""Small pieces shared by the two training loops (the lab's SFT/RAFT and the HMA fit)."""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import torch
from torch.nn.utils import parametrize
from torch.utils.checkpoint import checkpoint

from taxcut.io.layers import detect_layers


def collate(batch: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` and ``labels`` that cover ``ids[start:]`` only."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, start) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, start : len(ids)] = torch.tensor(ids[start:])
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` (a fraction) of ``total_steps``, then cosine decay to zero."""
    warmup_steps = max(1, int(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Coefficients:
    """Where parametrised weights find this step's learned coefficients (set before each forward)."""

    values: torch.Tensor | None = None


class Interpolated(torch.nn.Module):
    """HMA's weight, computed on access: ``(1 - a_k) * theta_sft + a_k * theta_aligned`` (theta_sft is the module's
    original parameter; ``a_k = holder.values[block]``), with the arithmetic of
    :func:`taxcut.methods.interpolation.interpolate` (0 + (1 - a) * sft, then a * aligned added fused), so the
    fitted model is bit for bit the merge of its ratios file."""

    def __init__(self, aligned: torch.Tensor, holder: Coefficients, block: int):
        super().__init__()
        self.aligned, self.holder, self.block = aligned, holder, block

    def forward(self, sft: torch.Tensor) -> torch.Tensor:
        ratio = self.holder.values[self.block]
        keep = torch.addcmul(sft.new_zeros(()), sft, 1 - ratio)
        return torch.addcmul(keep, self.aligned, ratio).to(sft.dtype)


class TaskVectorSum(torch.nn.Module):
    """AdaMerging's weight, computed on access: ``theta_base + sum_i c_(i,g) * (theta_i - theta_base)`` (theta_base is
    the module's original parameter; ``c = holder.values``, shape (models, groups))."""

    def __init__(self, others: list[torch.Tensor], holder: Coefficients, group: int):
        super().__init__()
        self.others, self.holder, self.group = others, holder, group

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        return task_vector_sum(base, self.others, [c[self.group] for c in self.holder.values])


def task_vector_sum(base: torch.Tensor, others: Sequence[torch.Tensor], coefficients) -> torch.Tensor:
    """``base + sum_i c_i * (other_i - base)``, in this order (the fit and the merge share it, so they agree)."""
    merged = base.float()
    for other, coefficient in zip(others, coefficients):
        merged = merged + coefficient * (other.float() - base.float())
    return merged.to(base.dtype)


def parametrize_weights(model, parametrizations: dict[str, torch.nn.Module]) -> None:
    """Give each named parameter (and every module attribute sharing it, for tied weights) a parametrisation."""
    by_tensor = {id(p): name for name, p in model.named_parameters() if name in parametrizations}
    targets = []
    for _, module in model.named_modules():
        for attribute, parameter in list(module.named_parameters(recurse=False)):
            if id(parameter) in by_tensor:
                targets.append((module, attribute, by_tensor[id(parameter)]))
    for module, attribute, name in targets:
        parametrize.register_parametrization(module, attribute, parametrizations[name], unsafe=True)


def recompute_layers(model) -> None:
    """Recompute each decoder layer in the backward pass instead of keeping its weights and activations."""
    layout = detect_layers(name for name, _ in model.named_parameters())
    layers = {
        name[: name.index(f".{index}.") + len(f".{index}")] if f".{index}." in name else name.split(".")[0]
        for name, index in layout.layer_of.items()
    }
    for name in layers:
        module = model.get_submodule(name)
        module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)


def current_weight(model, name: str) -> torch.Tensor:
    """A parameter's current value (through its parametrisation, if it has one)."""
    *path, attribute = name.split(".")
    return getattr(model.get_submodule(".".join(path)), attribute)


class StageProgress:
    """The progress of a training stage on stderr, so that a run of minutes is never silent: a bar with ETA on a
    terminal, else (a log file, CI, a captured stream) one line every ~10% of the steps, e.g.
    ``lab: sft step 300/1000 (30%), loss 0.412, 54 s, about 126 s left``. ``enabled=False`` shows nothing."""

    def __init__(
        self, label: str, total: int, unit: str = "step", *, enabled: bool = True, stream: TextIO | None = None
    ):
        self.label, self.total, self.unit = label, max(1, total), unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled, self.done, self.started = enabled, 0, time.perf_counter()
        self.every = math.ceil(self.total / 10)
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm  # only for a terminal

            self.bar = tqdm(total=self.total, desc=label, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, **values: float) -> None:
        """One more step done; ``values`` (e.g. ``loss=0.41``) are shown beside it."""
        self.done += 1
        shown = ", ".join(f"{name} {value:.3f}" for name, value in values.items())
        if self.bar is not None:
            self.bar.set_postfix_str(shown, refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.done % self.every == 0 or self.done == self.total):
            elapsed = time.perf_counter() - self.started
            left = elapsed / self.done * (self.total - self.done)
            print(
                f"{self.label} {self.unit} {self.done}/{self.total} ({100 * self.done // self.total}%)"
                f"{', ' + shown if shown else ''}, {elapsed:.0f} s, about {left:.0f} s left",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
