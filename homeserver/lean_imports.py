"""Importing a library without the optional dependencies it would load eagerly.

The homeserver's resident memory is a benchmarked figure (the floor is 100 MiB under load), and
some libraries import every optional backend at package import time. Where such a backend is
guarded by ``try: import x / except ImportError`` inside the library, hiding it during the import
keeps the library working without it; a later ``import x`` by our own code still works, because
a failed import is never cached.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from types import ModuleType


class _Hide(importlib.abc.MetaPathFinder):
    def __init__(self, hidden: tuple[str, ...]) -> None:
        self.hidden = frozenset(hidden)

    def find_spec(self, name, path, target=None):  # noqa: ANN001 - importlib's signature
        if name.partition(".")[0] in self.hidden:
            raise ImportError(f"{name} hidden while importing a library that only needs it optionally")
        return None


def import_without(module: str, hidden: tuple[str, ...]) -> ModuleType:
    """Import ``module`` while the top-level packages in ``hidden`` look absent.

    Packages already imported stay available (they are in sys.modules, found before any finder).
    """
    if module in sys.modules:
        return sys.modules[module]
    finder = _Hide(tuple(h for h in hidden if h not in sys.modules))
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(module)
    finally:
        sys.meta_path.remove(finder)
