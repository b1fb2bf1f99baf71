"""taxcut: cut the alignment tax of RLHF by averaging model weights.

Convention used everywhere in taxcut: the ratio ``a`` weighs the ALIGNED model,

    theta(a) = (1 - a) * theta_sft + a * theta_aligned,

so ``a = 0`` is the SFT model and ``a = 1`` the aligned one ("Mitigating the Alignment Tax of RLHF", Lin et al.,
EMNLP 2024, arXiv 2309.06256). The paper's reference code uses the opposite convention (its ``alpha`` weighs the
SFT model).

Quick use::

    from taxcut import MergeSpec, merge, plan

    spec = MergeSpec(sft="models/sft", aligned="models/dpo", alphas=[0.3, 0.5, 0.7], out="models/hma-0.5")
    print(plan(spec).render())   # header-only: which tensor gets which ratio
    merge(spec)                  # streams tensor by tensor, writes an ordinary Hugging Face folder
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from taxcut.errors import TaxcutError
from taxcut.spec import MergeSpec, NameRule
from taxcut.version import __version__

if TYPE_CHECKING:  # `import taxcut` stays light: the planner and the toolkit specs load on first use
    from taxcut.merging.plan import MergePlan
    from taxcut.spec.mergekit_config import MergekitConfig
    from taxcut.spec.toolkit import ToolkitSpec

AnyMergeSpec = Union[MergeSpec, "ToolkitSpec", "MergekitConfig"]
"""What :func:`plan` and :func:`merge` take: an MA/HMA spec, a toolkit spec (a named method over N models), or a
mergekit configuration."""


def plan(spec: AnyMergeSpec) -> MergePlan:
    """Resolve ``spec`` against the inputs' headers, reading no weights.

    Args:
        spec: the merge to plan (:class:`MergeSpec`, a toolkit spec or a mergekit configuration).

    Returns:
        The :class:`~taxcut.merging.plan.MergePlan`: which tensor gets which method and ratio
        (``render()`` shows it); close it, or use it as a context manager, to release the files it holds open.

    Raises:
        TaxcutError: inputs that do not fit together (tensors, shapes, tokenizers) or a spec that names none of
            their tensors, in one line.
    """
    from taxcut.merging.plan import build_plan  # `import taxcut` stays light

    return build_plan(spec)


def merge(
    spec: AnyMergeSpec,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    protect: Sequence[tuple[str, Path]] = (),
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write the merged model described by ``spec`` to its ``out`` folder.

    Elementwise methods stream chunk by chunk (peak memory does not grow with the model); everything is written
    into a staging folder beside the destination and renamed into place only when complete.

    Args:
        spec: the merge (:class:`MergeSpec`, a toolkit spec or a mergekit configuration), with its ``out``.
        overwrite: replace a destination that holds an earlier taxcut output (never anything else).
        progress: show a progress bar (None: only on a terminal).
        protect: more (role, path) pairs the destination must stay clear of, such as the spec file.
        provenance: more fields for the provenance file written beside the weights.

    Returns:
        The destination folder, complete.

    Raises:
        TaxcutError: bad input or a destination taxcut may not write, in one line; nothing is left half-written.
    """
    from taxcut.merging.engine import run_merge  # `import taxcut` stays light
    from taxcut.merging.plan import build_plan

    return run_merge(build_plan(spec), overwrite=overwrite, progress=progress, protect=protect, provenance=provenance)


__all__ = ["MergeSpec", "NameRule", "TaxcutError", "merge", "plan", "__version__"]
