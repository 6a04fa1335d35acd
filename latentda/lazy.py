"""Lazy public names of a package (PEP 562): ``import latentda`` — and the command line's start —
imports no network code; a name is imported from its module on first use.

Usage in a package's ``__init__``::

    __getattr__, __dir__ = lazy_names(__name__, {"AutoEncoder": "latentda.nn.autoencoder"}, globals())
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_names(package: str, names: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable, Callable]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` that load each of ``names``
    (public name → defining module) on first access and keep it in ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(names[name]), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
