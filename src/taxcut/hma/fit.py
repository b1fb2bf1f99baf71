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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taxcut.errors import TaxcutError
from taxcut.evaluation.data import read_jsonl
from taxcut.evaluation.generation import model_context
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer, pick_device
from taxcut.hma.ratios import (
    block_ratios, bounded_eps, free_initial_logits, free_ratios, initial_logits, paper_reg_weights,
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
    Coefficients, Interpolated, collate, current_weight, parametrize_weights, recompute_layers, warmup_cosine,
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


def fit_ratios(sft: Path, aligned: Path, data: Path, settings: FitSettings, *, log=print,
               keep_weights: bool = False, allow_tokenizer_mismatch: bool = False,
               retain: Path | None = None) -> FitResult:
    """Learn the block ratios at one eps and one retention weight W (on the retain set ``retain``, see
    :mod:`taxcut.hma.retain`); ``keep_weights`` also returns the fitted weights by stored name (for checks);
    ``allow_tokenizer_mismatch`` fits models whose tokenizer files give the same text other ids."""
    if isinstance(settings.eps, list):
        raise TaxcutError(f"eps {settings.eps}: a fit takes one eps; fit each of settings.eps_values() "
                          "(as taxcut fit --eps E1,E2,... does)")
    if isinstance(settings.retain_weight, list):
        raise TaxcutError(f"retain_weight {settings.retain_weight}: a fit takes one W; fit each of "
                          "settings.retain_weights() (as taxcut fit --retain-weight W1,W2,... does)")
    weight = settings.retain_weight
    if weight > 0 and retain is None:
        raise TaxcutError(f"--retain-weight {weight:g} needs a retain set: give --retain FILE (JSONL text or prompts)")
    adjustments = []
    records = read_jsonl(data, needs=[("prompt",), ("response",)], what="fit set")  # bad data fails before loading
    retain_records = read_retain_set(retain) if retain is not None else None
    if settings.granularity == "block":  # K known before loading: an eps too small is said at once
        settings = _bounded(settings, settings.blocks, adjustments, log)
    allow = {"allow_tokenizer_mismatch": allow_tokenizer_mismatch}
    build_plan(MergeSpec(sft=sft, aligned=aligned, alpha=settings.alpha, **allow)).close()
    torch.manual_seed(settings.seed)  # the pair checked from headers (tokenizers too) before any model is loaded
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=pick_device(settings.device).type == "cpu")
    device = accelerator.device

    # 1. the two models: the SFT model's parameters are theta_sft; theta_aligned is kept beside them
    model = load_causal_lm(sft, device=device)
    model.requires_grad_(False)
    tokenizer = load_tokenizer(aligned)
    aligned_params = dict(load_causal_lm(aligned, device=device).named_parameters())
    params = dict(model.named_parameters())
    stored = checkpoint_names(model)
    for label, folder, tensors in (("SFT", sft, params), ("aligned", aligned, aligned_params)):
        _refuse_non_finite(tensors, stored, f"{label} model ({folder})")

    # 2. which ratio each parameter follows: the plan of the ratios file we are about to write
    num_layers = detect_layers(stored.values()).num_layers
    if settings.granularity == "block" and num_layers < settings.blocks:
        raise TaxcutError(f"--blocks {settings.blocks}: the model has only {num_layers} decoder layers")
    blocks = settings.blocks if settings.granularity == "block" else num_layers  # layer: one ratio per layer
    settings = _bounded(settings, blocks, adjustments, log)
    bounds = split_blocks(num_layers, blocks)
    rules = (paper_scope_rules(params, stored, settings.alpha) if settings.scope == "paper"
             else head_rules(stored, settings.alpha))
    spec = MergeSpec(sft=sft, aligned=aligned, alphas=[settings.alpha] * blocks, block_bounds=bounds,
                     rules=rules, **allow)
    with build_plan(spec) as plan:
        decision = {t.name: t.decision for t in plan.tensors}
    fused = [name for name in params if stored[name] not in decision]
    if fused:
        raise TaxcutError(f"parameter '{fused[0]}' is fused from several stored tensors (e.g. mixture-of-experts "
                          "weights); taxcut fit does not support this architecture yet")
    trainable = {name: decision[stored[name]].block for name in params
                 if decision[stored[name]].block is not None}
    context = model_context(model, tokenizer)
    retained = []  # the retain batches with the SFT log-probabilities: before any weight changes
    if weight > 0:
        retained = _retain_batches(model, tokenizer, retain_records, retain, context, settings, adjustments, log,
                                   device)
    with torch.no_grad():  # weights whose ratio does not train (rules, the mean): set once, in place, as merge does
        for name, parameter in params.items():
            if name not in trainable:
                alpha = decision[stored[name]].alpha
                if not interpolate(parameter.detach().clone(), aligned_params[name].detach(), alpha, parameter.data):
                    raise TaxcutError(f"tensor '{stored[name]}': its average at a = {alpha} is not finite in "
                                      f"{str(parameter.dtype).removeprefix('torch.')}; load the models in float32")
    holder = Coefficients()
    parametrize_weights(model, {name: Interpolated(aligned_params[name].detach(), holder, block)
                                for name, block in trainable.items()})
    recompute_layers(model)

    # 3. the fit set: prompt + response, the loss on the response tokens or on all of them; a random draw of it
    examples, cut = encode_fit_set(tokenizer, records, data, context, settings.loss)
    if cut:  # the paper's fit cuts at its max length too; the ratios file says how many were cut
        shown = ", ".join(str(n) for n in cut[:10]) + (", ..." if len(cut) > 10 else "")
        adjustments.append(f"{len(cut)} of {len(examples)} fit examples are longer than the model's context of "
                           f"{context} tokens: their responses were cut to fit (records {shown} of {data})")
        log(f"fit: {adjustments[-1]}")
    rng = random.Random(settings.seed)
    if settings.draw < 1:
        examples = rng.sample(examples, max(1, round(settings.draw * len(examples))))

    # 4. the only trainable tensor: K block logits, starting at MA; the L1 pull's weights
    if settings.mean == "free":
        start = free_initial_logits(settings.alpha, blocks)
    else:
        start = initial_logits(settings.alpha, blocks, settings.normalize)
    logits = start.to(device).requires_grad_()

    def ratios_of(values: torch.Tensor) -> torch.Tensor:  # (K,): mean alpha, or each free in [0, 1]
        if settings.mean == "free":
            return free_ratios(values)
        return block_ratios(values, settings.alpha, settings.eps, settings.normalize)

    reg_weights = settings.reg
    if settings.reg == "paper":  # per Linear weight, by its layer's distance from the middle
        layer_of = detect_layers(stored.values()).layer_of
        linears = [(layer_of[stored[name]], block) for name, block in trainable.items() if params[name].ndim == 2]
        reg_weights = paper_reg_weights(linears, num_layers, blocks)
        adjustments.append("reg paper: w_k = " + ", ".join(f"{w:.4g}" for w in reg_weights))
    elif len(reg_weights) != blocks:  # granularity layer: one weight for every layer, or none per block
        if len(set(reg_weights)) > 1:
            raise TaxcutError(f"--reg {','.join(f'{w:g}' for w in reg_weights)}: one weight per block, but "
                              f"--granularity layer fits {blocks} ratios; give one weight for all, or paper")
        reg_weights = reg_weights[:1] * blocks
    optimizer = torch.optim.Adam([logits], lr=settings.lr)
    processes, rank = accelerator.num_processes, accelerator.process_index
    global_batch = settings.batch_size * processes  # one step's examples over all processes
    steps_per_epoch = math.ceil(len(examples) / global_batch)
    total_steps = max(1, steps_per_epoch * settings.epochs)
    scheduler = warmup_cosine(optimizer, total_steps, settings.warmup)
    reg = torch.tensor(reg_weights, device=device)
    result = FitResult([], bounds, rules, settings, adjustments=adjustments,
                       is_main_process=accelerator.is_main_process)
    log(f"fit: {len(examples)} examples, {blocks} blocks {bounds}, a = {settings.alpha}, normalize "
        f"{settings.normalize}, eps = {settings.eps:g}, scope {settings.scope}, loss on {settings.loss}, "
        f"{total_steps} steps" + (", mean free" if settings.mean == "free" else "")
        + (f", retain W = {weight:g} on {len(retained)} batches" if weight > 0 else ""))
    model.eval()  # no dropout: the weights are the only thing that changes
    for epoch in range(settings.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)  # the same on every process: same seed, same draws
        for start in range(0, len(order), global_batch):
            step = order[start:start + global_batch]
            step += order[: -len(step) % processes]  # every process takes the same number of examples
            batch = collate([examples[i] for i in step[rank::processes]], tokenizer.pad_token_id or 0)
            ratios = ratios_of(logits)  # (K,)
            holder.values = ratios  # every parametrised weight reads its block's ratio from here
            output = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
            loss = output.loss + (reg * (ratios - settings.alpha).abs()).sum()
            loss.backward()
            if retained:  # its own backward (one graph at a time); the same batch on every process
                kept = retained[len(result.losses) % len(retained)]
                holder.values = ratios_of(logits)  # the same ratios, a graph of their own
                merged = model(**{k: v.to(device) for k, v in kept.inputs.items()}, use_cache=False).logits
                kl = retention_kl(merged, kept)
                (weight * kl).backward()
                result.retain_kl.append(kl.item())
            if processes > 1:  # the gradient of the mean over all the step's loss tokens, as one process has it
                tokens = (batch["labels"][:, 1:] != -100).sum().to(device=device, dtype=torch.float32)
                logits.grad = (accelerator.reduce(logits.grad * tokens, reduction="sum")
                               / accelerator.reduce(tokens, reduction="sum"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.losses.append(output.loss.item())
            result.ratio_history.append(ratios_of(logits.detach()).tolist())
        log(f"fit: epoch {epoch + 1}: loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}, ratios "
            + ", ".join(f"{r:.4f}" for r in result.ratio_history[-1]))
    final = ratios_of(logits.detach())
    result.alphas = final.float().cpu().tolist()
    if keep_weights:
        holder.values = final
        with torch.no_grad():
            result.weights = {stored[name]: current_weight(model, name).detach().cpu().clone() for name in params}
    return result


def _bounded(settings: FitSettings, blocks: int, adjustments: list[str], log) -> FitSettings:
    """``settings`` with eps raised where it would let one of ``blocks`` ratios leave [0, 1] (said and recorded);
    a free mean has no eps to bound."""
    eps = bounded_eps(settings.alpha, blocks, settings.eps, settings.normalize)
    if settings.mean == "free" or eps == settings.eps:
        return settings
    adjustments.append(f"eps raised from {settings.eps:g} to {eps:.6g}, the smallest that keeps every block ratio "
                       f"within [0, 1] (normalize {settings.normalize}, a = {settings.alpha:g}, K = {blocks})")
    log(f"fit: {adjustments[-1]}")
    return settings.model_copy(update={"eps": eps})


def _retain_batches(model, tokenizer, records, path: Path, context, settings: FitSettings, adjustments, log,
                    device):
    """The retain set encoded, cut to the context (said and recorded) and batched with the SFT model's
    log-probabilities (``model`` is still the SFT model)."""
    encoded, cut = encode_retain_set(tokenizer, records, path, context)
    if cut:
        adjustments.append(f"{len(cut)} of {len(encoded)} retain records are longer than the model's context of "
                           f"{context} tokens: they were cut to fit (records "
                           + ", ".join(str(n) for n in cut[:10]) + (", ..." if len(cut) > 10 else "") + f" of {path})")
        log(f"fit: {adjustments[-1]}")
    model.eval()
    batches = retain_batches(model, encoded, settings.batch_size, tokenizer.pad_token_id or 0, device)
    log(f"fit: retain set {path}: {len(encoded)} records, SFT log-probabilities cached "
        f"({cache_bytes(batches) / 2**20:.1f} MiB)")
    return batches


def _refuse_non_finite(tensors: dict[str, torch.Tensor], stored: dict[str, str], model: str) -> None:
    """A NaN or Inf weight would flow into every step of the fit: refuse it, naming the tensor and the model."""
    for name, tensor in tensors.items():
        if not all_finite(tensor.detach()):
            raise TaxcutError(f"tensor '{stored[name]}' of the {model} contains NaN or Inf values; fix or re-export "
                              "that checkpoint")


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


def encode_fit_set(tokenizer, records: list[dict], path: Path, context: int | None,
                   loss: str) -> tuple[list[tuple[list[int], int]], list[int]]:
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
                raise TaxcutError(f"{path}, record {number}: prompt and response are {len(ids)} tokens, longer than "
                                  f"the model's context of {context}, and the prompt alone ({len(prompt)} tokens) "
                                  "leaves no room for the response; shorten or drop it")
            ids = ids[:context]
            cut.append(number)
        encoded.append((ids, len(prompt) if loss == "response" else 0))
    return encoded, cut


