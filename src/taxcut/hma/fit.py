"""``taxcut fit``: learn the HMA block ratios, reading top to bottom like one training script.

Lin et al., "Mitigating the Alignment Tax of RLHF" (EMNLP 2024, arXiv 2309.06256), Sec. 6 and App. B.1. Only the K
block logits ``s_k`` train; every weight that follows the blocks is ``(1 - a_k) * theta_sft + a_k * theta_aligned``
for its block, with ``a_k`` from :func:`taxcut.hma.ratios.block_ratios` (mean exactly ``a``, every ``a_k`` within
[0, 1]: an eps too small for that is raised, printed and recorded). The objective is the log-likelihood of
high-reward samples of the aligned policy -- a likelihood proxy for reward, with no tax term -- on the response
tokens (taxcut) or on prompt and response (the paper), optionally plus a weighted L1 pull ``sum_k w_k |a_k - a|``,
and -- the tax-aware fit, not the paper's -- ``W * KL(SFT || merged)`` on a retain set (:mod:`taxcut.hma.retain`),
with one ratio per block or per decoder layer (``granularity``), their mean held at ``a`` or each free in [0, 1]
(``mean free``: ``a_k = sigmoid(s_k)``). W = 0 is exactly the fit without the term.
Adam, linear warm-up then cosine decay, one epoch by default. ``FitSettings(preset="paper")`` takes the paper's
settings; one difference remains: the paper's code lets lm_head's ratio follow the normalisation of the block
logits, taxcut keeps it at exactly ``a``.

Which tensor follows which block comes from the merge plan of the ratios file this writes, so the fitted
in-memory model is exactly what ``taxcut merge`` of that file produces. Memory: the SFT model's own parameters
(theta_sft) and one copy of theta_aligned; each weight is computed on access inside its layer (a
parametrisation), and each decoder layer is recomputed in the backward pass, so no layer's interpolated weights
outlive its use.
Runs on one device, or under ``accelerate launch`` with N processes: every process draws the same shuffled order,
a step's global batch is the next ``N * batch_size`` examples and each process takes every N-th of them; the K
logits' gradients are combined weighted by each process's loss tokens, so N processes at ``batch_size`` learn what
one process learns at ``N * batch_size`` (up to float rounding; the last batch of an epoch is topped up with
repeats when it does not split evenly).

Convention: ``a`` weighs the ALIGNED model. The paper's code weighs the SFT model (its ``alpha=0.2`` is ``a=0.8``).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taxcut.errors import TaxcutError
from taxcut.evaluation.data import read_jsonl
from taxcut.evaluation.generation import model_context
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer, pick_device
from taxcut.hma.ratios import (
    block_ratios,
    bounded_eps,
    free_initial_logits,
    free_ratios,
    initial_logits,
    paper_reg_weights,
)
from taxcut.hma.retain import cache_bytes, encode_retain_set, read_retain_set, retain_batches, retention_kl
from taxcut.io.layers import TIED_HEAD_NAMES, detect_layers
from taxcut.io.parameters import checkpoint_names
from taxcut.merging.plan import build_plan
from taxcut.methods.block_values import split_blocks
from taxcut.methods.interpolation import all_finite, interpolate
from taxcut.spec.fit import FitSettings
from taxcut.spec.merge import MergeSpec
from taxcut.training import (
    Coefficients,
    Interpolated,
    collate,
    current_weight,
    parametrize_weights,
    recompute_layers,
    warmup_cosine,
)


@dataclass
class FitResult:
    alphas: list[float]
    block_bounds: list[tuple[int, int]]
    rules: list[dict]
    settings: FitSettings  # as fitted: eps raised where the bound needed it
    losses: list[float] = field(default_factory=list)
    ratio_history: list[list[float]] = field(default_factory=list)  # the ratios after each step
    adjustments: list[str] = field(default_factory=list)  # what the fit decided beyond its settings
    weights: dict[str, torch.Tensor] | None = None
    retain_kl: list[float] = field(default_factory=list)  # KL(SFT || merged) on each step's retain batch (W > 0)
    is_main_process: bool = True  # under `accelerate launch`, only the main process writes the ratios file


def fit_ratios(
    sft: Path,
    aligned: Path,
    data: Path,
    settings: FitSettings,
    *,
    log: Callable[[str], object] = print,
    keep_weights: bool = False,
    allow_tokenizer_mismatch: bool = False,
    retain: Path | None = None,
) -> FitResult:
    """Learn the HMA block ratios of a pair at one eps and one retention weight W.

    The recipe, in named steps: check the inputs, set up the two models, the blocks and the data, train the K
    block logits, return the result (the caller writes the ratios file, :mod:`taxcut.hma.ratios_file`).

    Args:
        sft: the SFT model's folder (``a = 0``); its parameters are theta_sft.
        aligned: the aligned model's folder (``a = 1``); its tokenizer encodes the fit set.
        data: the fit set, JSONL records with ``prompt`` and ``response`` (:mod:`taxcut.hma.sample` draws one).
        settings: one eps and one W (a list of either is refused: fit each of its values).
        log: receives the progress lines and every adjustment the fit makes beyond its settings.
        keep_weights: also return the fitted weights by stored name (for checks).
        allow_tokenizer_mismatch: fit models whose tokenizer files give the same text other ids.
        retain: the retain set (JSONL text or prompts, :mod:`taxcut.hma.retain`) of the W * KL term; needed when
            ``settings.retain_weight`` > 0.

    Returns:
        The :class:`FitResult`: the ratios, the blocks and rules the ratios file records, the settings as fitted,
        and the loss and ratios after every step.

    Raises:
        TaxcutError: bad settings, data or models, named in one line, before any model is loaded where it can be.
    """
    recipe = _FitRecipe(settings, log)
    records, retain_records = recipe.check_inputs(sft, aligned, data, retain, allow_tokenizer_mismatch)
    recipe.setup_models(sft, aligned)
    recipe.setup_blocks(sft, aligned, allow_tokenizer_mismatch)
    recipe.setup_weights(retain_records, retain)
    recipe.setup_data(records, data)
    recipe.setup_optimizer()
    recipe.train()
    return recipe.result(keep_weights)


class _FitRecipe:
    """One fit's state, built by named steps in the order :func:`fit_ratios` calls them (torchtune's recipe
    shape); the order is part of the result: the seeded draws happen in it."""

    def __init__(self, settings: FitSettings, log: Callable[[str], object]):
        self.settings = settings
        self.log = log
        self.adjustments: list[str] = []  # what the fit decided beyond its settings, in the order decided

    def note(self, adjustment: str) -> None:
        self.adjustments.append(adjustment)
        self.log(f"fit: {adjustment}")

    def check_inputs(
        self, sft: Path, aligned: Path, data: Path, retain: Path | None, allow_tokenizer_mismatch: bool
    ) -> tuple[list[dict], list[dict] | None]:
        """Settings, data and the pair's headers checked before any model is loaded; the records read."""
        settings = self.settings
        if isinstance(settings.eps, list):
            raise TaxcutError(
                f"eps {settings.eps}: a fit takes one eps; fit each of settings.eps_values() "
                "(as taxcut fit --eps E1,E2,... does)"
            )
        if isinstance(settings.retain_weight, list):
            raise TaxcutError(
                f"retain_weight {settings.retain_weight}: a fit takes one W; fit each of "
                "settings.retain_weights() (as taxcut fit --retain-weight W1,W2,... does)"
            )
        if settings.retain_weight > 0 and retain is None:
            raise TaxcutError(
                f"--retain-weight {settings.retain_weight:g} needs a retain set: give --retain FILE "
                "(JSONL text or prompts)"
            )
        records = read_jsonl(data, needs=[("prompt",), ("response",)], what="fit set")  # bad data fails first
        retain_records = read_retain_set(retain) if retain is not None else None
        if settings.granularity == "block":  # K known before loading: an eps too small is said at once
            self.settings = _bounded(settings, settings.blocks, self.note)
        build_plan(
            MergeSpec(sft=sft, aligned=aligned, alpha=settings.alpha, allow_tokenizer_mismatch=allow_tokenizer_mismatch)
        ).close()  # tokenizers too
        return records, retain_records

    def setup_models(self, sft: Path, aligned: Path) -> None:
        """The two models: the SFT model's parameters are theta_sft; theta_aligned is kept beside them."""
        torch.manual_seed(self.settings.seed)
        from accelerate import Accelerator  # loaded only when a fit runs

        self.accelerator = Accelerator(cpu=pick_device(self.settings.device).type == "cpu")
        self.device = self.accelerator.device
        self.model = load_causal_lm(sft, device=self.device)
        self.model.requires_grad_(False)
        self.tokenizer = load_tokenizer(aligned)
        self.aligned_params = dict(load_causal_lm(aligned, device=self.device).named_parameters())
        self.params = dict(self.model.named_parameters())
        self.stored = checkpoint_names(self.model)
        for label, folder, tensors in (("SFT", sft, self.params), ("aligned", aligned, self.aligned_params)):
            _refuse_non_finite(tensors, self.stored, f"{label} model ({folder})")

    def setup_blocks(self, sft: Path, aligned: Path, allow_tokenizer_mismatch: bool) -> None:
        """Which ratio each parameter follows: the plan of the ratios file the fit's result writes."""
        settings, stored = self.settings, self.stored
        self.num_layers = detect_layers(stored.values()).num_layers
        if settings.granularity == "block" and self.num_layers < settings.blocks:
            raise TaxcutError(f"--blocks {settings.blocks}: the model has only {self.num_layers} decoder layers")
        self.blocks = settings.blocks if settings.granularity == "block" else self.num_layers  # one per layer
        self.settings = settings = _bounded(settings, self.blocks, self.note)
        self.bounds = split_blocks(self.num_layers, self.blocks)
        self.rules = (
            paper_scope_rules(self.params, stored, settings.alpha)
            if settings.scope == "paper"
            else head_rules(stored, settings.alpha)
        )
        spec = MergeSpec(
            sft=sft,
            aligned=aligned,
            alphas=[settings.alpha] * self.blocks,
            block_bounds=self.bounds,
            rules=self.rules,
            allow_tokenizer_mismatch=allow_tokenizer_mismatch,
        )
        with build_plan(spec) as plan:
            self.decision = {t.name: t.decision for t in plan.tensors}
        fused = [name for name in self.params if stored[name] not in self.decision]
        if fused:
            raise TaxcutError(
                f"parameter '{fused[0]}' is fused from several stored tensors (e.g. mixture-of-"
                "experts weights); taxcut fit does not support this architecture yet"
            )
        self.trainable = {
            name: self.decision[stored[name]].block
            for name in self.params
            if self.decision[stored[name]].block is not None
        }

    def setup_weights(self, retain_records: list[dict] | None, retain: Path | None) -> None:
        """The retain batches with the SFT log-probabilities (before any weight changes), then the weights: those
        whose ratio does not train set once, in place, as merge does; the others parametrised by the blocks."""
        self.context = model_context(self.model, self.tokenizer)
        self.retained = []
        if self.settings.retain_weight > 0:
            self.retained = _retain_batches(
                self.model,
                self.tokenizer,
                retain_records,
                retain,
                self.context,
                self.settings,
                self.note,
                self.log,
                self.device,
            )
        with torch.no_grad():
            for name, parameter in self.params.items():
                if name not in self.trainable:
                    _set_fixed(
                        parameter, self.aligned_params[name], self.decision[self.stored[name]].alpha, self.stored[name]
                    )
        self.holder = Coefficients()  # every parametrised weight reads its block's ratio from here
        parametrize_weights(
            self.model,
            {
                name: Interpolated(self.aligned_params[name].detach(), self.holder, block)
                for name, block in self.trainable.items()
            },
        )
        recompute_layers(self.model)

    def setup_data(self, records: list[dict], data: Path) -> None:
        """The fit set: prompt + response, the loss on the response tokens or on all of them; a random draw."""
        examples, cut = encode_fit_set(self.tokenizer, records, data, self.context, self.settings.loss)
        if cut:  # the paper's fit cuts at its max length too; the ratios file says how many were cut
            self.note(
                f"{len(cut)} of {len(examples)} fit examples are longer than the model's context of "
                f"{self.context} tokens: their responses were cut to fit (records {_first(cut)} of {data})"
            )
        self.rng = random.Random(self.settings.seed)
        if self.settings.draw < 1:
            examples = self.rng.sample(examples, max(1, round(self.settings.draw * len(examples))))
        self.examples = examples

    def setup_optimizer(self) -> None:
        """The only trainable tensor, K block logits starting at MA; the L1 pull's weights; Adam and its
        schedule over every process's share of a step."""
        settings = self.settings
        start = (
            free_initial_logits(settings.alpha, self.blocks)
            if settings.mean == "free"
            else initial_logits(settings.alpha, self.blocks, settings.normalize)
        )
        self.logits = start.to(self.device).requires_grad_()
        self.reg = torch.tensor(self.reg_weights(), device=self.device)
        self.optimizer = torch.optim.Adam([self.logits], lr=settings.lr)
        self.processes, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.global_batch = settings.batch_size * self.processes  # one step's examples over all processes
        steps_per_epoch = math.ceil(len(self.examples) / self.global_batch)
        self.total_steps = max(1, steps_per_epoch * settings.epochs)
        self.scheduler = warmup_cosine(self.optimizer, self.total_steps, settings.warmup)

    def reg_weights(self) -> list[float]:
        """The L1 pull's weight of each block: as given, the same for every layer, or the paper's."""
        reg_weights = self.settings.reg
        if reg_weights == "paper":  # per Linear weight, by its layer's distance from the middle
            layer_of = detect_layers(self.stored.values()).layer_of
            linears = [
                (layer_of[self.stored[name]], block)
                for name, block in self.trainable.items()
                if self.params[name].ndim == 2
            ]
            reg_weights = paper_reg_weights(linears, self.num_layers, self.blocks)
            self.adjustments.append("reg paper: w_k = " + ", ".join(f"{w:.4g}" for w in reg_weights))
        elif len(reg_weights) != self.blocks:  # granularity layer: one weight for every layer, or none per block
            if len(set(reg_weights)) > 1:
                raise TaxcutError(
                    f"--reg {','.join(f'{w:g}' for w in reg_weights)}: one weight per block, but "
                    f"--granularity layer fits {self.blocks} ratios; give one weight for all, or paper"
                )
            reg_weights = reg_weights[:1] * self.blocks
        return reg_weights

    def ratios(self, logits: torch.Tensor) -> torch.Tensor:
        """(K,) ratios of the logits: mean ``a``, or each free in [0, 1]."""
        if self.settings.mean == "free":
            return free_ratios(logits)
        return block_ratios(logits, self.settings.alpha, self.settings.eps, self.settings.normalize)

    def train(self) -> None:
        """Every epoch in a shuffled order, the same on every process (same seed, same draws)."""
        settings = self.settings
        self.out = FitResult(
            [],
            self.bounds,
            self.rules,
            settings,
            adjustments=self.adjustments,
            is_main_process=self.accelerator.is_main_process,
        )
        weight = settings.retain_weight
        self.log(
            f"fit: {len(self.examples)} examples, {self.blocks} blocks {self.bounds}, a = {settings.alpha}, "
            f"normalize {settings.normalize}, eps = {settings.eps:g}, scope {settings.scope}, loss on "
            f"{settings.loss}, {self.total_steps} steps"
            + (", mean free" if settings.mean == "free" else "")
            + (f", retain W = {weight:g} on {len(self.retained)} batches" if weight > 0 else "")
        )
        self.model.eval()  # no dropout: the weights are the only thing that changes
        for epoch in range(settings.epochs):
            order = list(range(len(self.examples)))
            self.rng.shuffle(order)
            for start in range(0, len(order), self.global_batch):
                step = order[start : start + self.global_batch]
                step += order[: -len(step) % self.processes]  # every process takes the same number of examples
                self.train_step([self.examples[i] for i in step[self.rank :: self.processes]])
            self.log(
                f"fit: epoch {epoch + 1}: loss {self.out.losses[0]:.4f} -> {self.out.losses[-1]:.4f}, "
                "ratios " + ", ".join(f"{r:.4f}" for r in self.out.ratio_history[-1])
            )

    def train_step(self, examples: list[tuple[list[int], int]]) -> None:
        """One step on this process's share of the step's examples: the loss and L1 pull, the retain term, the
        gradient combined over processes, the update."""
        batch = collate(examples, self.tokenizer.pad_token_id or 0)
        ratios = self.ratios(self.logits)  # (K,)
        self.holder.values = ratios
        output = self.model(**{k: v.to(self.device) for k, v in batch.items()}, use_cache=False)
        loss = output.loss + (self.reg * (ratios - self.settings.alpha).abs()).sum()
        loss.backward()
        if self.retained:  # its own backward (one graph at a time); the same batch on every process
            kept = self.retained[len(self.out.losses) % len(self.retained)]
            self.holder.values = self.ratios(self.logits)  # the same ratios, a graph of their own
            merged = self.model(**{k: v.to(self.device) for k, v in kept.inputs.items()}, use_cache=False).logits
            kl = retention_kl(merged, kept)
            (self.settings.retain_weight * kl).backward()
            self.out.retain_kl.append(kl.item())
        if self.processes > 1:  # the gradient of the mean over all the step's loss tokens, as one process has it
            tokens = (batch["labels"][:, 1:] != -100).sum().to(device=self.device, dtype=torch.float32)
            self.logits.grad = self.accelerator.reduce(
                self.logits.grad * tokens, reduction="sum"
            ) / self.accelerator.reduce(tokens, reduction="sum")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.out.losses.append(output.loss.item())
        self.out.ratio_history.append(self.ratios(self.logits.detach()).tolist())

    def result(self, keep_weights: bool) -> FitResult:
        """The final ratios (and, when asked, the fitted weights by stored name)."""
        final = self.ratios(self.logits.detach())
        self.out.alphas = final.float().cpu().tolist()
        if keep_weights:
            self.holder.values = final
            with torch.no_grad():
                self.out.weights = {
                    self.stored[name]: current_weight(self.model, name).detach().cpu().clone() for name in self.params
                }
        return self.out


