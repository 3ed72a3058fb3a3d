"""Multi-GPU / multi-node extraction with ``torchrun``: disjoint shards, one merged file.

``torchrun --nproc_per_node 4 -m oodbench extract ...`` (or ``oodbench extract`` under any
launcher that sets RANK / WORLD_SIZE / LOCAL_RANK): every rank extracts the contiguous shard
``[N*r/W, N*(r+1)/W)`` of each dataset into ``<name>.shard<r>-of-<W>.h5`` (resumable like any
feature file), then rank 0 concatenates the shards in rank order into ``<name>.h5``: the
result is identical to a single-process extract, with no duplicated or missing samples.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch.distributed as dist

from .data.base import Source
from .store import STR, FeatureFile, _attr, now


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str) -> str:
    """Join the process group announced by torchrun's environment; returns this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return device
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


def shard_path(path: Path, rank: int, world: int) -> Path:
    return path.with_name(f"{path.stem}.shard{rank}-of-{world}{path.suffix}")


class ShardSource(Source):
    """A contiguous slice of another source (same ids, labels and images)."""

    def __init__(self, source: Source, start: int, stop: int):
        super().__init__(f"{source.name}[{start}:{stop}]")
        self.kind = source.kind
        self.source, self.start, self.stop = source, start, stop
        self._ids = source.ids()[start:stop]
        self._labels = source.labels()[start:stop]

    def ids(self) -> list[str]:
        return self._ids

    def labels(self) -> np.ndarray:
        return self._labels

    def load(self, i: int):
        return self.source.load(self.start + i)

    def params(self) -> dict[str, Any]:
        return {"shard_of": self.source.describe(), "start": self.start, "stop": self.stop}


def shard_source(source: Source, rank: int, world: int) -> ShardSource:
    return ShardSource(source, *bounds(len(source), rank, world))


def merge_shards(shards: list[Path], out: Path, attrs: dict[str, Any]) -> Path:
    """Concatenate complete shard files in order into ``out`` (written as .partial, then renamed)."""
    files = [FeatureFile(p) for p in shards]
    tmp = out.with_name(out.name + ".partial")
    names = [k for k in files[0].keys]
    with h5py.File(tmp, "w") as f:
        for name in names:
            parts = [ff.load(name) for ff in files]
            data = np.concatenate(parts) if parts[0].ndim else np.array([], dtype=object)
            if data.dtype.kind == "O":
                f.create_dataset(name, data=data.astype(object), dtype=STR, maxshape=(None,))
            else:
                f.create_dataset(name, data=data, maxshape=(None, *data.shape[1:]))
        n_rows = sum(len(ff) for ff in files)
        n_total = sum(int(ff.attrs["n_total"]) for ff in files)
        base = {k: v for k, v in files[0].attrs.items() if k not in ("shard",)}
        merged = {**base, **attrs, "n_rows": n_rows, "n_processed": n_total, "n_total": n_total,
                  "merged_from_shards": len(files), "created": now(), "complete": True}
        for k, v in merged.items():
            f.attrs[k] = _attr(v)
    os.replace(tmp, out)
    for p in shards:
        p.unlink()
        lock = p.with_name(p.name + ".lock")
        if lock.exists():
            lock.unlink()
    return out
