"""``oodbench verify``: check every file of a store (complete, consistent, finite, well-shaped),
and :func:`check_split_files`: a feature file still stands for its catalogue entry.

A feature file records the dataset it was extracted for (``dataset``), that dataset's
catalogue entry (``catalogue_spec``: the entry as the benchmarks file wrote it, minus ``url``)
and the fingerprint of its sample list (``sample_fingerprint``: sha256 of the ordered
(id, label) pairs). It is stale when the catalogue now defines the dataset differently, when
it was made for another dataset (a file copied under another name), or when the sample list
the entry gives today differs. The sample list is recomputed only where that needs no image
and no data root: the generated sources (digits, shifted digits, textures, noise) and image
lists whose list file is reachable (the list is read, the images are not); for image folders
and torchvision sets the recorded entry is compared.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import OodbenchError
from .store import READABLE_VERSIONS, Store, open_h5, read_attrs

SHARD = re.compile(r"\.shard\d+-of-\d+$")  # oodbench.distributed.shard_path
LIST_ONLY_KINDS = ("digits", "shifted_digits", "textures", "noise")  # sample lists computed in memory


@dataclass
class Finding:
    path: Path
    ok: bool
    message: str


SPEC_IGNORED = ("url",)  # entry keys that do not change the samples


def spec_text(spec: dict[str, Any]) -> str:
    """Canonical text of a catalogue dataset entry as the benchmarks file writes it (before
    ``${data_root}`` is filled in), minus ``SPEC_IGNORED`` and internal ``_`` keys."""
    kept = {k: v for k, v in spec.items() if not str(k).startswith("_") and k not in SPEC_IGNORED}
    return json.dumps(kept, sort_keys=True, default=str)


def _spec_dict(spec: dict[str, Any]) -> dict[str, Any]:
    return json.loads(spec_text(spec))


def current_sample_list(catalogue, dataset: str) -> tuple[str, int] | None:
    """(sample fingerprint, count) of ``dataset`` as the catalogue defines it now, or None when
    that would need the images or the data root (see the module docstring)."""
    spec = catalogue.datasets[dataset]
    kind = spec.get("source")
    try:
        if kind in LIST_ONLY_KINDS:
            src = catalogue.source(dataset)
        elif kind == "imglist":
            from .data.imglist import ImageListSource
            from .data.spec import SpecReader

            lst = spec.get("list")
            if isinstance(lst, str) and "${data_root}" in lst:  # only the list: the images' root may be absent
                if not os.environ.get("OODBENCH_DATA"):
                    return None
                root = str(Path(os.environ["OODBENCH_DATA"]).expanduser().absolute())  # as extract resolves it
                lst = lst.replace("${data_root}", root)
            reader = SpecReader({"source": kind, "list": lst, "ood": spec.get("ood", False)}, dataset,
                                required=("list",), optional=("ood",))
            src = ImageListSource(dataset, reader.path("list", base=catalogue.path.parent), ".",
                                  ood=reader.boolean("ood"))
        else:
            return None
    except OodbenchError:  # e.g. ${data_root} not given, list file not there: compare the entry only
        return None
    return src.fingerprint(), len(src)


def entry_problems(attrs: dict[str, Any], dataset: str, catalogue, _lists: dict | None = None) -> list[str]:
    """Why a feature file (its ``attrs``) does not stand for ``catalogue``'s entry ``dataset``.

    ``_lists``: a cache of :func:`current_sample_list` results shared by several calls.
    """
    problems = []
    recorded = attrs.get("dataset")
    if recorded is not None and recorded != dataset:
        problems.append(f"it holds dataset {recorded!r}, not {dataset!r}")
    if dataset not in catalogue.datasets:
        return problems
    spec = attrs.get("catalogue_spec")
    now = _spec_dict(catalogue.datasets[dataset])
    if spec is not None and spec != now:
        problems.append(f"it was extracted from the entry {json.dumps(spec, sort_keys=True)}, "
                        f"but {catalogue.path} now says {json.dumps(now, sort_keys=True)}")
    lists = {} if _lists is None else _lists
    if dataset not in lists:
        lists[dataset] = current_sample_list(catalogue, dataset)
    current = lists[dataset]
    if current is not None and attrs.get("sample_fingerprint") != current[0]:
        problems.append(f"its {attrs.get('n_total', '?')} samples are not the {current[1]} samples the entry "
                        f"gives now (sample fingerprint {str(attrs.get('sample_fingerprint'))[:12]} vs {current[0][:12]})")
    return problems


def check_split_files(store: Store, key: str, datasets, catalogue, benchmark: str) -> None:
    """Refuse the first feature file of ``datasets`` (of model ``key``) that is stale.

    Files that do not exist are left to the reader (which says to extract them).

    Raises:
        OodbenchError: one line naming the file, what differs and the command that re-extracts it.
    """
    lists: dict = {}
    for d in dict.fromkeys(datasets):
        path = store.features_path(key, d)
        if not path.exists():
            continue
        try:
            with h5py.File(path, "r") as f:
                attrs = read_attrs(f)
        except OSError:
            continue  # unreadable: the reader's own error names it
        problems = entry_problems(attrs, d, catalogue, lists)
        if problems:
            raise OodbenchError(
                f"{path} is stale: {'; '.join(problems)}: re-extract it "
                f"(oodbench extract -b {benchmark} --dataset {d} --overwrite, with the same model and "
                f"--benchmarks {catalogue.path})."
            )


def _check_features(path: Path, fingerprint: str | None, embed_dim: int | None, catalogue=None,
                    lists: dict | None = None) -> list[str]:
    problems = []
    with open_h5(path) as f:
        a = read_attrs(f)
        if a.get("format_version") not in READABLE_VERSIONS:
            return [f"format version {a.get('format_version')!r} not readable"]
        if catalogue is not None and not SHARD.search(path.stem):  # a torchrun shard holds part of a set
            problems += [f"stale ({p}): re-extract with --overwrite" for p in
                         entry_problems(a, path.stem, catalogue, lists)]
        if not a.get("complete"):
            problems.append("not marked complete")
        if fingerprint and a.get("model_fingerprint") != fingerprint:
            problems.append(f"model fingerprint {str(a.get('model_fingerprint'))[:12]} ≠ model.h5 {fingerprint[:12]}")
        try:
            n = int(a.get("n_rows", -1))
        except (TypeError, ValueError):
            return problems + [f"n_rows attribute {a.get('n_rows')!r} is not a row count"]
        for name in ("image_embeds", "penultimate", "labels", "ids"):
            if name not in f:
                problems.append(f"missing dataset {name}")
        datasets: list[str] = []
        f.visititems(lambda k, o: datasets.append(k) if isinstance(o, h5py.Dataset) else None)
        for name in datasets:
            ds = f[name]
            if not ds.shape:
                problems.append(f"{name} is a scalar, not a dataset of rows")
                continue
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


def verify_store(root: str | Path, catalogue=None) -> list[Finding]:
    """One finding per file (model, text, features, scores) and per unfinished leftover.

    ``catalogue``: the benchmarks catalogue (a :class:`~oodbench.config.Catalogue`, a YAML path,
    or None for the shipped one) that feature files are checked against (see
    :func:`entry_problems`); a dataset it does not define is only checked for its name.
    """
    from .config import Catalogue, load_catalogue

    st = Store(root)
    if not st.root.is_dir():
        raise OodbenchError(f"Store {st.root} does not exist.")
    catalogue = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue)
    lists: dict = {}
    out: list[Finding] = []
    for key in st.model_keys():
        fp = proj = None
        try:
            with open_h5(st.model_path(key)) as f:
                ma = read_attrs(f)
                shape = f["visual/proj"].shape if "visual/proj" in f else ()
                proj = shape[1] if len(shape) == 2 else None
            fp = ma.get("fingerprint")
            out.append(Finding(st.model_path(key), bool(ma.get("complete")), "model " + str(fp)[:12]))
        except OodbenchError as exc:
            out.append(Finding(st.model_path(key), False, str(exc)))
        for p in sorted((st.model_dir(key) / "text").glob("*.h5")):
            out.append(_check_text(p, fp))
        for p in sorted((st.model_dir(key) / "features").glob("*.h5")):
            try:
                problems = _check_features(p, fp, proj, catalogue, lists)
            except OodbenchError as exc:
                problems = [str(exc)]
            out.append(Finding(p, not problems, "; ".join(problems) or "ok"))
        for p in sorted((st.model_dir(key) / "scores").glob("*.h5")):
            out.append(_check_scores(p))
    for p in sorted(st.root.rglob("*.partial")):
        out.append(Finding(p, False, "unfinished write: rerun `oodbench extract` to resume it, or delete it"))
    return out
