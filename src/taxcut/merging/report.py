"""``taxcut plan``'s text: the inputs, the decoder layers, and the value each group of tensors gets."""

from __future__ import annotations

from taxcut.io.checkpoint import Checkpoint
from taxcut.io.dtypes import dtype_label
from taxcut.io.layers import config_ties_embeddings


def render_plan(plan) -> str:
    """A human-readable :class:`~taxcut.merging.plan.MergePlan`."""
    request, method = plan.request, plan.method
    lines = [f"method   {method.name}: {method.paper}"]
    for model, checkpoint in zip(request.inputs, plan.checkpoints):
        weight = f", weight {model.weight:g}" if model.weight != 1.0 else ""
        lines.append(f"{model.role:<8} {model.path}  ({_describe(checkpoint)}{weight})")
    lines += [
        f"out      {request.out if request.out else '(not set)'}  ({plan.out_dtype}, {len(plan.shards)} file(s), "
        f"{_human_bytes(plan.total_bytes)}; "
        + ("streamed in chunks)" if method.elementwise else "one whole tensor of each input at a time)"),
        f"layers   {plan.layout.num_layers} decoder layers"
        + (f" [{plan.layout.family}]" if plan.layout.family else " (none found)"),
    ]
    lines += method.plan_lines(plan) or _parameter_lines(plan)
    for head, embedding in plan.dropped_tied.items():
        lines.append(f"not written: {head} (tied to {embedding}, which carries its value)")
    embedding = plan.layout.token_embedding
    if not plan.dropped_tied and embedding and config_ties_embeddings(plan.checkpoints[0].config):
        lines.append(
            f"tied     {embedding} is tied to lm_head (config.json ties the embeddings; no head is "
            "stored): one tensor, one value"
        )
    lines.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(lines)


def _parameter_lines(plan) -> list[str]:
    """Each parameter of the method; a per-block one as its value per block of layers."""
    parameters, lines = plan.request.parameters, []
    dumped = parameters.dump()
    for name, info in type(parameters).model_fields.items():
        key = info.alias or name
        if name in plan.block_values:
            values = plan.block_values[name]
            lines.append(
                f"{key:<8} "
                + ", ".join(f"{b.label}: {b.value:g}" for b in values.blocks)
                + f"; embeddings {values.blocks[0].value:g}; after the layers {values.mean:g}"
            )
        elif key in dumped and not isinstance(dumped[key], (list, dict)):
            lines.append(f"{key:<8} {dumped[key]}")
    return lines


def _describe(checkpoint: Checkpoint) -> str:
    dtypes = sorted({dtype_label(t.dtype) for t in checkpoint.tensors.values()})
    params = sum(t.numel for t in checkpoint.tensors.values())
    kind = checkpoint.config.get("model_type", "unknown type")
    return (
        f"{kind}, {len(checkpoint.tensors)} tensors, {params:,} params, {'/'.join(dtypes)}, "
        f"{len(checkpoint.files)} file(s)"
    )


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} B"
