"""Covariate-shifted digits: the ID test digits under rotation, blur, noise or elastic
distortion, labelled with their ID classes (the offline stand-in for ImageNet-R/-Sketch/-C).

Sample i is digit ``base[i]`` of the clean `DigitsSource` (same digits, split and partition
seed) with corruption ``corruptions[i % len(corruptions)]`` at one severity 1..5, drawn from
its own generator ``np.random.default_rng([seed, corruption code, digit index])``: ``load(i)``
gives the same image whatever was loaded before, in any process. Everything is numpy
element-wise arithmetic on float64 (no BLAS, no torch, transcendentals only on scalars), so
the bytes are the same for a seed on every machine.

Corruptions, with the severity's parameter (in pixels of the 8x8 digit):

- rotation: by +-(10, 20, 30, 45, 60) degrees about the centre, random sign.
- blur: Gaussian, sigma (0.4, 0.55, 0.7, 0.85, 1.0), truncated at 3 sigma, zero outside.
- noise: additive Gaussian, std (0.08, 0.12, 0.18, 0.26, 0.38) x 255 (ImageNet-C's
  gaussian_noise levels), clipped to 0..255.
- elastic: Simard et al. 2003's field: uniform(-1, 1) displacements per pixel, Gaussian-
  smoothed (sigma 1 px), scaled by alpha (5, 7.5, 10, 13.75, 17.5) -- about (0.2, 0.3, 0.4,
  0.55, 0.7) px of typical displacement, i.e. Simard's MNIST amplitude relative to image size
  at severity 3.

Geometric corruptions resample a 4x supersampled copy (nearest upsampling, bilinear
sampling, 4x4 box averaging back), so small angles and displacements are not lost to the
8 px grid. Outputs are 8x8 like the clean digits, so preprocessing is the same for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from oodbench.data.base import Source, check_index
from oodbench.data.digits import SPLITS, DigitsSource, digits_data, read_digits
from oodbench.data.spec import SpecReader
from oodbench.errors import suggest

KEYS = {
    "required": (),
    "optional": ("corruptions", "severity", "seed", "digits", "split", "split_seed"),
}
SEVERITIES = (1, 2, 3, 4, 5)
SUPERSAMPLE = 4

ROTATION_DEGREES = (10.0, 20.0, 30.0, 45.0, 60.0)
BLUR_SIGMA = (0.4, 0.55, 0.7, 0.85, 1.0)
NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)  # fraction of 255
ELASTIC_ALPHA = (5.0, 7.5, 10.0, 13.75, 17.5)
ELASTIC_SIGMA = 1.0

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes of a (..., H, W) float array, kernel
    truncated at 3 sigma and normalised, zero outside the image (scipy.ndimage's
    ``mode="constant"``, ``truncate=3``). Taps are added one shifted copy at a time (a fixed
    order of element-wise adds)."""
    radius = int(3 * sigma + 0.5)
    taps = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = math.fsum(taps)
    taps = [t / total for t in taps]
    out = np.asarray(image, dtype=np.float64)
    h, w = out.shape[-2:]
    padded = np.zeros((*out.shape[:-2], h + 2 * radius, w + 2 * radius))
    padded[..., radius : radius + h, radius : radius + w] = out
    rows = np.zeros((*out.shape[:-2], h + 2 * radius, w))
    for j, t in enumerate(taps):
        rows += t * padded[..., :, j : j + w]
    out = np.zeros(out.shape)
    for j, t in enumerate(taps):
        out += t * rows[..., j : j + h, :]
    return out


def bilinear_sample(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample a (H, W) image at float pixel coordinates (y, x) (any equal shapes), bilinearly,
    with zero outside the image (scipy.ndimage.map_coordinates, order=1, "grid-constant")."""
    h, w = image.shape
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        return np.where(inside, image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0)

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def _warp(image: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Resample the supersampled copy of an (8, 8) image at grid + (dy, dx) (supersampled
    pixels, arrays of the supersampled shape) and average back to (8, 8)."""
    big = np.repeat(np.repeat(image, SUPERSAMPLE, 0), SUPERSAMPLE, 1)
    gy, gx = np.mgrid[0 : big.shape[0], 0 : big.shape[1]].astype(np.float64)
    warped = bilinear_sample(big, gy + dy, gx + dx)
    h, w = image.shape
    return warped.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3))


def rotate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Rotation by +-ROTATION_DEGREES[severity - 1] about the image centre."""
    angle = math.radians(ROTATION_DEGREES[severity - 1]) * (1 if rng.random() < 0.5 else -1)
    cos, sin = math.cos(angle), math.sin(angle)
    n = image.shape[0] * SUPERSAMPLE
    c = (n - 1) / 2
    gy, gx = np.mgrid[0:n, 0:n].astype(np.float64) - c
    # each output pixel samples the input at its position rotated by -angle about the centre
    src_y, src_x = cos * gy - sin * gx, sin * gy + cos * gx
    return _warp(image, src_y - gy, src_x - gx)


def blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of sigma BLUR_SIGMA[severity - 1] (deterministic: ``rng`` is unused)."""
    return gaussian_blur(image, BLUR_SIGMA[severity - 1])


def noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of std NOISE_STD[severity - 1] * 255 per pixel."""
    return image + rng.standard_normal(image.shape) * (NOISE_STD[severity - 1] * 255.0)


def elastic(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Simard et al. 2003: displacement = alpha * G_sigma * uniform(-1, 1), per axis."""
    n = image.shape[0] * SUPERSAMPLE
    alpha = ELASTIC_ALPHA[severity - 1] * SUPERSAMPLE
    field = rng.uniform(-1.0, 1.0, size=(2, n, n))
    dy, dx = alpha * gaussian_blur(field, ELASTIC_SIGMA * SUPERSAMPLE)
    return _warp(image, dy, dx)


CORRUPTIONS: dict[str, Corruption] = {
    "rotation": rotate,
    "blur": blur,
    "noise": noise,
    "elastic": elastic,
}
_CODE = {name: code for code, name in enumerate(CORRUPTIONS)}  # part of each sample's seed


class ShiftedDigitsSource(Source):
    """Corrupted copies of the clean digits of one split, labelled like the clean digits.

    Args:
        name: dataset name.
        corruptions: names from `CORRUPTIONS`; sample i gets ``corruptions[i % k]``
            (default: all four, so each clean digit has one corruption).
        severity: 1 (mild) .. 5 (strong).
        seed: seed of the corruptions' randomness.
        digits, split, split_seed: the clean `DigitsSource` (``digits``, ``split``,
            ``seed``) whose images are corrupted; default the ID test split of the
            offline benchmark's partition.

    Ids are ``shifted/<corruption>-<severity>/<seed>/digits/<index in load_digits()>``, so
    the sample-list fingerprint changes with the corruption, severity and seed.
    """

    kind = "shifted_digits"

    def __init__(
        self,
        name: str,
        corruptions: list[str] | None = None,
        severity: int = 3,
        seed: int = 0,
        digits: list[int] | None = None,
        split: str = "test",
        split_seed: int = 0,
    ) -> None:
        super().__init__(name)
        self.corruptions = list(CORRUPTIONS) if corruptions is None else list(corruptions)
        for c in self.corruptions:
            if c not in CORRUPTIONS:
                raise suggest(c, CORRUPTIONS, f"corruption in dataset {name!r}:")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        self.severity, self.seed = int(severity), int(seed)
        self.clean = DigitsSource(f"{name} (clean)", digits=digits, split=split, seed=split_seed)
        self._index = self.clean._index

    def corruption(self, i: int) -> str:
        """The corruption applied to sample ``i``."""
        return self.corruptions[check_index(self, i) % len(self.corruptions)]

    def ids(self) -> list[str]:
        k = len(self.corruptions)
        return [
            f"shifted/{self.corruptions[i % k]}-{self.severity}/{self.seed}/digits/{d}"
            for i, d in enumerate(self._index)
        ]

    def labels(self) -> np.ndarray:
        return self.clean.labels()

    def pixels(self, i: int) -> np.ndarray:
        """Sample ``i`` as an (8, 8) uint8 array (ink bright on black, like the clean digits)."""
        name = self.corruption(i)
        index = int(self._index[i])
        rng = np.random.default_rng([self.seed, _CODE[name], index])
        image = digits_data()[0][index].astype(np.float64)
        out = CORRUPTIONS[name](image, self.severity, rng)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.pixels(i)).convert("RGB")

    def params(self) -> dict[str, Any]:
        return {
            "corruptions": self.corruptions,
            "severity": self.severity,
            "seed": self.seed,
            "digits": self.clean.digits,
            "split": self.clean.split,
            "split_seed": self.clean.seed,
        }


def from_spec(
    spec: SpecReader, data_root: str | Path | None = None, download: bool = False
) -> ShiftedDigitsSource:
    """Build a `ShiftedDigitsSource` from a validated benchmarks.yaml entry (no data root)."""
    corruptions = spec.string_list("corruptions")
    for c in corruptions or ():
        if c not in CORRUPTIONS:
            raise suggest(c, CORRUPTIONS, f"corruption in dataset {spec.name!r}:")
    severity = spec.integer("severity", 3, minimum=1)
    if severity not in SEVERITIES:
        raise spec.bad("severity", "an integer from 1 (mild) to 5 (strong)")
    digits = read_digits(spec)
    return ShiftedDigitsSource(
        spec.name,
        corruptions=corruptions,
        severity=severity,
        seed=spec.integer("seed", 0),
        digits=digits,
        split=spec.choice("split", SPLITS, "test"),
        split_seed=spec.integer("split_seed", 0),
    )