def _first(numbers: list[int]) -> str:
    """Up to ten record numbers, for a message."""
    return ", ".join(str(n) for n in numbers[:10]) + (", ..." if len(numbers) > 10 else "")


def _set_fixed(parameter: torch.Tensor, aligned: torch.Tensor, alpha: float, name: str) -> None:
    """A weight whose ratio does not train, set in place to its average at ``alpha`` (refused if not finite)."""
    if not interpolate(parameter.detach().clone(), aligned.detach(), alpha, parameter.data):
        raise TaxcutError(
            f"tensor '{name}': its average at a = {alpha} is not finite in "
            f"{str(parameter.dtype).removeprefix('torch.')}; load the models in float32"
        )


def _bounded(settings: FitSettings, blocks: int, note: Callable[[str], None]) -> FitSettings:
    """``settings`` with eps raised where it would let one of ``blocks`` ratios leave [0, 1] (said and recorded);
    a free mean has no eps to bound."""
    eps = bounded_eps(settings.alpha, blocks, settings.eps, settings.normalize)
    if settings.mean == "free" or eps == settings.eps:
        return settings
    note(
        f"eps raised from {settings.eps:g} to {eps:.6g}, the smallest that keeps every block ratio "
        f"within [0, 1] (normalize {settings.normalize}, a = {settings.alpha:g}, K = {blocks})"
    )
    return settings.model_copy(update={"eps": eps})


