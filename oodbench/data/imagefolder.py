"""Image folders: `root/<class>/**/<image>`, one sub-directory per class."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from oodbench.data.base import OOD_LABEL, Source, check_index
from oodbench.data.images import IMG_EXTENSIONS, load_image
from oodbench.data.spec import SpecReader, existing_data_dir
from oodbench.errors import OodbenchError

KEYS = {"required": (), "optional": ("root", "classes", "ood", "url")}


def list_images(directory: Path) -> list[Path]:
    """Image files (by extension, case-insensitive) under `directory`, recursively, sorted;
    hidden files and directories (names starting with ".") are skipped."""
    found = []
    for folder, subfolders, files in os.walk(directory, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [
            Path(folder, f)
            for f in sorted(files)
            if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS)
        ]
    return found


class ImageFolderSource(Source):
    """Images in class sub-directories of `root`, scanned once at construction.

    Args:
        name: dataset name.
        root: the directory holding one sub-directory per class.
        classes: class directory names in label order (default: all non-hidden
            sub-directories, sorted alphabetically); label = position in this list.
        ood: label every sample -1.

    Ids are POSIX paths relative to `root`, e.g. `cat/0001.jpg`.
    """

    kind = "imagefolder"

    def __init__(
        self, name: str, root: str | Path, classes: list[str] | None = None, ood: bool = False
    ) -> None:
        super().__init__(name)
        self.root, self.ood = Path(root), ood
        self.classes = sorted(_class_dirs(self.root)) if classes is None else list(classes)
        missing = [c for c in self.classes if not (self.root / c).is_dir()]
        if missing:
            raise OodbenchError(f"Dataset {name!r}: no class folder {missing[0]!r} in {self.root}.")
        self._paths, labels = [], []
        for label, cls in enumerate(self.classes):
            files = list_images(self.root / cls)
            self._paths += [f.relative_to(self.root).as_posix() for f in files]
            labels += [OOD_LABEL if ood else label] * len(files)
        if not self._paths:
            raise OodbenchError(f"Dataset {name!r}: no images in the class folders of {self.root}.")
        self._labels = np.asarray(labels, dtype=np.int64)

    def ids(self) -> list[str]:
        return self._paths

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def load(self, i: int) -> Image.Image:
        return load_image(self.file(i))

    def file(self, i: int) -> Path:
        return self.root / self._paths[check_index(self, i)]

    def params(self) -> dict[str, Any]:
        return {"root": str(self.root), "classes": self.classes, "ood": self.ood}


def _class_dirs(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def from_spec(
    spec: SpecReader, data_root: str | Path | None = None, download: bool = False
) -> ImageFolderSource:
    """Build an `ImageFolderSource`; `root` is relative to the data root."""
    root = existing_data_dir(spec, data_root)
    return ImageFolderSource(
        spec.name, root, classes=spec.string_list("classes"), ood=spec.boolean("ood")
    )
