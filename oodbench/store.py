"""The feature store: the HDF5 contract between ``extract`` (writes) and ``score`` (reads).

Layout under a store root (see the README for every field)::

    <root>/<model_key>/model.h5              per model: visual projection, ln_post, logit scale, heads
    <root>/<model_key>/text/<bank>.h5        text banks: per-template embeddings of a name list
    <root>/<model_key>/features/<dataset>.h5 one file per dataset split: image_embeds, penultimate, ...
    <root>/<model_key>/scores/<benchmark>.h5 per-sample scores of each method (read by reports)
    <root>/last_run.json                     what the last ``run``/``score`` wrote (default for ``report``)

Files are written under a temporary name (``<name>.partial`` for the resumable feature files,
a hidden per-process ``.<name>.<pid>-<random>.partial`` for the others) and renamed when
complete, so a file with the final name is always complete (and carries ``complete=True``).
Writers of a feature file and read-merge-writes of a scores file hold ``<name>.lock``
(:func:`exclusive`), removed again on release.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import __version__
from .errors import OodbenchError
from .fsutil import atomic_path, atomic_write

FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)
STR = h5py.string_dtype("utf-8")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _attr(v: Any) -> Any:
    """HDF5-friendly attribute value: dicts/lists/None become JSON text."""
    if v is None or isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    if isinstance(v, str):
        return str(v)  # plain str: subclasses such as torch's TorchVersion confuse h5py
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    out = {}
    for k, v in obj.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str) and v[:1] in "[{n" and v not in ("",):
            with contextlib.suppress(ValueError):
                v = json.loads(v)
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def check_version(path: Path, attrs: Mapping[str, Any]) -> None:
    v = attrs.get("format_version")
    if v not in READABLE_VERSIONS:
        raise OodbenchError(
            f"{path} has store format version {v!r}; this oodbench ({__version__}) reads {READABLE_VERSIONS}: "
            "re-extract it or use a matching oodbench."
        )


def _redo_hint(path: Path) -> str:
    """What to do about a damaged store file, from where it lives in the store."""
    if path.parent.name == "scores":
        return "delete it and rerun `oodbench score`"
    if path.parent.name in ("features", "text") or path.name == "model.h5":
        return "delete it and rerun `oodbench extract`"
    return "pass a file written by oodbench (extract/score), or delete it and write it again"


def unreadable(path: Path, error: BaseException | str, fix: str | None = None) -> OodbenchError:
    """The one-line error for an HDF5 file that cannot be read (empty, truncated, not HDF5)."""
    reason = str(error).strip()
    inner = re.findall(r"\(([^()]*)\)", reason)  # h5py: "Unable to ... (file signature not found)"
    reason = inner[-1] if inner else reason.splitlines()[0] if reason else type(error).__name__
    return OodbenchError(
        f"{path} is not a readable HDF5 file ({reason}): it is empty, truncated or damaged; "
        f"{fix or _redo_hint(Path(path))}."
    )


@contextlib.contextmanager
def open_h5(path: str | Path, mode: str = "r", fix: str | None = None) -> Iterator[h5py.File]:
    """``h5py.File(path, mode)`` whose read failures become one OodbenchError naming the file.

    Failures to open (not HDF5, empty, truncated) and failures while reading inside the block
    (a damaged dataset, a missing member) are reported with ``fix`` (default: what to rerun,
    from where the file lives in the store).
    """
    path = Path(path)
    if path.is_dir():
        raise OodbenchError(f"{path} is a directory, not an HDF5 file: {fix or _redo_hint(path)}.")
    try:
        f = h5py.File(path, mode)
    except (OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError) or not path.exists():
            raise OodbenchError(f"{path} does not exist: {fix or _redo_hint(path)}.") from None
        raise unreadable(path, exc, fix) from None
    try:
        with f:
            yield f
    except (OSError, KeyError) as exc:
        raise unreadable(path, exc, fix) from None


@contextlib.contextmanager
def exclusive(path: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` for the ``with`` block.

    ``wait``: seconds to wait for another holder (0: refuse at once). The lock file is removed
    on release, while still locked, so no empty ``.lock`` file stays behind; a process that
    locked the file just before it was removed sees that it no longer is the file at that
    name and tries again, so two processes never both hold the lock.

    Raises:
        OodbenchError: another process holds the lock (after ``wait`` seconds).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + wait
    while True:
        fh = open(lock_path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            if time.monotonic() >= deadline:
                waited = f" (waited {wait:.0f} s)" if wait else ""
                raise OodbenchError(
                    f"Another oodbench process is writing {path}{waited}: wait for it to finish, then rerun."
                ) from None
            time.sleep(0.05)
            continue
        if _same_file(fh, lock_path):
            break
        fh.close()  # we locked a lock file its holder has just removed: take the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _same_file(fh, path: Path) -> bool:
    try:
        a, b = os.fstat(fh.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Store:
    """Paths and listings of a store root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise OodbenchError(
                f"Store {self.root} is a file, not a directory: pass --store DIR (a new or existing store directory)."
            )

    def model_dir(self, key: str) -> Path:
        return self.root / key

    def model_path(self, key: str) -> Path:
        return self.root / key / "model.h5"

    def text_path(self, key: str, bank: str) -> Path:
        return self.root / key / "text" / f"{bank}.h5"

    def features_path(self, key: str, dataset: str) -> Path:
        return self.root / key / "features" / f"{dataset}.h5"

    def scores_path(self, key: str, benchmark: str) -> Path:
        return self.root / key / "scores" / f"{benchmark}.h5"

    def model_keys(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/model.h5"))

    def last_run_path(self) -> Path:
        return self.root / "last_run.json"

    def write_last_run(self, payload: dict) -> None:
        """Record the last run; its ``scores`` paths are kept relative to the store root (absolute
        when outside it), so ``report --store ROOT`` finds them from any directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        payload = dict(payload)
        if "scores" in payload:
            payload["scores"] = [self._relative(p) for p in payload["scores"]]
        write_json_atomic(self.last_run_path(), payload)

    def read_last_run(self) -> dict:
        """The last run, with ``scores`` as paths usable from the current directory."""
        p = self.last_run_path()
        if not p.exists():
            raise OodbenchError(
                f"No run recorded in {self.root}: run `oodbench run` or `oodbench score` first, or pass score files."
            )
        try:
            payload = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OodbenchError(
                f"{p} is not valid JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0][:80]}): delete it "
                "and rerun `oodbench score`, or pass score files to `oodbench report`."
            ) from None
        scores = payload.get("scores") if isinstance(payload, dict) else None
        if not (isinstance(scores, list) and scores and all(isinstance(s, str) for s in scores)):
            raise OodbenchError(
                f"{p} does not hold a 'scores' list of score files: delete it and rerun `oodbench score`, "
                "or pass score files to `oodbench report`."
            )
        payload["scores"] = [str(self._resolve(s)) for s in scores]
        return payload

    def _relative(self, path: str | Path) -> str:
        p, root = Path(path).absolute(), self.root.absolute()
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)

    def _resolve(self, recorded: str) -> Path:
        p = Path(recorded)
        if p.is_absolute():
            return p
        under_root = self.root / p
        # stores written before paths were root-relative recorded them relative to the cwd of `score`
        return under_root if under_root.exists() or not p.exists() else p


def write_json_atomic(path: Path, payload: Any) -> None:
    atomic_write(path, json.dumps(payload, indent=2, default=str))


# --- small whole-file writes (model.h5, text banks, scores) --------------------------------


def write_h5_atomic(path: Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any],
                    group_attrs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Write a small HDF5 file in one go under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".partial") as tmp, h5py.File(tmp, "w") as f:
        for k, v in arrays.items():
            v = np.asarray(v)
            if v.dtype.kind in "OUS":
                f.create_dataset(k, data=v.astype(object), dtype=STR)
            else:
                f.create_dataset(k, data=v)
        for g, ga in (group_attrs or {}).items():
            grp = f.require_group(g)
            for k, v in ga.items():
                grp.attrs[k] = _attr(v)
        base = {"format_version": FORMAT_VERSION, "oodbench_version": __version__, "created": now()}
        for k, v in {**base, **attrs, "complete": True}.items():
            f.attrs[k] = _attr(v)


def read_h5(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a small complete HDF5 file fully: (arrays by path, root attributes)."""
    if not path.exists():
        raise OodbenchError(f"{path} does not exist: run `oodbench extract` for this model first.")
    arrays: dict[str, np.ndarray] = {}
    with open_h5(path) as f:
        attrs = read_attrs(f)
        check_version(path, attrs)

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                arr = obj[()]
                if obj.dtype.kind == "O":
                    arr = np.array([x.decode() if isinstance(x, bytes) else x for x in np.ravel(arr)], dtype=object)
                arrays[name] = arr

        f.visititems(visit)
    return arrays, attrs


# --- feature files (large, streamed, resumable) ---------------------------------------------


class FeatureWriter:
    """Streams one dataset split's features into ``<path>.partial``; resumable; atomic finish.

    ``layout`` maps dataset name -> (trailing shape, numpy dtype) for the per-sample arrays.
    ``identity`` are attributes that must match for a partial file to be resumed (model
    fingerprint, sample-list fingerprint, feature options); a mismatch starts over.
    """

    def __init__(self, path: Path, layout: Mapping[str, tuple[tuple[int, ...], Any]],
                 identity: Mapping[str, Any], attrs: Mapping[str, Any], total: int, chunk_rows: int = 256):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.layout = dict(layout)
        self.identity = {k: _attr(v) for k, v in identity.items()}
        self.attrs = dict(attrs)
        self.total = total
        self.chunk_rows = chunk_rows
        self.f: h5py.File | None = None
        self.resumed_from = 0

    # the number of source samples already handled (written or skipped)
    @property
    def processed(self) -> int:
        return int(self.f.attrs["n_processed"]) if self.f is not None else 0

    def open(self, fresh: bool = False) -> FeatureWriter:
        """Open the partial file, resuming it when its identity matches (``fresh``: start over)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and self.partial.exists():
            self.partial.unlink()
        if self.partial.exists() and self._try_resume():
            return self
        self.f = h5py.File(self.partial, "w")
        for name, (shape, dtype) in self.layout.items():
            self.f.create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                chunks=(min(self.chunk_rows, max(1, self.total)), *shape),
            )
        self.f.create_dataset("skipped_ids", shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
        self.f.attrs.update({"format_version": FORMAT_VERSION, "oodbench_version": __version__,
                             "complete": False, "n_processed": 0, "n_rows": 0, "n_total": self.total})
        for k, v in self.identity.items():
            self.f.attrs[k] = v
        self.f.flush()
        return self

    def _try_resume(self) -> bool:
        try:
            f = h5py.File(self.partial, "a")
        except OSError:
            self.partial.unlink()
            return False
        same = all(f.attrs.get(k) == v for k, v in self.identity.items()) and set(self.layout) <= set(f)
        same = same and int(f.attrs.get("n_total", -1)) == self.total
        if not same:
            f.close()
            self.partial.unlink()
            return False
        n_rows = int(f.attrs["n_rows"])
        for name in self.layout:  # drop rows written after the last consistent checkpoint
            f[name].resize(n_rows, axis=0)
        self.f = f
        self.resumed_from = int(f.attrs["n_processed"])
        return True

    def append(self, arrays: Mapping[str, np.ndarray], n_processed: int, skipped: list[str] = ()) -> None:
        """Append rows (same count in every array) and record progress up to ``n_processed``."""
        assert self.f is not None
        n_rows = int(self.f.attrs["n_rows"])
        k = None
        for name, arr in arrays.items():
            k = len(arr) if k is None else k
            if len(arr) != k:
                raise ValueError("all arrays of one append must have the same number of rows")
            ds = self.f[name]
            ds.resize(n_rows + k, axis=0)
            ds[n_rows:] = arr
        if skipped:
            ds = self.f["skipped_ids"]
            s = ds.shape[0]
            ds.resize(s + len(skipped), axis=0)
            ds[s:] = np.array(skipped, dtype=object)
        self.f.flush()
        self.f.attrs["n_rows"] = n_rows + (k or 0)
        self.f.attrs["n_processed"] = n_processed
        self.f.flush()

    def finalize(self) -> Path:
        """Mark complete and rename into place. Returns the final path."""
        assert self.f is not None
        if self.processed != self.total:
            raise RuntimeError(f"finalize after {self.processed}/{self.total} samples")
        for k, v in {**self.attrs, "created": now(), "complete": True}.items():
            self.f.attrs[k] = _attr(v)
        self.f.close()
        self.f = None
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


class FeatureFile:
    """Read access to one complete feature file; arrays are loaded on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            partial = self.path.with_name(self.path.name + ".partial")
            hint = " (an unfinished extract exists: rerun `oodbench extract` to resume it)" if partial.exists() else ""
            raise OodbenchError(f"Feature file {self.path} does not exist{hint}.")
        with open_h5(self.path) as f:
            self.attrs = read_attrs(f)
            self.keys = self._dataset_names(f)
            self.shapes = {k: f[k].shape for k in self.keys}
        check_version(self.path, self.attrs)
        if not self.attrs.get("complete"):
            raise OodbenchError(f"{self.path} is not marked complete: rerun `oodbench extract` to finish it.")
        self._check_rows()

    def _check_rows(self) -> None:
        """Every per-sample dataset must have ``n_rows`` rows (row i is one image everywhere)."""
        n = self.attrs.get("n_rows")
        for k in self.keys:
            if k != "skipped_ids" and (not self.shapes[k] or self.shapes[k][0] != n):
                rows = self.shapes[k][0] if self.shapes[k] else "no"
                raise OodbenchError(
                    f"{self.path} is inconsistent: dataset {k!r} has {rows} rows but the file records "
                    f"n_rows={n}; delete it and rerun `oodbench extract`."
                )

    @staticmethod
    def _dataset_names(f: h5py.File) -> list[str]:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        return names

    def __len__(self) -> int:
        return int(self.attrs["n_rows"])

    def load(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        with open_h5(self.path) as f:
            ds = f[name]
            arr = ds[()] if rows is None else ds[rows]
            if ds.dtype.kind == "O":
                arr = np.array([x.decode() if isinstance(x, bytes) else x for x in arr], dtype=object)
        return arr

    def iter_chunks(self, name: str, rows: int = 65536) -> Iterator[np.ndarray]:
        """Yield ``name`` in row blocks (memory-bounded reads of big train banks)."""
        with open_h5(self.path) as f:
            ds = f[name]
            for s in range(0, ds.shape[0], rows):
                yield ds[s : s + rows]