def _retain_batches(
    model, tokenizer, records, path: Path, context, settings: FitSettings, note: Callable[[str], None], log, device
):
    """The retain set encoded, cut to the context (said and recorded) and batched with the SFT model's
    log-probabilities (``model`` is still the SFT model)."""
    encoded, cut = encode_retain_set(tokenizer, records, path, context)
    if cut:
        note(
            f"{len(cut)} of {len(encoded)} retain records are longer than the model's context of {context} "
            f"tokens: they were cut to fit (records {_first(cut)} of {path})"
        )
    model.eval()
    batches = retain_batches(model, encoded, settings.batch_size, tokenizer.pad_token_id or 0, device)
    log(
        f"fit: retain set {path}: {len(encoded)} records, SFT log-probabilities cached "
        f"({cache_bytes(batches) / 2**20:.1f} MiB)"
    )
    return batches


def _refuse_non_finite(tensors: dict[str, torch.Tensor], stored: dict[str, str], model: str) -> None:
    """A NaN or Inf weight would flow into every step of the fit: refuse it, naming the tensor and the model."""
    for name, tensor in tensors.items():
        if not all_finite(tensor.detach()):
            raise TaxcutError(
                f"tensor '{stored[name]}' of the {model} contains NaN or Inf values; fix or re-export that checkpoint"
            )


