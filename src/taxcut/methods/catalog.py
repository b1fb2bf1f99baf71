"""The built-in merge methods: importing this module imports every module of :mod:`taxcut.methods`, whose
``@register`` decorators add them to the registry (a new method is one new module)."""

import importlib
import pkgutil

import taxcut.methods

for _module in pkgutil.iter_modules(taxcut.methods.__path__):
    if _module.name not in ("catalog", "registry"):
        importlib.import_module(f"taxcut.methods.{_module.name}")
