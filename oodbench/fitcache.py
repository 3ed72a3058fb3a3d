"""Fitted scorer state, cached next to the scores so that a re-run skips the fits.

A fit is stored as ``<root>/<model_key>/scores/<benchmark>.fits/<method>-<key>.h5``: the learned
attributes of the scorer (those ending in ``_``), written atomically. ``key`` is a hash of
everything the fit depends on:

- the method, its class and parameters, and the source code of its module (plus the shared
  scorer helpers): editing a scorer invalidates its fits;
- the store fingerprint of the fit: the model's fingerprint and a hash of ``model.h5``'s content
  (its arrays and attributes but not its creation time: ``oodbench run`` rewrites the file each
  time with the same content), the fit split's feature file (name, size, mtime, ``created``,
  sample fingerprint), and for scorers that compare checkpoints the reference model's file;
- the head (name, input space, a hash of its weights) and, for scorers that read text banks,
  a hash of those banks.

Anything else (a re-extracted split, another ``--param``, another head) gives another key, so
a stale fit is never used. States that are not plain numbers / strings / numpy arrays, or that
exceed ``OODBENCH_FIT_CACHE_MAX_MB`` (default 128: a KNN bank is the train split itself and is
faster to rebuild than to copy), are not cached. ``OODBENCH_FIT_CACHE=0`` disables the cache.

The cache is bounded: after each write, a ``.fits`` folder keeps its most recently used fits
(a hit refreshes a file's mtime) up to ``OODBENCH_FIT_CACHE_FILES`` files (default 64) and
``OODBENCH_FIT_CACHE_DIR_MB`` MB (default 1024); older ones are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import OodbenchError

_PY_SCALARS = (bool, int, float, str, type(None))
_code_hashes: dict[str, str] = {}
_bank_hashes: dict[int, tuple[Any, str]] = {}


def enabled() -> bool:
    return os.environ.get("OODBENCH_FIT_CACHE", "1").lower() not in ("0", "false", "no", "off")


def max_bytes() -> int:
    return int(float(os.environ.get("OODBENCH_FIT_CACHE_MAX_MB", "128")) * 2**20)


def max_files() -> int:
    return int(os.environ.get("OODBENCH_FIT_CACHE_FILES", "64"))


def max_dir_bytes() -> int:
    return int(float(os.environ.get("OODBENCH_FIT_CACHE_DIR_MB", "1024")) * 2**20)


def cache_dir(scores_path: Path) -> Path:
    """The folder of cached fits next to a scores file (``<benchmark>.fits``)."""
    return scores_path.with_name(scores_path.stem + ".fits")


def _code_hash(cls: type) -> str:
    files = [inspect.getsourcefile(cls)]
    here = Path(__file__).parent / "scorers"
    files += [str(here / "common.py"), str(here / "inputs.py")]
    h = hashlib.sha256()
    for f in files:
        if f is None:
            continue
        if f not in _code_hashes:
            try:
                _code_hashes[f] = hashlib.sha256(Path(f).read_bytes()).hexdigest()
            except OSError:
                _code_hashes[f] = "unreadable"
        h.update(_code_hashes[f].encode())
    return h.hexdigest()


def file_identity(path: str | Path, attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What identifies one written file: name, size, mtime and (if given) its created/sample attrs."""
    p = Path(path)
    st = p.stat()
    out: dict[str, Any] = {"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    for k in ("created", "sample_fingerprint", "model_fingerprint"):
        if attrs and k in attrs:
            out[k] = str(attrs[k])
    return out


VOLATILE_ATTRS = ("created", "oodbench_version")  # change on every rewrite of the same content


def content_identity(path: str | Path) -> dict[str, Any]:
    """What identifies a small HDF5 file (``model.h5``) by content: its name and a sha256 of
    every dataset (path, dtype, shape, bytes) and of its attributes except ``VOLATILE_ATTRS``."""
    import h5py

    from .store import read_attrs

    p = Path(path)
    h = hashlib.sha256()
    with h5py.File(p, "r") as f:
        attrs = {k: v for k, v in read_attrs(f).items() if k not in VOLATILE_ATTRS}
        h.update(json.dumps(attrs, sort_keys=True, default=str).encode())
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for n in sorted(names):
            h.update(n.encode())
            h.update(_array_hash(np.asarray(f[n][()])).encode())
    return {"name": p.name, "content": h.hexdigest()}


def _split_identity(data) -> dict[str, Any]:
    extra = getattr(data, "extra", {}) or {}
    out: dict[str, Any] = {"split": getattr(data, "split", None)}
    if extra.get("file"):
        out["file"] = file_identity(extra["file"], {"sample_fingerprint": extra.get("sample_fingerprint")})
    ref = extra.get("reference")
    if ref is not None:
        out["reference"] = _split_identity(ref)
        if ref.head is not None:
            out["reference_head"] = _array_hash(ref.head.weight, ref.head.bias)
    return out


def _array_hash(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _bank_hash(bank) -> str:
    cached = _bank_hashes.get(id(bank))
    if cached is None or cached[0] is not bank:
        digest = hashlib.sha256(json.dumps([list(bank.names), list(bank.templates)]).encode())
        digest.update(_array_hash(bank.embeds).encode())
        cached = (bank, digest.hexdigest())
        _bank_hashes[id(bank)] = cached
    return cached[1]


def fit_key(scorer, data, model: dict[str, Any]) -> str:
    """Hash of everything the fit of ``scorer`` on ``data`` depends on (see the module docstring).

    ``model``: the model's identity (fingerprint, model.h5 file identity).
    """
    head = getattr(data, "head", None)
    payload: dict[str, Any] = {
        "method": scorer.name,
        "class": f"{type(scorer).__module__}.{type(scorer).__qualname__}",
        "params": scorer.hparams,
        "code": _code_hash(type(scorer)),
        "oodbench": __version__,
        "model": model,
        "fit_split": _split_identity(data),
        "head": None if head is None else {"name": head.name, "input": head.input,
                                           "weights": _array_hash(head.weight, head.bias)},
    }
    if "text" in scorer.needs or "negatives" in scorer.needs:
        payload["text"] = {name: _bank_hash(b) for name, b in sorted(getattr(data, "text", {}).items())}
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def get_state(scorer) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """(arrays, scalars) of the learned attributes, or None when one cannot be stored faithfully."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    for k, v in vars(scorer).items():
        if not k.endswith("_") or k.startswith("_") or k == "fitted_":
            continue
        if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            arrays[k] = v
        elif isinstance(v, np.generic) and v.dtype.kind in "biuf":
            arrays[k] = np.asarray(v)  # 0-d: keeps its numpy type on reload
            scalars[k] = {"numpy_scalar": True}
        elif isinstance(v, _PY_SCALARS) and not (isinstance(v, float) and not np.isfinite(v)):
            scalars[k] = {"value": v}
        else:
            return None
    return arrays, scalars


def load(path: Path, key: str, scorer) -> bool:
    """Restore ``scorer``'s fit from ``path`` if it holds ``key``; True on success."""
    from .store import read_h5

    if not path.exists():
        return False
    try:
        arrays, attrs = read_h5(path)
    except (OSError, OodbenchError, KeyError, ValueError):
        return False
    if attrs.get("fit_key") != key:
        return False
    scalars = attrs.get("scalars") or {}
    if not isinstance(scalars, dict) or any(
        not isinstance(spec, dict) or (spec.get("numpy_scalar") and f"state/{k}" not in arrays)
        or (not spec.get("numpy_scalar") and "value" not in spec)
        for k, spec in scalars.items()
    ):
        return False  # a damaged entry: fit again
    for k, spec in scalars.items():
        if spec.get("numpy_scalar"):
            setattr(scorer, k, arrays[f"state/{k}"][()])
        else:
            setattr(scorer, k, spec["value"])
    for name, arr in arrays.items():
        k = name.split("/", 1)[1]
        if k not in scalars:
            setattr(scorer, k, arr)
    scorer.fitted_ = True
    return True


def fit(scorer, data, scores_path: Path, model: dict[str, Any]) -> dict[str, Any]:
    """Fit ``scorer`` on ``data``, or restore a cached fit. Returns what happened, for provenance."""
    from .store import write_h5_atomic

    t0 = time.perf_counter()
    if not enabled():
        scorer.fit(data)
        return {"fit_cache": "off", "fit_seconds": round(time.perf_counter() - t0, 3)}
    key = fit_key(scorer, data, model)
    path = cache_dir(scores_path) / f"{scorer.name}-{key[:20]}.h5"
    if load(path, key, scorer):
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used: kept longest by prune()
        return {"fit_cache": "hit", "fit_seconds": round(time.perf_counter() - t0, 3), "fit_file": str(path)}
    scorer.fit(data)
    seconds = round(time.perf_counter() - t0, 3)
    state = get_state(scorer)
    if state is None:
        return {"fit_cache": "not cacheable", "fit_seconds": seconds}
    arrays, scalars = state
    size = sum(a.nbytes for a in arrays.values())
    if size > max_bytes():
        return {"fit_cache": f"not cached ({size / 2**20:.0f} MB state)", "fit_seconds": seconds}
    try:
        write_h5_atomic(path, {f"state/{k}": v for k, v in arrays.items()},
                        {"kind": "fit", "method": scorer.name, "params": scorer.hparams, "fit_key": key,
                         "scalars": scalars})
    except OSError as exc:  # a read-only store still scores
        return {"fit_cache": f"not written ({exc.strerror})", "fit_seconds": seconds}
    prune(path.parent, keep=path)
    return {"fit_cache": "miss", "fit_seconds": seconds, "fit_file": str(path)}


def prune(folder: Path, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used fits of ``folder`` beyond ``max_files()`` files or
    ``max_dir_bytes()`` bytes (``keep`` is never deleted). Returns the deleted paths."""
    entries = []
    for p in folder.glob("*.h5"):
        with contextlib.suppress(OSError):
            st = p.stat()
            entries.append((st.st_mtime_ns, st.st_size, p))
    entries.sort(key=lambda e: (e[2] != keep, -e[0]))  # keep first, then newest first
    deleted, kept, total = [], 0, 0
    for _, size, p in entries:
        if p == keep or (kept < max_files() and total + size <= max_dir_bytes()):
            kept, total = kept + 1, total + size
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            deleted.append(p)
    return deleted