def head_rules(stored: dict[str, str], alpha: float) -> list[dict]:
    """Tensors after the layers (final norm, untied head) stay at exactly ``a`` while the blocks move (the mean of
    the learned ratios is ``a`` only up to float rounding), written as rules so the ratios file says so."""
    layout = detect_layers(stored.values())
    after = sorted(key for key in stored.values() if key not in layout.layer_of and not layout.is_embedding(key))
    return [{"regex": re.escape(key), "alpha": alpha} for key in after]


def paper_scope_rules(params: dict, stored: dict[str, str], alpha: float) -> list[dict]:
    """The paper's scope as rules: only Linear weights inside the layers follow the blocks; embeddings, norms and
    biases stay at the SFT model (a = 0); the output head is averaged at ``a``."""
    layout = detect_layers(stored.values())
    keep_sft, at_alpha = set(), set()
    for name, parameter in params.items():
        key = stored[name]
        if key in layout.layer_of:
            if parameter.ndim != 2:  # norms, biases
                keep_sft.add(re.escape(key).replace(rf"\.{layout.layer_of[key]}\.", r"\.\d+\.", 1))
        elif key in TIED_HEAD_NAMES and not layout.is_embedding(key):
            at_alpha.add(re.escape(key))
        else:
            keep_sft.add(re.escape(key))
    rules = [{"regex": pattern, "alpha": 0.0} for pattern in sorted(keep_sft)]
    return rules + [{"regex": pattern, "alpha": alpha} for pattern in sorted(at_alpha)]


