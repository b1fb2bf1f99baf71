"""Heterogeneous model averaging (HMA): learn one ratio per block of layers, their mean held at ``a``.

From "Mitigating the Alignment Tax of RLHF" (Lin et al., EMNLP 2024, arXiv 2309.06256), first published as
"Adaptive Model Averaging". Convention, as everywhere in taxcut: ``a`` weighs the ALIGNED model,
``theta = (1 - a) * sft + a * aligned``. The paper's reference code weighs the SFT model: its ``alpha=0.2`` means
80% aligned, i.e. our ``a = 0.8``.
"""
