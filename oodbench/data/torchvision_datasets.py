"""torchvision datasets (CIFAR, SVHN, MNIST, ...), downloaded only when asked to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from oodbench.data.base import OOD_LABEL, Source, UnreadableImage, check_index
from oodbench.data.images import to_rgb
from oodbench.data.spec import SpecReader, effective_data_root
from oodbench.errors import OodbenchError, suggest
from oodbench.paths import cache_dir

KEYS = {"required": ("dataset", "split"), "optional": ("root", "ood")}


@dataclass(frozen=True)
class TorchvisionDataset:
    """How oodbench builds one torchvision dataset class.

    Attributes:
        splits: oodbench split name -> the class's keyword arguments selecting it.
        labels_attr: the attribute holding every sample's class index (read without
            decoding any image).
        extra: further constructor keyword arguments.
    """

    splits: Mapping[str, Mapping[str, Any]]
    labels_attr: str
    extra: Mapping[str, Any] = field(default_factory=dict)


_TRAIN_FLAG = {"train": {"train": True}, "test": {"train": False}}


def _named(*splits: str) -> dict[str, dict[str, str]]:
    return {split: {"split": split} for split in splits}


TORCHVISION_DATASETS: dict[str, TorchvisionDataset] = {
    "CIFAR10": TorchvisionDataset(_TRAIN_FLAG, "targets"),
    "CIFAR100": TorchvisionDataset(_TRAIN_FLAG, "targets"),
    "MNIST": TorchvisionDataset(_TRAIN_FLAG, "targets"),
    "FashionMNIST": TorchvisionDataset(_TRAIN_FLAG, "targets"),
    "KMNIST": TorchvisionDataset(_TRAIN_FLAG, "targets"),
    "SVHN": TorchvisionDataset(_named("train", "test", "extra"), "labels"),
    "STL10": TorchvisionDataset(_named("train", "test"), "labels"),
    "DTD": TorchvisionDataset(_named("train", "val", "test"), "_labels"),
    # Places365 has no public test labels: oodbench's "test" is its 36,500-image val split.
    "Places365": TorchvisionDataset(
        {"train": {"split": "train-standard"}, "test": {"split": "val"}}, "targets", {"small": True}
    ),
}


class TorchvisionSource(Source):
    """A torchvision dataset, constructed with `download=download`.

    Args:
        name: dataset name.
        dataset: a key of `TORCHVISION_DATASETS`, e.g. "CIFAR10".
        split: one of that entry's splits ("train", "test", ...).
        root: torchvision's `root` directory (default: `<oodbench cache>/torchvision`, see
            `oodbench.paths.cache_dir`).
        ood: label every sample -1 (else the dataset's own class indices).
        download: let torchvision download the data when it is not in `root`.

    Ids are `<dataset lower-case>/<split>/<index>`, e.g. `cifar10/test/17`.

    Raises:
        OodbenchError: the data is not in `root` and `download` is False, or the download failed.
    """

    kind = "torchvision"

    def __init__(
        self,
        name: str,
        dataset: str,
        split: str,
        root: str | Path | None = None,
        ood: bool = False,
        download: bool = False,
    ) -> None:
        super().__init__(name)
        self.dataset, self.split, self.ood = dataset, split, ood
        root = cache_dir() / "torchvision" if root is None else Path(root)
        self.root = root.expanduser().absolute()
        entry = TORCHVISION_DATASETS[dataset]
        self._data = self._construct(entry, download)
        targets = getattr(self._data, entry.labels_attr)
        self._labels = np.asarray(targets, dtype=np.int64).reshape(-1)
        if ood:
            self._labels[:] = OOD_LABEL

    def _construct(self, entry: TorchvisionDataset, download: bool) -> Any:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.dataset)
        kwargs = {**entry.splits[self.split], **entry.extra}
        try:
            return cls(root=str(self.root), download=download, **kwargs)
        except (RuntimeError, OSError) as error:
            if download:
                raise OodbenchError(
                    f"Could not download {self.dataset} into {self.root} for dataset "
                    f"{self.name!r} (needs internet): {error}"
                ) from error
            raise OodbenchError(
                f"{self.dataset} is not in {self.root}: rerun with --download to fetch it "
                f"(needs internet) or pass --data-root (dataset {self.name!r})."
            ) from error

    def ids(self) -> list[str]:
        return [f"{self.dataset.lower()}/{self.split}/{i}" for i in range(len(self._labels))]

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def load(self, i: int) -> Image.Image:
        i = check_index(self, i)
        try:
            image, _ = self._data[i]
        except (OSError, SyntaxError, ValueError) as error:
            raise UnreadableImage(f"Cannot read sample {i} of {self.name!r}: {error}") from error
        return to_rgb(image)

    def params(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "root": str(self.root),
            "ood": self.ood,
        }


def from_spec(
    spec: SpecReader, data_root: str | Path | None = None, download: bool = False
) -> TorchvisionSource:
    """Build a `TorchvisionSource`. `dataset` is matched case-insensitively; `root` is
    relative to the data root and defaults to it, else to the oodbench cache."""
    by_lower = {key.lower(): key for key in TORCHVISION_DATASETS}
    requested = spec.string("dataset")
    dataset = by_lower.get(requested.lower())
    if dataset is None:
        raise suggest(requested.lower(), by_lower, f"torchvision dataset for {spec.name!r}:")
    split = spec.choice("split", TORCHVISION_DATASETS[dataset].splits)
    base = effective_data_root(data_root)
    root = spec.path("root", data_root, base=base) or base
    ood = spec.boolean("ood")
    return TorchvisionSource(spec.name, dataset, split, root, ood=ood, download=download)
