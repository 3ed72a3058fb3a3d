"""``oodbench verify``: check every file of a store (complete, consistent, finite, well-shaped)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import OodbenchError
from .store import READABLE_VERSIONS, Store, open_h5, read_attrs


@dataclass
class Finding:
    path: Path
    ok: bool
    message: str


def _check_features(path: Path, fingerprint: str | None, embed_dim: int | None) -> list[str]:
    problems = []
    with open_h5(path) as f:
        a = read_attrs(f)
        if a.get("format_version") not in READABLE_VERSIONS:
            return [f"format version {a.get('format_version')!r} not readable"]
        if not a.get("complete"):
            problems.append("not marked complete")
        if fingerprint and a.get("model_fingerprint") != fingerprint:
            problems.append(f"model fingerprint {str(a.get('model_fingerprint'))[:12]} ≠ model.h5 {fingerprint[:12]}")
        n = int(a.get("n_rows", -1))
        for name in ("image_embeds", "penultimate", "labels", "ids"):
            if name not in f:
                problems.append(f"missing dataset {name}")
        datasets: list[str] = []
        f.visititems(lambda k, o: datasets.append(k) if isinstance(o, h5py.Dataset) else None)
        for name in datasets:
            ds = f[name]
            if name != "skipped_ids" and ds.shape[0] != n:
                problems.append(f"{name} has {ds.shape[0]} rows, n_rows says {n}")
            if ds.dtype.kind == "f":
                for s in range(0, ds.shape[0], 16384):
                    block = ds[s : s + 16384]
                    if not np.isfinite(block).all():
                        bad = np.nonzero(~np.isfinite(block).reshape(len(block), -1).all(1))[0][:3] + s
                        problems.append(f"{name} has NaN/inf (rows {', '.join(map(str, bad))})")
                        break
        if embed_dim and "image_embeds" in f and f["image_embeds"].shape[1:] != (embed_dim,):
            problems.append(f"image_embeds width {f['image_embeds'].shape[1:]} ≠ projection {embed_dim}")
        if a.get("n_processed") != a.get("n_total"):
            problems.append(f"processed {a.get('n_processed')}/{a.get('n_total')} samples")
    return problems


def _check_text(path: Path, fingerprint: str | None) -> Finding:
    try:
        with open_h5(path) as f:
            ta = read_attrs(f)
            e = f["embeds"]
            ok = ta.get("fingerprint") == fingerprint and e.shape[:2] == (len(ta["templates"]), len(ta["names"]))
            ok = ok and bool(np.isfinite(e[()]).all())
    except OodbenchError as exc:
        return Finding(path, False, str(exc))
    return Finding(path, ok, f"text bank {e.shape}" if ok else "text bank inconsistent")


def _check_scores(path: Path) -> Finding:
    from .results import load_records

    try:
        records = load_records(path)
    except OodbenchError as exc:
        return Finding(path, False, str(exc))
    return Finding(path, True, f"scores of {len(records)} method(s)")


def verify_store(root: str | Path) -> list[Finding]:
    """One finding per file (model, text, features, scores) and per unfinished leftover."""
    st = Store(root)
    if not st.root.is_dir():
        raise OodbenchError(f"Store {st.root} does not exist.")
    out: list[Finding] = []
    for key in st.model_keys():
        fp = proj = None
        try:
            with open_h5(st.model_path(key)) as f:
                ma = read_attrs(f)
                proj = f["visual/proj"].shape[1] if "visual/proj" in f else None
            fp = ma.get("fingerprint")
            out.append(Finding(st.model_path(key), bool(ma.get("complete")), "model " + str(fp)[:12]))
        except OodbenchError as exc:
            out.append(Finding(st.model_path(key), False, str(exc)))
        for p in sorted((st.model_dir(key) / "text").glob("*.h5")):
            out.append(_check_text(p, fp))
        for p in sorted((st.model_dir(key) / "features").glob("*.h5")):
            try:
                problems = _check_features(p, fp, proj)
            except OodbenchError as exc:
                problems = [str(exc)]
            out.append(Finding(p, not problems, "; ".join(problems) or "ok"))
        for p in sorted((st.model_dir(key) / "scores").glob("*.h5")):
            out.append(_check_scores(p))
    for p in sorted(st.root.rglob("*.partial")):
        out.append(Finding(p, False, "unfinished write: rerun `oodbench extract` to resume it, or delete it"))
    return out
