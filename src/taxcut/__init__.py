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

from taxcut.errors import TaxcutError
from taxcut.spec import MergeSpec, NameRule
from taxcut.version import __version__


def plan(spec: MergeSpec):
    """Resolve ``spec`` against the inputs' headers (no weights read) and return the :class:`MergePlan`."""
    from taxcut.merging.plan import build_plan

    return build_plan(spec)


def merge(spec: MergeSpec, *, overwrite: bool = False, progress: bool | None = None):
    """Write the merged model described by ``spec`` to ``spec.out`` and return that path.

    The merge streams tensor by tensor (peak memory does not grow with the model), writes into a temporary
    folder beside the destination and renames it into place only when complete.
    """
    from taxcut.merging.engine import run_merge
    from taxcut.merging.plan import build_plan

    return run_merge(build_plan(spec), overwrite=overwrite, progress=progress)


__all__ = ["MergeSpec", "NameRule", "TaxcutError", "merge", "plan", "__version__"]