def encode_fit_set(
    tokenizer, records: list[dict], path: Path, context: int | None, loss: str
) -> tuple[list[tuple[list[int], int]], list[int]]:
    """Token ids of prompt + response + end of sequence, and where the loss starts: at the response, or at the
    first token (prompt + response, as the paper trains on its fit set stored as text); and the numbers of the
    records cut to fit.

    An example longer than the model's ``context`` keeps its first ``context`` tokens (its response is cut, its end
    of sequence dropped), as the paper's fit cuts at a maximum length: a likelihood proxy loses little by a shorter
    response, and the caller notes how many were cut. One whose prompt alone fills the context has nothing left to
    learn from and is refused. ``records``: the fit set as read from ``path`` (named in errors).
    """
    encoded, cut = [], []
    for number, record in enumerate(records, start=1):
        # as generation encoded it: chat-rendered prompts carry their special tokens, plain ones get them added
        special = not record.get("chat", False)
        prompt = tokenizer(str(record["prompt"]), add_special_tokens=special)["input_ids"]
        response = tokenizer(str(record["response"]), add_special_tokens=False)["input_ids"]
        ids = prompt + response + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        if len(ids) <= len(prompt):
            raise TaxcutError(f"{path}, record {number}: the response is empty")
        if context is not None and len(ids) > context:
            if len(prompt) >= context:
                raise TaxcutError(
                    f"{path}, record {number}: prompt and response are {len(ids)} tokens, longer than "
                    f"the model's context of {context}, and the prompt alone ({len(prompt)} tokens) "
                    "leaves no room for the response; shorten or drop it"
                )
            ids = ids[:context]
            cut.append(number)
        encoded.append((ids, len(prompt) if loss == "response" else 0))
    return encoded, cut
