"""oodbench: post-hoc OoD detection for (fine-tuned) CLIP from a cached feature store.

Convention everywhere: higher score = more in-distribution.
"""

__version__ = "0.1.0"

from . import report as _report_module  # noqa: E402,F401  (bind the submodule first)
from .api import extract, load_scores, report, run, score  # noqa: E402
from .errors import OodbenchError  # noqa: E402

__all__ = ["OodbenchError", "__version__", "extract", "load_scores", "report", "run", "score"]
