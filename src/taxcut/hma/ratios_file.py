"""The ratios file ``taxcut fit`` writes: an ordinary merge spec (sft, aligned, alphas, block_bounds, rules) with
a ``fit`` section recording how it was learned (:class:`taxcut.spec.fit.FitRecord`, its ``settings`` the
:class:`~taxcut.spec.fit.FitSettings` used), so ``merge``, ``plan``, ``sweep`` and ``export`` take it as is."""

from __future__ import annotations

from pathlib import Path

from taxcut.hma.fit import FitResult
from taxcut.io.destination import staged_file
from taxcut.io.hub import as_recorded  # a Hub ID as written, a folder made absolute
from taxcut.spec.fit import FitRecord, FitSettings
from taxcut.spec.merge import MergeSpec

METHOD = (
    "HMA (Lin et al., EMNLP 2024): x_k = x*K*(sigmoid(s_k)+eps)/sum_j(sigmoid(s_j)+eps), x = 1 - a and "
    "a_k = 1 - x_k (normalize sft) or x = a and a_k = x_k (normalize aligned)"
)
CONVENTION = (
    "a weighs the ALIGNED model: theta = (1 - a) * sft + a * aligned (the paper's code weighs the SFT "
    "model: its alpha=0.2 is a=0.8)"
)


def ratios_spec(
    result: FitResult,
    settings: FitSettings,
    sft: Path,
    aligned: Path,
    data: Path,
    *,
    allow_tokenizer_mismatch: bool = False,
    retain: Path | None = None,
) -> MergeSpec:
    """The ratios file's spec; with a retention term (``settings.retain_weight`` W > 0) its retain set and the KL
    at the first and last step are recorded beside W."""
    step = max(1, len(result.losses) // 500)  # a readable loss curve, at most ~500 points
    record = FitRecord(
        method=METHOD,
        convention=CONVENTION,
        settings=settings,
        data=str(data.resolve()),
        steps=len(result.losses),
        loss_first=result.losses[0] if result.losses else None,
        loss_last=result.losses[-1] if result.losses else None,
        loss_curve=result.losses[::step],
        adjustments=result.adjustments,
        retain=str(retain.resolve()) if retain is not None and result.retain_kl else None,
        retain_kl_first=result.retain_kl[0] if result.retain_kl else None,
        retain_kl_last=result.retain_kl[-1] if result.retain_kl else None,
    )
    return MergeSpec(
        sft=as_recorded(sft),
        aligned=as_recorded(aligned),
        alphas=result.alphas,
        block_bounds=result.block_bounds,
        rules=result.rules,
        fit=record,
        allow_tokenizer_mismatch=allow_tokenizer_mismatch,
    )  # merged as it was fitted


def write_ratios(path: Path, spec: MergeSpec, *, overwrite: bool = False, inputs=()) -> None:
    """Write the ratios file under the destination policy: never over an input (the models, the fit set), never
    over a file taxcut did not write, atomically."""
    protected = [("sft", spec.sft), ("aligned", spec.aligned), *inputs]
    with staged_file(path, overwrite=overwrite, inputs=protected, kind="ratios file") as partial:
        partial.write_text(spec.to_yaml())
