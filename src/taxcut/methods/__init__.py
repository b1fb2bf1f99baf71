"""Weight-space merge methods, registered by name, and their math.

Each method is a :class:`~taxcut.methods.registry.MergeMethod` in its own module, registered with
:func:`~taxcut.methods.registry.register`: its parameters (a pydantic model), a pure tensor function, and optionally a
``prepare`` step that works on data before the merge (delegated to :mod:`taxcut.tuning`). Adding a method is one new
module here plus its test; :mod:`taxcut.methods.catalog` imports every module of this package.
"""
