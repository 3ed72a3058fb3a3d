"""Training data for the recipes: a benchmark's ID splits through the model's preprocess.

Batches are a pure function of (seed, step): step ``s`` takes positions ``s*B .. s*B+B-1`` of an
endless concatenation of per-epoch permutations (epoch ``e`` shuffled by a generator seeded
from ``sha256(seed, e)``), and the augmentation of step ``s`` draws from a generator seeded from
``(seed, s)``. So a run resumed at any step (mid-epoch included) draws exactly the batches and
augmentations of an uninterrupted run, and the two data paths give the same batches:

* in memory (small splits: the digits world, few-shot sets): preprocessed once
  (``augment='rrc'``: decoded images kept, cropped per step);
* streaming (splits over ``max_in_memory`` images): a ``torch.utils.data.DataLoader`` whose
  workers decode and preprocess (the extraction's data path), pinned memory, prefetch and
  persistent workers, fed by a batch sampler that starts at the resumed step.

Few-shot splits (``shots``): K images per class chosen by a hash of (seed, image id), the same
on every machine and every numpy/torch version (CoOp's 1/2/4/8/16-shot protocol).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..console import warn
from ..errors import OodbenchError

MAX_IN_MEMORY = 50_000
AUGMENTS = ("none", "shift", "rrc")
RRC_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default aspect-ratio range


def _seed_of(*parts: object) -> int:
    """A 63-bit seed from sha256 of the parts (machine- and version-independent)."""
    h = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def step_generator(seed: int, step: int, stream: str) -> torch.Generator:
    """The generator of one step's ``stream`` draws (augmentation, FLYP templates, Lipsum texts)."""
    return torch.Generator().manual_seed(_seed_of(seed, step, stream))


def few_shot_rows(ids: list[str], labels: np.ndarray, shots: int, seed: int) -> list[int]:
    """Row indices of ``shots`` images per class: per class, the ``shots`` rows of smallest
    ``sha256(seed, id)``; sorted. Rows with label < 0 are never drawn; every class that occurs
    must have at least ``shots`` images."""
    labels = np.asarray(labels)
    out: list[int] = []
    for c in sorted(int(c) for c in np.unique(labels) if c >= 0):
        rows = np.flatnonzero(labels == c)
        if len(rows) < shots:
            raise OodbenchError(f"--shots {shots}: class {c} has only {len(rows)} training image(s); "
                                "use fewer shots.")
        keys = sorted((hashlib.sha256(f"{seed}:{ids[r]}".encode()).digest(), int(r)) for r in rows)
        out.extend(r for _, r in keys[:shots])
    return sorted(out)


