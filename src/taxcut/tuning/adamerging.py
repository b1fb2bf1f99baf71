"""AdaMerging's coefficient fit (Yang et al. 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning",
ICLR): learn the task-vector coefficients, one per model (task-wise) or per model and decoder layer (layer-wise), by
minimising the entropy of the merged model's next-token predictions on unlabelled prompts.

The fit shares HMA's machinery (:mod:`taxcut.training`): only the coefficients train, each weight is computed on
access from theta_base (the model's own parameters) and the inputs, and decoder layers are recomputed in the
backward pass. The merge (:mod:`taxcut.methods.adamerging`) then applies the learned coefficients chunk by chunk,
with the same arithmetic.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from taxcut.errors import TaxcutError
from taxcut.evaluation.data import read_jsonl
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer, pick_device
from taxcut.io.layers import detect_layers
from taxcut.io.parameters import architecture_mismatch, checkpoint_names, read_parameters
from taxcut.training import Coefficients, TaskVectorSum, parametrize_weights, recompute_layers


def fit_adamerging(
    base: Path,
    models: list[Path],
    prompts: Path,
    *,
    granularity: str = "layer",
    epochs: int = 1,
    batch_size: int = 8,
    lr: float = 0.01,
    init: float = 0.3,
    seed: int = 0,
    device: str = "auto",
) -> dict:
    """Learn the coefficients; returns ``{"coefficients": [[...]], "layers": L, "entropy": [...]}``."""
    if granularity not in ("layer", "task"):
        raise TaxcutError(f"adamerging granularity {granularity!r}: use 'layer' or 'task'")
    torch.manual_seed(seed)
    resolved = pick_device(device)
    model = load_causal_lm(base, device=resolved, dtype="float32")
    model.requires_grad_(False)
    tokenizer = load_tokenizer(base)
    params = dict(model.named_parameters())
    stored = checkpoint_names(model)
    layout = detect_layers(stored.values())
    layers = layout.num_layers
    groups = layers + 1 if granularity == "layer" else 1
    others: dict[str, list[torch.Tensor]] = {name: [] for name in params}
    for folder in models:
        for name, tensor in read_parameters(folder, params, stored, "model"):
            if tensor is None:
                raise architecture_mismatch(folder, stored[name])
            others[name].append(tensor.to(resolved))
    holder = Coefficients()
    parametrize_weights(
        model,
        {
            name: TaskVectorSum(others[name], holder, layout.layer_of.get(stored[name], layers) if groups > 1 else 0)
            for name in params
        },
    )
    recompute_layers(model)
    coefficients = torch.full((len(models), groups), init, device=resolved, requires_grad=True)
    optimizer = torch.optim.Adam([coefficients], lr=lr)
    texts = [str(r["prompt"]) for r in read_jsonl(prompts, needs=[("prompt",)], what="unlabelled prompts")]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    rng = random.Random(seed)
    history = []
    model.eval()
    for _ in range(epochs):
        rng.shuffle(texts)
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True).to(resolved)
            holder.values = coefficients
            logits = model(**batch, use_cache=False).logits.float()  # (B, T, V)
            log_probs = torch.log_softmax(logits, dim=-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)  # (B, T)
            mask = batch["attention_mask"].float()
            loss = (entropy * mask).sum() / mask.sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                coefficients.clamp_(0.0, 1.0)
            history.append(loss.item())
    return {
        "coefficients": coefficients.detach().cpu().tolist(),
        "layers": layers,
        "entropy": history,
        "granularity": granularity,
    }
