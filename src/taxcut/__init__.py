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


def plan(spec):
    """Resolve ``spec`` (a :class:`MergeSpec` or a toolkit spec) against the inputs' headers (no weights read) and
    return the :class:`~taxcut.merging.plan.MergePlan`."""
    from taxcut.merging.plan import build_plan  # noqa: PLC0415 - `import taxcut` stays light

    return build_plan(spec)


def merge(spec, *, overwrite: bool = False, progress: bool | None = None, protect=(), provenance=None):
    """Write the merged model described by ``spec`` (a :class:`MergeSpec` or a toolkit spec) to its ``out`` folder
    and return that path.

    Elementwise methods stream chunk by chunk (peak memory does not grow with the model); everything is written
    into a staging folder beside the destination and renamed into place only when complete. ``protect``: more
    (role, path) pairs the destination must stay clear of, such as the spec file; ``provenance``: more fields for
    the provenance file.
    """
    from taxcut.merging.engine import run_merge  # noqa: PLC0415 - `import taxcut` stays light
    from taxcut.merging.plan import build_plan  # noqa: PLC0415

    return run_merge(build_plan(spec), overwrite=overwrite, progress=progress, protect=protect,
                     provenance=provenance)


__all__ = ["MergeSpec", "NameRule", "TaxcutError", "merge", "plan", "__version__"]
