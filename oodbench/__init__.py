"""oodbench: post-hoc OoD detection for (fine-tuned) CLIP from a cached feature store.

Convention everywhere: higher score = more in-distribution.

The package's face is lazy: ``extract``, ``score``, ``report``, ``run`` and ``load_scores``
(from :mod:`oodbench.api`) are imported on first use, so that ``import oodbench.metrics`` or
``oodbench report`` do not load torch and the model code.
"""

from __future__ import annotations

import sys
import types

__version__ = "0.1.0"

from .errors import OodbenchError  # noqa: E402  (light: no third-party imports)

_API = ("extract", "load_scores", "report", "run", "score")

__all__ = ["OodbenchError", "__version__", *_API]


def __getattr__(name: str):
    """Resolve the API functions on first use (PEP 562)."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


class _Package(types.ModuleType):
    """``oodbench.report`` is the API function, also once the ``oodbench.report`` submodule
    (which the import system binds onto its parent) has been imported: the binding is ignored,
    the submodule stays reachable as ``sys.modules["oodbench.report"]``."""

    @property
    def report(self):
        from .api import report

        return report

    @report.setter
    def report(self, value) -> None:
        if not isinstance(value, types.ModuleType):
            raise AttributeError("oodbench.report is the API function; it cannot be replaced.")


sys.modules[__name__].__class__ = _Package
