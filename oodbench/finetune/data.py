"""Training data for the recipes: a benchmark's ID splits as tensors through the model's preprocess.

Small splits (the digits world, few-shot sets) are preprocessed once and kept in memory; larger
ones are read and preprocessed per batch (``max_in_memory``). Batches are drawn with a seeded
``torch.Generator`` whose state is saved in the resume checkpoint, so an interrupted run that
resumes draws exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..console import warn

MAX_IN_MEMORY = 50_000


@dataclass
class ImageSet:
    """One labelled split: ``batch(idx)`` gives (images, labels) tensors."""

    name: str
    labels: torch.Tensor  # (N,) int64
    source: object = None
    preprocess: object = None
    images: torch.Tensor | None = None  # (N, 3, H, W) when held in memory
    rows: list[int] = field(default_factory=list)  # source index of each row (unreadable ones dropped)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.images is not None:
            return self.images[idx], self.labels[idx]
        x = torch.stack([self.preprocess(self.source.load(self.rows[int(i)])) for i in idx])
        return x, self.labels[idx]

    def all(self, batch_size: int = 512):
        """Iterate over the split in order, in batches of (images, labels)."""
        for s in range(0, len(self), batch_size):
            yield self.batch(torch.arange(s, min(s + batch_size, len(self))))


_CACHE: dict[tuple, ImageSet] = {}
_CACHE_SIZE = 8


def load_split(catalogue, dataset: str, preprocess, data_root=None, download: bool = False,
               max_in_memory: int = MAX_IN_MEMORY) -> ImageSet:
    """The labelled images of ``dataset`` (a catalogue entry) through ``preprocess``.

    In-memory splits are cached per process (keyed by the catalogue entry, the data root and
    the preprocess' repr), so the recipes of one study preprocess each split once.
    """
    key = (json.dumps(catalogue.dataset_spec(dataset, data_root), sort_keys=True, default=str), repr(preprocess),
           max_in_memory)
    if key in _CACHE:
        return _CACHE[key]
    out = _load_split(catalogue, dataset, preprocess, data_root, download, max_in_memory)
    if out.images is not None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = out
    return out


def _load_split(catalogue, dataset, preprocess, data_root, download, max_in_memory) -> ImageSet:
    from ..data import UnreadableImage

    src = catalogue.source(dataset, data_root, download)
    labels = torch.as_tensor(src.labels(), dtype=torch.long)
    if len(src) > max_in_memory:
        return ImageSet(dataset, labels, src, preprocess, None, list(range(len(src))))
    images, rows = [], []
    for i in range(len(src)):
        try:
            images.append(preprocess(src.load(i)))
            rows.append(i)
        except UnreadableImage:
            continue
    if len(rows) < len(src):
        warn(f"{dataset}: skipped {len(src) - len(rows)} unreadable image(s) for training.")
    return ImageSet(dataset, labels[rows], src, preprocess, torch.stack(images), rows)


class BatchSampler:
    """Seeded uniform batches (with replacement), like ``train_tiny``; its state resumes."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        return torch.randint(0, self.n, (self.batch_size,), generator=self.gen)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


def random_shift(x: torch.Tensor, max_px: int, gen: torch.Generator) -> torch.Tensor:
    """Random integer translation of each image by up to ±max_px pixels (border = the image minimum)."""
    if max_px <= 0:
        return x
    n, c, h, w = x.shape
    pad = F.pad(x, (max_px,) * 4, value=float(x.min()))
    dx = torch.randint(0, 2 * max_px + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_px + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, c, h, w + 2 * max_px)
    out = pad.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, c, h, w)
    return out.gather(3, cols)
