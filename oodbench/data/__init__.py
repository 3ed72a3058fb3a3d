"""Dataset sources: every dataset of a benchmark is a `Source` built from its yaml entry.

    source = build_source({"source": "digits", "digits": [0, 1, 2], "split": "test"},
                          name="digits-test")
    source.ids(), source.labels()   # cheap: (N,) ids and int64 labels, -1 = OoD
    source.load(0)                  # an RGB PIL image

Kinds (the entry's `source` key) and their keys:

- digits: digits, split (train|val|test|all), seed, ood — scikit-learn's bundled digits.
- textures: n, seed, size, families — procedural far-OoD textures.
- noise: n, seed, size, kind (uniform|gaussian) — noise images.
- shifted_digits: corruptions, severity, seed, digits, split, split_seed — the clean digits
  under rotation / blur / noise / elastic distortion, ID labels (covariate shift).
- imglist: list, root, ood, url — OpenOOD-style `relative/path label` lists.
- imagefolder: root, classes, ood, url — `root/<class>/<image>` folders.
- torchvision: dataset, split, root, ood — CIFAR10/100, SVHN, MNIST, ... (download opt-in).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from oodbench.data import digits, imagefolder, imglist, shifted, synthetic, torchvision_datasets
from oodbench.data.base import Source, UnreadableImage
from oodbench.data.digits import DigitsSource
from oodbench.data.imagefolder import ImageFolderSource
from oodbench.data.images import load_image
from oodbench.data.imglist import ImageListSource, read_image_list
from oodbench.data.shifted import ShiftedDigitsSource
from oodbench.data.spec import SpecReader
from oodbench.data.synthetic import NoiseSource, TexturesSource
from oodbench.data.torchvision_datasets import TORCHVISION_DATASETS, TorchvisionSource
from oodbench.errors import OodbenchError, suggest

Builder = Callable[[SpecReader, Any, bool], Source]

_KINDS: dict[str, tuple[Builder, Mapping[str, tuple[str, ...]]]] = {
    "digits": (digits.from_spec, digits.KEYS),
    "textures": (synthetic.textures_from_spec, synthetic.TEXTURE_KEYS),
    "noise": (synthetic.noise_from_spec, synthetic.NOISE_KEYS),
    "shifted_digits": (shifted.from_spec, shifted.KEYS),
    "imglist": (imglist.from_spec, imglist.KEYS),
    "imagefolder": (imagefolder.from_spec, imagefolder.KEYS),
    "torchvision": (torchvision_datasets.from_spec, torchvision_datasets.KEYS),
}
SOURCE_KINDS: tuple[str, ...] = tuple(_KINDS)


def build_source(
    spec: Mapping[str, Any],
    *,
    name: str,
    data_root: str | Path | None = None,
    download: bool = False,
) -> Source:
    """Build the `Source` that a benchmarks.yaml dataset entry describes.

    Args:
        spec: the entry: `source` (one of `SOURCE_KINDS`) plus that kind's keys; keys
            starting with "_" are internal (`_base_dir`: directory relative `list` paths
            are resolved against).
        name: the dataset's name, used in messages and provenance.
        data_root: where file datasets live (--data-root); falls back to $OODBENCH_DATA.
        download: allow torchvision datasets to be downloaded.

    Raises:
        OodbenchError: unknown kind or key, missing key, invalid value, or missing data.
    """
    if not isinstance(spec, Mapping) or "source" not in spec:
        raise OodbenchError(
            f"Dataset {name!r} needs a 'source' key, one of: {', '.join(SOURCE_KINDS)}."
        )
    kind = spec["source"]
    if kind not in _KINDS:
        raise suggest(str(kind), SOURCE_KINDS, f"source for dataset {name!r}:")
    build, keys = _KINDS[kind]
    return build(SpecReader(spec, name, **keys), data_root, download)


__all__ = [
    "SOURCE_KINDS",
    "TORCHVISION_DATASETS",
    "DigitsSource",
    "ImageFolderSource",
    "ImageListSource",
    "NoiseSource",
    "ShiftedDigitsSource",
    "Source",
    "TexturesSource",
    "TorchvisionSource",
    "UnreadableImage",
    "build_source",
    "load_image",
    "read_image_list",
]
