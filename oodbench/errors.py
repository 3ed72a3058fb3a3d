"""User-facing errors: one line that says what was wrong and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OodbenchError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line."""


def suggest(name: str, choices: Iterable[str], what: str, where: str = "") -> OodbenchError:
    """Build an 'unknown X' error that suggests the closest valid names.

    ``what`` names the kind of thing (``"method"``), ``where`` optionally where it was read.
    """
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    at = f" ({where})" if where else ""
    listing = ", ".join(choices) if len(choices) <= 40 else f"{len(choices)} names"
    return OodbenchError(f"Unknown {what} {name!r}{at}.{hint} Available: {listing}.")
