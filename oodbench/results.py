"""Per-sample scores of one (model, benchmark, method) and how they are kept on disk.

A :class:`ScoreRecord` is what ``oodbench score`` writes and ``oodbench report`` reads:
everything a report needs, with no features (so reports are instant).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ScoreRecord:
    """Scores of one method on the ID test split and each OoD split (higher = more ID).

    Attributes:
        model: short label of the checkpoint (``"zeroshot"``, ``"ft_lora"``...).
        model_key: store directory name of the model (name + fingerprint prefix).
        fingerprint: sha256 of the weights used.
        benchmark: benchmark name.
        method: scorer registry name.
        params: hyperparameters actually used (after defaults/overrides/tuning).
        head: head used for logits (``"zeroshot"`` or ``"linear"``).
        id_scores: (N_id,) scores of the ID test split.
        ood_scores: OoD split name -> (N_ood,) scores.
        groups: OoD split name -> ``"near"`` or ``"far"``.
        accuracy: top-1 accuracy of the head on the ID test split (NaN if unknown).
        id_correct: (N_id,) bool, head prediction correct (for misclassification analyses).
        provenance: store path, oodbench version, feature files, creation time, ...
        shift_scores: covariate-shift set name -> (N_s,) scores (empty for files written
            before shift sets existed, or a benchmark without them).
        shift_correct: shift set name -> (N_s,) int8, the head's prediction right (1), wrong
            (0) or the label unknown (-1), argmax over the set's class subset if it has one.
        head_confidence: ``"id"`` (ID test) and each shift set -> (N,) maximum softmax
            probability of the head (over the class subset), the confidence ECE bins.
        shift_sets: shift set name -> ``{"classes": [..] | None, "reference": [slope,
            intercept] | None}`` as the catalogue gave them.
    """

    model: str
    model_key: str
    fingerprint: str
    benchmark: str
    method: str
    params: dict[str, Any]
    head: str
    id_scores: np.ndarray
    ood_scores: dict[str, np.ndarray]
    groups: dict[str, str]
    accuracy: float = float("nan")
    id_correct: np.ndarray | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    shift_scores: dict[str, np.ndarray] = field(default_factory=dict)
    shift_correct: dict[str, np.ndarray] = field(default_factory=dict)
    head_confidence: dict[str, np.ndarray] = field(default_factory=dict)
    shift_sets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Method label with non-default parameters, e.g. ``knn(k=10)``."""
        extra = self.provenance.get("overrides") or {}
        if not extra:
            return self.method
        return f"{self.method}({', '.join(f'{k}={v}' for k, v in sorted(extra.items()))})"


def _group_name(label: str) -> str:
    return label.replace("/", "|")


SAVE_LOCK_WAIT = 600.0  # seconds a score run waits for another one's save of the same file


def save_records(path, records: list[ScoreRecord], meta: dict[str, Any]) -> None:
    """Write (or update) a scores file: one group per method label; other groups are kept.

    The read-merge-write runs under the file's lock (waiting up to ``SAVE_LOCK_WAIT`` seconds
    for another ``score`` process), so concurrent runs of other methods keep each other's scores.
    """
    from pathlib import Path

    from .store import exclusive

    with exclusive(Path(path), wait=SAVE_LOCK_WAIT):
        _merge_records(path, records, meta)


def _stale_group(attrs: dict[str, Any], current: dict[str, str]) -> bool:
    """Whether a stored group was computed from another version of a feature file that the new
    records read (same dataset, other completion time or sample list). Groups without the
    record (older files) are kept."""
    prov = attrs.get("provenance")
    if isinstance(prov, str):
        try:
            prov = json.loads(prov)
        except ValueError:
            return False
    seen = (prov or {}).get("feature_identity") if isinstance(prov, dict) else None
    if not isinstance(seen, dict):
        return False
    return any(d in current and current[d] != ident for d, ident in seen.items())


