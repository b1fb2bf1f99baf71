"""Work a merge method does on data before its merge streams: choosing a greedy soup's ingredients by a held-out
score, fitting AdaMerging's coefficients. These load models, evaluate and train; the merge math stays in
:mod:`taxcut.methods`."""
