"""Validation of one dataset entry of benchmarks.yaml, with one-line errors that name it.

Keys starting with "_" are reserved for values the config loader adds (e.g. `_base_dir`,
the directory of the benchmarks.yaml that named the dataset) and are not validated.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from oodbench.errors import OodbenchError, suggest

DATA_ENV = "OODBENCH_DATA"
_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


class SpecReader:
    """Typed, validated access to the keys of one dataset entry.

    Args:
        spec: the entry, including `source` (the kind).
        name: the dataset's name, quoted in every error.
        required: keys the kind needs.
        optional: keys the kind accepts.

    Raises:
        OodbenchError: a key is unknown (with close-match suggestions) or missing.
    """

    def __init__(
        self, spec: Mapping[str, Any], name: str, required: Iterable[str], optional: Iterable[str]
    ) -> None:
        self.spec, self.name, self.kind = spec, name, spec.get("source")
        allowed = {"source", *required, *optional}
        for key in spec:
            if not str(key).startswith("_") and key not in allowed:
                raise suggest(str(key), allowed, f"key for {self.kind} dataset {name!r}:")
        for key in required:
            if key not in spec:
                raise self.error(f"is missing the required key {key!r}")

    def error(self, message: str) -> OodbenchError:
        """An OodbenchError that starts with the dataset's name and kind."""
        return OodbenchError(f"Dataset {self.name!r} ({self.kind}) {message}.")

    def bad(self, key: str, expected: str) -> OodbenchError:
        """An error for a key whose value is invalid: says what was expected and what came."""
        return self.error(f"key {key!r} must be {expected}, got {self.spec[key]!r}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.spec.get(key, default)

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        value = self.spec.get(key, default)
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or (minimum is not None and value < minimum):
            raise self.bad(key, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.spec.get(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, "true or false")
        return value

    def choice(self, key: str, choices: Iterable[str], default: str | None = None) -> str:
        choices = tuple(choices)
        value = self.spec.get(key, default)
        if value not in choices:
            raise self.bad(key, "one of " + ", ".join(choices))
        return value

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.spec.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.bad(key, "a string")
        return value

    def string_list(self, key: str) -> list[str] | None:
        value = self.spec.get(key)
        if value is not None and not (
            isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        ):
            raise self.bad(key, "a non-empty list of strings")
        return value

    def path(
        self, key: str, data_root: str | Path | None = None, base: str | Path | None = None
    ) -> Path | None:
        """The key as an absolute path, or None when the key is absent.

        `$VAR`/`${VAR}` and `~` are expanded; `${OODBENCH_DATA}` is `data_root` when given,
        else the environment variable. A relative path is taken relative to `base`
        (default: the current directory).
        """
        value = self.string(key)
        if value is None:
            return None
        path = Path(self._expand(key, value, data_root)).expanduser()
        return (Path(base or ".") / path).absolute()

    def _expand(self, key: str, value: str, data_root: str | Path | None) -> str:
        env = dict(os.environ)
        root = effective_data_root(data_root)
        if root is not None:
            env[DATA_ENV] = str(root)

        def substitute(match: re.Match[str]) -> str:
            var = match.group(1) or match.group(2)
            if var not in env:
                hint = f"pass --data-root or set {DATA_ENV}" if var == DATA_ENV else f"set {var}"
                raise self.error(f"key {key!r} ({value!r}) uses ${var}, which is not set: {hint}")
            return env[var]

        return _VAR.sub(substitute, value)


def effective_data_root(data_root: str | Path | None) -> Path | None:
    """The data root in force, as an absolute path: the argument (--data-root), else
    $OODBENCH_DATA, else None. Absolute so that a path already under the data root is not
    joined to it a second time."""
    value = data_root if data_root is not None else os.environ.get(DATA_ENV)
    return Path(value).expanduser().absolute() if value else None


def existing_data_dir(reader: SpecReader, data_root: str | Path | None) -> Path:
    """The entry's image directory: its `root` key (relative to the data root) or the data root.

    Raises:
        OodbenchError: no root is known, or the directory does not exist (the message says
            where to download the data from when the entry has a `url` key).
    """
    url = reader.string("url")
    base = effective_data_root(data_root)
    root = reader.path("root", data_root, base=base) or base
    if root is None:
        raise reader.error(
            f"has no data root: pass --data-root, set {DATA_ENV} or give the entry a 'root' key"
        )
    if not root.is_dir():
        source = f" from {url}" if url else ""
        raise OodbenchError(
            f"Data root {root} for dataset {reader.name!r} does not exist: download the images"
            f"{source} and pass --data-root (or set {DATA_ENV}); the README's 'Data trees' shows each "
            "benchmark's layout."
        )
    return root.absolute()