def _merge_records(path, records: list[ScoreRecord], meta: dict[str, Any]) -> None:
    from pathlib import Path

    import h5py

    from .store import _attr, open_h5, write_h5_atomic

    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    group_attrs: dict[str, dict[str, Any]] = {}
    current: dict[str, str] = {}  # dataset -> identity of the feature file the new records read
    for r in records:
        current.update((r.provenance or {}).get("feature_identity") or {})
    dropped = []
    if path.exists():
        with open_h5(path) as f:
            for g in f:
                if g in {_group_name(r.label) for r in records}:
                    continue
                attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f[g].attrs.items()}
                if _stale_group(attrs, current):
                    dropped.append(str(attrs.get("label", g)))
                    continue
                f[g].visititems(lambda n, o, g=g: arrays.__setitem__(f"{g}/{n}", o[()]) if isinstance(o, h5py.Dataset) else None)
                group_attrs[g] = attrs
    if dropped:
        from .console import warn

        warn(f"{path}: dropped the scores of {', '.join(dropped)}: they were computed from feature files "
             "that have since been re-extracted; score them again")
    for r in records:
        g = _group_name(r.label)
        arrays[f"{g}/id"] = np.asarray(r.id_scores, np.float64)
        for name, s in r.ood_scores.items():
            arrays[f"{g}/ood/{name}"] = np.asarray(s, np.float64)
        if r.id_correct is not None:
            arrays[f"{g}/id_correct"] = np.asarray(r.id_correct, bool)
        for name, s in r.shift_scores.items():  # the covariate-shift group (absent in old files)
            arrays[f"{g}/shift/{name}"] = np.asarray(s, np.float64)
        for name, c in r.shift_correct.items():
            arrays[f"{g}/shift_correct/{name}"] = np.asarray(c, np.int8)
        for name, c in r.head_confidence.items():
            arrays[f"{g}/head_confidence/{name}"] = np.asarray(c, np.float64)
        extra = {"shift_sets": r.shift_sets} if r.shift_sets else {}
        group_attrs[g] = {k: _attr(v) for k, v in {
            "method": r.method, "params": r.params, "head": r.head, "accuracy": r.accuracy,
            "groups": r.groups, "provenance": r.provenance, "label": r.label, **extra}.items()}
    write_h5_atomic(path, arrays, {"kind": "scores", **meta}, group_attrs)


def load_records(path) -> list[ScoreRecord]:
    """Every method's ScoreRecord from one scores file."""
    from pathlib import Path

    from .errors import OodbenchError
    from .store import check_version, open_h5, read_attrs

    path = Path(path)
    if not path.exists():
        raise OodbenchError(f"Scores file {path} does not exist: run `oodbench score` first.")
    out = []
    fix = ("delete it and rerun `oodbench score`" if path.parent.name == "scores"
           else "pass a scores file written by `oodbench score` (<store>/<model>/scores/<benchmark>.h5)")
    with open_h5(path, fix=fix) as f:
        meta = read_attrs(f)
        if meta.get("kind") != "scores":
            raise OodbenchError(f"{path} is not an oodbench scores file (kind={meta.get('kind')!r}): {fix}.")
        check_version(path, meta)
        for g in f:
            a = read_attrs(f[g])
            ood = {n: f[g]["ood"][n][()] for n in f[g]["ood"]} if "ood" in f[g] else {}
            sets = dict(a.get("shift_sets") or {})

            def sub(name: str, g=g, sets=sets) -> dict[str, np.ndarray]:
                grp = f[g].get(name)
                arrays = {n: grp[n][()] for n in grp} if grp is not None else {}
                return {n: arrays[n] for n in ["id", *sets] if n in arrays}
            order = list(a["groups"])
            out.append(ScoreRecord(
                model=meta["model_label"], model_key=meta["model_key"], fingerprint=meta["fingerprint"],
                benchmark=meta["benchmark"], method=a["method"], params=a["params"], head=a["head"],
                id_scores=f[g]["id"][()], ood_scores={n: ood[n] for n in order if n in ood},
                groups=a["groups"], accuracy=float(a["accuracy"]),
                id_correct=f[g]["id_correct"][()] if "id_correct" in f[g] else None,
                provenance={**a["provenance"], "scores_file": str(path)},
                shift_scores=sub("shift"), shift_correct=sub("shift_correct"),
                head_confidence=sub("head_confidence"), shift_sets=sets,
            ))
    return out
