"""Procedural far-OoD sources: textures and noise, generated from (seed, index), no files.

Sample i is drawn from its own generator `np.random.default_rng([seed, i])`, so `load(i)`
gives the same image whatever was loaded before, in any process. All labels are -1.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from oodbench.data.base import OOD_LABEL, Source, check_index
from oodbench.data.spec import SpecReader
from oodbench.errors import suggest

TEXTURE_KEYS = {"required": (), "optional": ("n", "seed", "size", "families")}
NOISE_KEYS = {"required": (), "optional": ("n", "seed", "size", "kind")}
NOISE_KINDS = ("uniform", "gaussian")

Texture = Callable[[np.random.Generator, int], np.ndarray]  # -> (size, size, 3) floats in [0, 1]


def _coords(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two (size, size) pixel-coordinate grids along a random direction and its normal."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cos, sin = np.cos(theta := rng.uniform(0, np.pi)), np.sin(theta)
    return x * cos + y * sin, y * cos - x * sin


def _blend(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mix two random colours with a (size, size) weight in [0, 1]."""
    a, b = rng.random((2, 3))
    return weight[..., None] * a + (1 - weight[..., None]) * b


def grating(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sinusoidal grating: random orientation, 1..size/4 cycles per image, phase, colours."""
    cycles = rng.uniform(1, max(size / 4, 1.5))
    phase = rng.uniform(0, 2 * np.pi)
    return _blend(
        0.5 + 0.5 * np.sin(2 * np.pi * cycles * _coords(size, rng)[0] / size + phase), rng
    )


def checkerboard(rng: np.random.Generator, size: int) -> np.ndarray:
    """Checkerboard of random cell size (2..size/2 px), rotation and two colours."""
    cell = rng.uniform(2, max(size / 2, 3))
    u, v = _coords(size, rng)
    return _blend((np.floor(u / cell) + np.floor(v / cell)) % 2, rng)


def stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Hard-edged stripes of 2..4 random colours, random width and direction."""
    colours = rng.random((rng.integers(2, 5), 3))
    width = rng.uniform(1, max(size / 4, 2))
    band = np.floor((_coords(size, rng)[0] + rng.uniform(0, size)) / width).astype(int)
    return colours[band % len(colours)]


def smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour noise: a random 2..6 px grid upsampled bicubically."""
    cells = int(rng.integers(2, 7))
    coarse = Image.fromarray((rng.random((cells, cells, 3)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC)) / 255.0


def blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """3..8 soft Gaussian blobs of random colour, position and width on a plain background."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.broadcast_to(rng.random(3), (size, size, 3)).copy()
    for _ in range(rng.integers(3, 9)):
        cx, cy = rng.uniform(0, size, 2)
        sigma = rng.uniform(size / 16, size / 4)
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))[..., None]
        image = image * (1 - weight) + rng.random(3) * weight
    return image


TEXTURE_FAMILIES: dict[str, Texture] = {
    f.__name__: f for f in (grating, checkerboard, stripes, smooth_noise, blobs)
}


def _to_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values * 255), 0, 255).astype(np.uint8))


class _GeneratedSource(Source):
    """n generated RGB images of size x size, all labelled -1, ids `<prefix>/<i>`."""

    prefix = ""

    def __init__(self, name: str, n: int, seed: int, size: int) -> None:
        super().__init__(name)
        self.n, self.seed, self.size = n, seed, size

    def ids(self) -> list[str]:
        return [f"{self.prefix}/{i}" for i in range(self.n)]

    def labels(self) -> np.ndarray:
        return np.full(self.n, OOD_LABEL, dtype=np.int64)

    def load(self, i: int) -> Image.Image:
        i = check_index(self, i)
        return self._generate(np.random.default_rng([self.seed, i]), i)

    @abstractmethod
    def _generate(self, rng: np.random.Generator, i: int) -> Image.Image:
        """Sample i, drawn from its own generator `rng`."""

    def params(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "size": self.size}


class TexturesSource(_GeneratedSource):
    """Procedural textures; sample i is of family `families[i % len(families)]`.

    Args:
        name: dataset name.
        n: number of images.
        seed: seed of the whole set.
        size: side in pixels.
        families: names from `TEXTURE_FAMILIES` (default: all, in their listed order).
    """

    kind = prefix = "textures"

    def __init__(
        self,
        name: str,
        n: int = 500,
        seed: int = 0,
        size: int = 32,
        families: list[str] | None = None,
    ) -> None:
        super().__init__(name, n, seed, size)
        self.families = list(TEXTURE_FAMILIES) if families is None else list(families)

    def _generate(self, rng: np.random.Generator, i: int) -> Image.Image:
        family = TEXTURE_FAMILIES[self.families[i % len(self.families)]]
        return _to_image(family(rng, self.size))

    def params(self) -> dict[str, Any]:
        return {**super().params(), "families": self.families}


class NoiseSource(_GeneratedSource):
    """RGB noise: "uniform" (every byte uniform in 0..255) or "gaussian" (mean 127.5, std 64,
    clipped), one independent draw per pixel and channel."""

    kind = prefix = "noise"

    def __init__(
        self, name: str, n: int = 500, seed: int = 0, size: int = 32, distribution: str = "uniform"
    ) -> None:
        super().__init__(name, n, seed, size)
        self.distribution = distribution

    def _generate(self, rng: np.random.Generator, i: int) -> Image.Image:
        shape = (self.size, self.size, 3)
        if self.distribution == "uniform":
            return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        return _to_image(rng.normal(0.5, 0.25, shape))

    def params(self) -> dict[str, Any]:
        return {**super().params(), "distribution": self.distribution}


def _common(spec: SpecReader) -> dict[str, int]:
    return {
        "n": spec.integer("n", 500, minimum=1),
        "seed": spec.integer("seed", 0),
        "size": spec.integer("size", 32, minimum=4),
    }


def textures_from_spec(
    spec: SpecReader, data_root: str | Path | None = None, download: bool = False
) -> TexturesSource:
    """Build a `TexturesSource` from a validated benchmarks.yaml entry."""
    families = spec.string_list("families")
    for family in families or ():
        if family not in TEXTURE_FAMILIES:
            raise suggest(family, TEXTURE_FAMILIES, f"texture family in dataset {spec.name!r}:")
    return TexturesSource(spec.name, families=families, **_common(spec))


def noise_from_spec(
    spec: SpecReader, data_root: str | Path | None = None, download: bool = False
) -> NoiseSource:
    """Build a `NoiseSource` from a validated benchmarks.yaml entry."""
    kind = spec.choice("kind", NOISE_KINDS, "uniform")
    return NoiseSource(spec.name, distribution=kind, **_common(spec))
