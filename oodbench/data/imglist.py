"""OpenOOD-style image lists: one `relative/path label` per line, under a data root."""

from __future__ import annotations

import hashlib
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from oodbench.data.base import OOD_LABEL, Source, check_index
from oodbench.data.images import load_image
from oodbench.data.spec import SpecReader, existing_data_dir
from oodbench.errors import OodbenchError

KEYS = {"required": ("list",), "optional": ("root", "ood", "url")}


def read_image_list(path: str | Path, dataset: str = "") -> tuple[list[str], np.ndarray]:
    """Parse an image list into (relative paths, (N,) int64 labels), in file order.

    The label is the last whitespace-separated token of a line (paths may contain spaces)
    and must be an integer >= -1; -1 marks OoD. Blank lines and `#` comments are skipped.

    Raises:
        OodbenchError: the file is missing or empty, or a line is malformed (names file:line).
    """
    paths, labels, _ = _read_numbered(path, dataset)
    return paths, labels


def _read_numbered(path: str | Path, dataset: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """:func:`read_image_list` plus the (N,) 1-based line number of each sample."""
    paths: list[str] = []
    labels: list[int] = []
    numbers: list[int] = []
    try:
        with open(path, encoding="utf-8-sig") as lines:
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    path_part, label = _parse_line(line, f"{path}:{number}", dataset)
                    paths.append(path_part)
                    labels.append(label)
                    numbers.append(number)
    except FileNotFoundError:
        raise OodbenchError(f"Image list {path} for dataset {dataset!r} does not exist.") from None
    except IsADirectoryError:
        raise OodbenchError(f"Image list {path} for dataset {dataset!r} is a directory: give the list file.") from None
    except UnicodeDecodeError as exc:
        raise OodbenchError(
            f"Image list {path} for dataset {dataset!r} is not UTF-8 text (byte {exc.start}): give a text file "
            "of 'relative/path label' lines."
        ) from None
    if not paths:
        raise OodbenchError(f"Image list {path} for dataset {dataset!r} lists no images.")
    return paths, np.asarray(labels, dtype=np.int64), np.asarray(numbers, dtype=np.int64)


def _parse_line(line: str, where: str, dataset: str) -> tuple[str, int]:
    parts = line.rsplit(maxsplit=1)
    try:
        label = int(parts[1]) if len(parts) == 2 else None
    except ValueError:
        label = None
    if label is None or label < OOD_LABEL:
        raise OodbenchError(
            f"{where}: bad line in the image list of dataset {dataset!r}: expected "
            f"'relative/path label' with an integer label >= -1, got {line!r}."
        )
    return parts[0], label


class ImageListSource(Source):
    """Images named by an OpenOOD-style list, read from `root / relative_path`.

    Args:
        name: dataset name.
        list_path: the list file.
        root: the directory the listed paths are relative to. Not scanned: a missing file
            shows up as `UnreadableImage` when it is loaded.
        ood: label every sample -1 whatever the list says.

    Ids are the relative paths exactly as written in the list.
    """

    kind = "imglist"

    def __init__(
        self, name: str, list_path: str | Path, root: str | Path, ood: bool = False
    ) -> None:
        super().__init__(name)
        self.list_path, self.root, self.ood = Path(list_path), Path(root), ood
        self._paths, self._labels, self._lines = _read_numbered(self.list_path, name)
        if ood:
            self._labels[:] = OOD_LABEL

    def ids(self) -> list[str]:
        return self._paths

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def load(self, i: int) -> Image.Image:
        return load_image(self.file(i))

    def fingerprint(self) -> str:
        """:meth:`Source.fingerprint`, computed ~4x faster for long lists (same digest, tested):
        each line ``json.dumps([id, label])`` is built with json's own C string encoder and
        hashed in blocks. ImageNet's 1.28M-line train list: 2.3 s instead of 10.5 s on a loaded
        2-core VM (the list's parsing adds 5.7 s); no image is read."""
        digest = hashlib.sha256()
        ids, labels, step = self.ids(), self._labels.tolist(), 65536
        for s in range(0, len(ids), step):
            block = zip(ids[s : s + step], labels[s : s + step], strict=True)
            digest.update("".join(f"[{encode_basestring_ascii(i)}, {int(lab)}]\n" for i, lab in block).encode())
        return digest.hexdigest()

    def where(self, i: int) -> str:
        """``list:line`` of sample ``i`` (for messages)."""
        return f"{self.list_path}:{self._lines[check_index(self, i)]}"

    def file(self, i: int) -> Path:
        return self.root / self._paths[check_index(self, i)]

    def params(self) -> dict[str, Any]:
        return {"list": str(self.list_path), "root": str(self.root), "ood": self.ood}


def from_spec(
    spec: SpecReader, data_root: str | Path | None = None, download: bool = False
) -> ImageListSource:
    """Build an `ImageListSource`: `list` is relative to the benchmarks.yaml's directory
    (`_base_dir`) or the current directory; `root` is relative to the data root."""
    list_path = spec.path("list", data_root, base=spec.get("_base_dir"))
    root = existing_data_dir(spec, data_root)
    return ImageListSource(spec.name, list_path, root, ood=spec.boolean("ood"))
