"""Measuring models: reward of generated responses and the benchmark scores whose drop is the alignment tax.

Every evaluator follows one small protocol (:class:`taxcut.evaluation.protocol.Evaluator`): a model in memory and
its tokenizer in, named scores out. The sweep, ``taxcut eval`` and the lab all go through the same evaluators.
"""