class EpochStream:
    """Batch ``step`` of an endless stream of seeded per-epoch permutations of ``range(n)``."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise OodbenchError("The training split has no images.")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perm: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm:
            if len(self._perm) > 2:
                self._perm.pop(min(self._perm))
            self._perm[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(
                _seed_of(self.seed, epoch, "epoch")))
        return self._perm[epoch]

    def batch(self, step: int) -> torch.Tensor:
        """(B,) row indices of step ``step``."""
        start = step * self.batch_size
        pos = torch.arange(start, start + self.batch_size)
        out = torch.empty(self.batch_size, dtype=torch.long)
        for e in range(start // self.n, (start + self.batch_size - 1) // self.n + 1):
            sel = (pos // self.n) == e
            out[sel] = self.perm(e)[pos[sel] % self.n]
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.n

    def state_dict(self) -> dict:
        return {"n": self.n, "batch_size": self.batch_size, "seed": self.seed}


class TrainTransform:
    """The training transform of one image: ``rrc`` = RandomResizedCrop(size, scale, ratio 3/4..4/3,
    bicubic) + horizontal flip (p 0.5) + the eval preprocess' normalisation, drawn from a generator
    seeded by (seed, step, position); else the eval preprocess."""

    def __init__(self, preprocess, augment: str, seed: int, scale: tuple[float, float] = (0.08, 1.0)) -> None:
        self.preprocess, self.augment, self.seed, self.scale = preprocess, augment, seed, tuple(scale)
        if augment == "rrc":
            ts = getattr(preprocess, "transforms", None)
            norm = [t for t in ts or [] if type(t).__name__ == "Normalize"]
            if not norm:
                raise OodbenchError("augment rrc needs a torchvision Compose preprocess ending in Normalize.")
            self.mean, self.std = tuple(norm[-1].mean), tuple(norm[-1].std)
            crops = [t for t in ts if type(t).__name__ == "CenterCrop"]
            size = crops[-1].size if crops else 224
            self.size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def rrc_params(self, w: int, h: int, gen: torch.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width) as torchvision's RandomResizedCrop.get_params, from ``gen``."""
        area = h * w
        log_r = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
        for _ in range(10):
            u = torch.rand(2, generator=gen, dtype=torch.float64)
            target = area * (self.scale[0] + float(u[0]) * (self.scale[1] - self.scale[0]))
            ratio = math.exp(log_r[0] + float(u[1]) * (log_r[1] - log_r[0]))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                i = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
                j = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
                return i, j, ch, cw
        in_ratio = w / h
        if in_ratio < RRC_RATIO[0]:
            cw, ch = w, int(round(w / RRC_RATIO[0]))
        elif in_ratio > RRC_RATIO[1]:
            ch, cw = h, int(round(h * RRC_RATIO[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img, step: int, pos: int) -> torch.Tensor:
        if self.augment != "rrc":
            return self.preprocess(img)
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        gen = step_generator(self.seed, step, f"rrc{pos}")
        img = img.convert("RGB")
        i, j, ch, cw = self.rrc_params(img.width, img.height, gen)
        img = TF.resized_crop(img, i, j, ch, cw, [self.size, self.size], InterpolationMode.BICUBIC, antialias=True)
        if float(torch.rand(1, generator=gen)) < 0.5:
            img = TF.hflip(img)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)


@dataclass
class ImageSet:
    """One labelled split: ``batch(idx)`` gives (images, labels) tensors through the eval preprocess."""

    name: str
    labels: torch.Tensor  # (N,) int64
    source: object = None
    preprocess: object = None
    images: torch.Tensor | None = None  # (N, 3, H, W) when held in memory
    rows: list[int] = field(default_factory=list)  # source index of each row (unreadable ones dropped)
    raw: list | None = None  # decoded images (augment rrc, in memory)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def streaming(self) -> bool:
        return self.images is None and self.raw is None

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.images is not None:
            return self.images[idx], self.labels[idx]
        x = torch.stack([self.preprocess(self._image(int(i))) for i in idx])
        return x, self.labels[idx]

    def _image(self, i: int):
        return self.raw[i] if self.raw is not None else self.source.load(self.rows[i])

    def all(self, batch_size: int = 512, workers: int = 0):
        """Iterate over the split in order, in batches of (images, labels); a streaming split
        through a DataLoader with ``workers`` decoding processes."""
        if not self.streaming or workers <= 0:
            for s in range(0, len(self), batch_size):
                yield self.batch(torch.arange(s, min(s + batch_size, len(self))))
            return
        ds = _Items(self, None)
        keys = [[(0, j, j) for j in range(s, min(s + batch_size, len(self)))] for s in range(0, len(self), batch_size)]
        for x, y, ok in torch.utils.data.DataLoader(ds, batch_sampler=keys, num_workers=workers, collate_fn=_collate):
            yield x[ok], y[ok]


class _Items(torch.utils.data.Dataset):
    """Key (step, position, row) -> (image tensor, label, readable) through ``transform``."""

    def __init__(self, data: ImageSet, transform: TrainTransform | None) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        from ..data import UnreadableImage

        step, pos, i = key
        try:
            img = self.data._image(i)
            x = self.transform(img, step, pos) if self.transform is not None else self.data.preprocess(img)
            return x, int(self.data.labels[i]), True
        except UnreadableImage:
            return None, int(self.data.labels[i]), False


def _collate(items):
    good = next((x for x, _, ok in items if ok), None)
    if good is None:
        raise OodbenchError("A whole batch of training images is unreadable: check the data set's files.")
    xs = torch.stack([x if ok else torch.zeros_like(good) for x, _, ok in items])
    return xs, torch.tensor([y for _, y, _ in items]), torch.tensor([ok for _, _, ok in items])


class _StepBatches(torch.utils.data.Sampler):
    """Keys of the batches of steps ``start .. end-1`` (the DataLoader's batch sampler)."""

    def __init__(self, stream: EpochStream, start: int, end: int, part: slice = slice(None)) -> None:
        self.stream, self.start, self.end, self.part = stream, start, end, part

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        for s in range(self.start, self.end):
            idx = self.stream.batch(s)
            yield [(s, j, int(idx[j])) for j in range(len(idx))[self.part]]


def rank_part(batch_size: int, rank: int, world: int) -> slice:
    """This rank's positions of a global batch (contiguous, equal: batch_size % world == 0)."""
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def train_batches(data: ImageSet, stream: EpochStream, transform: TrainTransform, start: int, end: int,
                  workers: int = 2, pin_memory: bool = False, part: slice = slice(None)):
    """(step, images, labels) of steps ``start .. end-1`` (only positions ``part`` of each global
    batch: one rank's share under torchrun): in memory, or through a DataLoader for a streaming
    split. Unreadable images are dropped."""
    if data.images is not None and transform.augment != "rrc":
        for s in range(start, end):
            x, y = data.batch(stream.batch(s)[part])
            yield s, x, y
        return
    if not data.streaming:  # rrc in memory: the same transform in this process
        for s in range(start, end):
            idx = stream.batch(s)
            pos = range(len(idx))[part]
            x = torch.stack([transform(data.raw[int(idx[j])], s, j) for j in pos])
            yield s, x, data.labels[idx[part]]
        return
    extra = {"prefetch_factor": 4, "persistent_workers": True} if workers > 0 else {}
    loader = torch.utils.data.DataLoader(_Items(data, transform), batch_sampler=_StepBatches(stream, start, end, part),
                                         num_workers=workers, pin_memory=pin_memory, collate_fn=_collate, **extra)
    dropped = 0
    for s, (x, y, ok) in zip(range(start, end), loader, strict=True):
        if not bool(ok.all()):
            dropped += int((~ok).sum())
            x, y = x[ok], y[ok]
        yield s, x, y
    if dropped:
        warn(f"{data.name}: dropped {dropped} unreadable training image(s) from their batches.")


_CACHE: dict[tuple, ImageSet] = {}
_CACHE_SIZE = 8


def load_split(catalogue, dataset: str, preprocess, data_root=None, download: bool = False,
               max_in_memory: int = MAX_IN_MEMORY, shots: int | None = None, seed: int = 0,
               keep_raw: bool = False) -> ImageSet:
    """The labelled images of ``dataset`` (a catalogue entry) through ``preprocess``; ``shots``:
    only a few-shot draw of it (:func:`few_shot_rows`); ``keep_raw``: keep decoded images (rrc).

    In-memory splits are cached per process (keyed by the catalogue entry, the data root, the
    preprocess' repr and the draw), so the recipes of one study preprocess each split once.
    """
    key = (json.dumps(catalogue.dataset_spec(dataset, data_root), sort_keys=True, default=str), repr(preprocess),
           max_in_memory, shots, seed if shots else None, keep_raw)
    if key in _CACHE:
        return _CACHE[key]
    out = _load_split(catalogue, dataset, preprocess, data_root, download, max_in_memory, shots, seed, keep_raw)
    if not out.streaming:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = out
    return out


def _load_split(catalogue, dataset, preprocess, data_root, download, max_in_memory, shots, seed,
                keep_raw) -> ImageSet:
    from ..data import UnreadableImage

    src = catalogue.source(dataset, data_root, download)
    all_labels = np.asarray(src.labels())
    rows = few_shot_rows(src.ids(), all_labels, int(shots), seed) if shots else list(range(len(src)))
    labels = torch.as_tensor(all_labels[rows], dtype=torch.long)
    if len(rows) > max_in_memory:
        return ImageSet(dataset, labels, src, preprocess, None, rows)
    images, raw, kept = [], [], []
    for k, i in enumerate(rows):
        try:
            img = src.load(i)
            if keep_raw:
                raw.append(img)
            else:
                images.append(preprocess(img))
            kept.append(k)
        except UnreadableImage:
            continue
    if len(kept) < len(rows):
        warn(f"{dataset}: skipped {len(rows) - len(kept)} unreadable image(s) for training.")
    if not kept:
        raise OodbenchError(f"{dataset}: no readable image.")
    return ImageSet(dataset, labels[kept], src, preprocess, None if keep_raw else torch.stack(images),
                    [rows[k] for k in kept], raw if keep_raw else None)


def random_shift(x: torch.Tensor, max_px: int, gen: torch.Generator, part: slice = slice(None),
                 total: int | None = None, fill: float | None = None) -> torch.Tensor:
    """Random integer translation of each image by up to ±max_px pixels (border ``fill``, default
    the batch minimum). ``x`` may be positions ``part`` of a global batch of ``total`` images: the
    shifts are drawn for all ``total`` and sliced, so every rank shifts its images as one process would."""
    if max_px <= 0:
        return x
    n, c, h, w = x.shape
    total = n if total is None else total
    pad = F.pad(x, (max_px,) * 4, value=float(x.min()) if fill is None else fill)
    dx = torch.randint(0, 2 * max_px + 1, (total,), generator=gen)[part]
    dy = torch.randint(0, 2 * max_px + 1, (total,), generator=gen)[part]
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, c, h, w + 2 * max_px)
    out = pad.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, c, h, w)
    return out.gather(3, cols)
