"""Weight-space merge methods, registered by name. Each is a pure function on one tensor of every input.

Adding a method touches one module of this package (and its test): decorate a function with
:func:`taxcut.methods.registry.method` and import the module in :mod:`taxcut.methods.catalog`.
"""
