"""The `Source` interface every dataset implements, and the error for unreadable images.

Label convention everywhere: `labels()[i]` is the class index of sample i (0..C-1) for
in-distribution data, and -1 for OoD / unknown samples.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

OOD_LABEL = -1


class UnreadableImage(Exception):
    """Raised by `Source.load` (and `load_image`) when an image is missing or cannot be decoded."""


class Source(ABC):
    """An ordered, indexable list of images with stable ids and integer labels.

    Subclasses set `kind` (the `source:` value in benchmarks.yaml), keep `ids()` and
    `labels()` cheap (no image decoding) and return RGB images from `load(i)`.

    Attributes:
        name: human name of the dataset (e.g. "digits-test"), used in messages.
        kind: the source kind, e.g. "imglist".
    """

    kind: str = ""
    expected_rows: int | None = None  # the catalogue's stated count (benchmarks.yaml expected_rows)

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def ids(self) -> list[str]:
        """Stable per-sample ids (relative paths for file sources), length N. Do not mutate."""

    @abstractmethod
    def labels(self) -> np.ndarray:
        """(N,) int64 class indices; -1 marks OoD / unknown samples."""

    @abstractmethod
    def load(self, i: int) -> Image.Image:
        """Return sample i as an RGB PIL image; raise `UnreadableImage` if it cannot be read."""

    def file(self, i: int) -> Path | None:
        """The image file behind sample ``i`` for file-backed sources (read as raw bytes by
        ``extract --decode device``); None for sources that make images in memory."""
        return None

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Json-able parameters that, with `kind`, say exactly which data this is."""

    def __len__(self) -> int:
        return len(self.labels())

    def fingerprint(self) -> str:
        """Sha256 hex digest of the ordered (id, label) list: the sample-list fingerprint.

        Each sample contributes one line `json.dumps([id, label])` + newline, so the digest
        is unambiguous for any id and does not depend on pixels or on where the data lives.
        """
        digest = hashlib.sha256()
        for sample_id, label in zip(self.ids(), self.labels().tolist(), strict=True):
            digest.update(json.dumps([sample_id, int(label)]).encode() + b"\n")
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """Json-able provenance: name, kind, sample count and the kind's parameters."""
        return {"name": self.name, "kind": self.kind, "num_samples": len(self), **self.params()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, size={len(self)})"


def check_index(source: Source, i: int) -> int:
    """Return i as an int if 0 <= i < len(source), else raise IndexError."""
    n = len(source)
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for {source.name!r} ({n} samples)")
    return int(i)
