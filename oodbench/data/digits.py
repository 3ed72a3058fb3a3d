"""The offline digits world: scikit-learn's bundled 8x8 handwritten digits (no download).

The 1797 images are split once per seed, per digit, into train 50% / val 10% / test 40%;
every digit subset sees the same partition, so "digits 0-4 test" and "digits 5-9 test"
never share an image with the train split of either.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from oodbench.data.base import OOD_LABEL, Source, check_index
from oodbench.data.spec import SpecReader

SPLITS = ("train", "val", "test", "all")
TRAIN_FRACTION, VAL_FRACTION = 0.5, 0.1  # the remaining 40% is test
KEYS = {"required": (), "optional": ("digits", "split", "seed", "ood")}


@functools.lru_cache(maxsize=1)
def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """All of scikit-learn's digits: (1797, 8, 8) uint8 images in 0..255 (ink bright on
    black, from the original 0..16 counts) and (1797,) int64 digits. Read-only arrays."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)
    targets = bunch.target.astype(np.int64)
    images.flags.writeable = targets.flags.writeable = False
    return images, targets


@functools.lru_cache(maxsize=8)
def split_assignment(seed: int = 0) -> np.ndarray:
    """(1797,) array of "train" / "val" / "test": the seeded per-digit stratified partition."""
    _, targets = digits_data()
    assignment = np.empty(len(targets), dtype="<U5")
    for digit in range(10):
        members = np.random.default_rng([seed, digit]).permutation(np.flatnonzero(targets == digit))
        n_train = round(TRAIN_FRACTION * len(members))
        n_val = round(VAL_FRACTION * len(members))
        assignment[members[:n_train]] = "train"
        assignment[members[n_train : n_train + n_val]] = "val"
        assignment[members[n_train + n_val :]] = "test"
    assignment.flags.writeable = False
    return assignment


class DigitsSource(Source):
    """Handwritten digits from scikit-learn: 8x8 grayscale images returned as RGB.

    Args:
        name: dataset name.
        digits: the digits to keep, in label order (default 0..9); label = position in it.
        split: "train", "val", "test" or "all".
        seed: seed of the train/val/test partition.
        ood: label every sample -1.

    Ids are `digits/<index in load_digits()>`, in increasing index order.
    """

    kind = "digits"

    def __init__(
        self,
        name: str,
        digits: list[int] | None = None,
        split: str = "all",
        seed: int = 0,
        ood: bool = False,
    ) -> None:
        super().__init__(name)
        self.digits = list(range(10)) if digits is None else [int(d) for d in digits]
        self.split, self.seed, self.ood = split, seed, ood
        _, targets = digits_data()
        keep = np.isin(targets, self.digits)
        if split != "all":
            keep &= split_assignment(seed) == split
        self._index = np.flatnonzero(keep)
        label_of = np.full(10, OOD_LABEL, dtype=np.int64)
        if not ood:
            label_of[self.digits] = np.arange(len(self.digits))
        self._labels = label_of[targets[self._index]]

    def ids(self) -> list[str]:
        return [f"digits/{i}" for i in self._index]

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def load(self, i: int) -> Image.Image:
        images, _ = digits_data()
        return Image.fromarray(images[self._index[check_index(self, i)]]).convert("RGB")

    def params(self) -> dict[str, Any]:
        return {"digits": self.digits, "split": self.split, "seed": self.seed, "ood": self.ood}


def read_digits(spec: SpecReader) -> list[int]:
    """The entry's ``digits``: a non-empty list of distinct integers 0-9 (default: all ten)."""
    digits = spec.get("digits", list(range(10)))
    valid = isinstance(digits, list) and digits and len(set(digits)) == len(digits)
    if not valid or not all(type(d) is int and 0 <= d <= 9 for d in digits):
        raise spec.bad("digits", "a non-empty list of distinct integers 0-9")
    return digits


def from_spec(
    spec: SpecReader, data_root: str | Path | None = None, download: bool = False
) -> DigitsSource:
    """Build a `DigitsSource` from a validated benchmarks.yaml entry (needs no data root)."""
    digits = read_digits(spec)
    return DigitsSource(
        spec.name,
        digits=digits,
        split=spec.choice("split", SPLITS, "all"),
        seed=spec.integer("seed", 0),
        ood=spec.boolean("ood"),
    )
