"""Default locations: the user cache (trained tiny model, torchvision data) and the store."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STORE = "oodbench_store"


def cache_dir() -> Path:
    """``$OODBENCH_CACHE``, else ``$XDG_CACHE_HOME/oodbench``, else ``~/.cache/oodbench``."""
    if os.environ.get("OODBENCH_CACHE"):
        return Path(os.environ["OODBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "oodbench"


def default_store() -> Path:
    """``$OODBENCH_STORE`` or ``./oodbench_store``."""
    return Path(os.environ.get("OODBENCH_STORE", DEFAULT_STORE))
