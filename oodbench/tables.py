"""The tidy metrics frame of :class:`~oodbench.results.ScoreRecord` lists, with bootstrap intervals.

:func:`metrics_table` turns records into one :class:`pandas.DataFrame` (one row per model ×
benchmark × method × OoD set, plus ``near avg`` / ``far avg`` / ``avg`` rows that average the
sets of a group unweighted, OpenOOD style), optionally with seeded bootstrap intervals
(:func:`bootstrap`) and differences to a baseline model. This module sits below both
:mod:`oodbench.report` (renderings) and :mod:`oodbench.plots` (figures); it imports neither.

Conventions are those of :mod:`oodbench.metrics`: higher score = more in-distribution, ID is
the positive class of ``auroc``/``fpr95``/``aupr_in``; ``fpr95`` is the classic (MCM) FPR@95
and ``fpr95_ood`` the OpenOOD v1.5 one. The frame holds fractions.
"""

from __future__ import annotations

import math
import os
import zlib
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from .errors import OodbenchError
from .metrics import METRICS, evaluate, failure_metrics, fsood_auroc
from .results import ScoreRecord

VALUES = (*METRICS, "accuracy")
SET_SHIFT_METRICS = ("fsood_auroc",)
"""Per-OoD-set columns of records with covariate-shift sets (OpenOOD v1.5 full spectrum)."""
FAILURE = ("failure_auroc", "aurc", "eaurc")
RECORD_SHIFT_METRICS = ("shift_accuracy", *FAILURE, *(f"{m}_shift" for m in FAILURE))
"""Per-record columns of records with shift sets: shift accuracy (mean over the sets) and the
failure-detection metrics of the score on the ID test split and on the shift sets (pooled)."""


# --------------------------------------------------------------------------- metrics table


def metrics_table(
    records: list[ScoreRecord],
    *,
    baseline: str | None = None,
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Tidy metrics frame of ``records``.

    Args:
        records: score records (higher score = more ID); (model, benchmark, method label)
            must be unique, except records of one method under different heads, which get
            the head appended to the label (``msp[linear]``).
        baseline: a model name; adds ``d_<metric>`` = value − baseline value for the same
            (benchmark, method, ood).
        ci: confidence level (e.g. 0.95) of percentile bootstrap intervals, added as
            ``<metric>_lo``/``<metric>_hi``; ID and OoD scores are resampled independently
            (one ID resample per replicate shared by all OoD sets of a record, so averaged
            rows are bootstrapped as averages).
        n_boot: bootstrap replicates.
        seed: bootstrap seed; each record draws from its own stream, derived from ``seed``
            and its (model, benchmark, method), so results do not depend on record order.

    Returns:
        Columns ``model, benchmark, method, ood, group, auroc, fpr95, fpr95_ood, aupr_in,
        aupr_out, accuracy`` (fractions), then the interval and delta columns if asked.
        ``ood`` is a set name or ``"near avg"``/``"far avg"``/``"avg"``; ``group`` is the
        set's group or, for averaged rows, ``near``/``far``/``avg``. ``df.attrs["provenance"]``
        holds :func:`provenance` of the records (used by :func:`oodbench.report.render`).
    """
    if not records:
        raise OodbenchError("No score records to report: run `oodbench score` first.")
    if ci is not None and not 0 < ci < 1:
        raise OodbenchError(f"The 'ci' parameter must be a float in (0, 1). Got {ci!r} instead.")
    if ci is not None and (int(n_boot) != n_boot or n_boot < 2):
        raise OodbenchError(f"The 'n_boot' parameter must be an int ≥ 2. Got {n_boot!r} instead.")
    labels = method_labels(records)
    frames = [
        _record_rows(r, lab, ci, int(n_boot), seed) for r, lab in zip(records, labels, strict=True)
    ]
    df = pd.concat(frames, ignore_index=True)
    if any(r.shift_scores for r in records):
        df = _add_shift_columns(df, records, labels)
    if baseline is not None:
        df = _add_deltas(df, baseline)
    df.attrs["provenance"] = provenance(records)
    df.attrs["baseline"] = baseline
    return df


def method_labels(records: Sequence[ScoreRecord]) -> list[str]:
    """Method labels, made unique per (model, benchmark) by the head when needed."""
    keys = [(r.model, r.benchmark, r.label) for r in records]
    labels = [
        f"{r.label}[{r.head}]" if keys.count(k) > 1 else r.label
        for r, k in zip(records, keys, strict=True)
    ]
    seen: set[tuple[str, str, str]] = set()
    for r, lab in zip(records, labels, strict=True):
        key = (r.model, r.benchmark, lab)
        if key in seen:
            raise OodbenchError(
                f"Two score records for model {r.model!r}, benchmark {r.benchmark!r}, method "
                f"{lab!r}: pass each (model, benchmark, method) once."
            )
        seen.add(key)
    return labels


def _aggregates(groups: dict[str, str], names: Sequence[str]) -> list[tuple[str, str, list[int]]]:
    """(ood name, group, indices of the averaged sets) of the averaged rows of one record."""
    order = {"near": 0, "far": 1}
    present = sorted({groups.get(n, "other") for n in names}, key=lambda g: (order.get(g, 2), g))
    out = [
        (f"{g} avg", g, [i for i, n in enumerate(names) if groups.get(n, "other") == g])
        for g in present
    ]
    return [*out, ("avg", "avg", list(range(len(names))))]


def _set_names(rec: ScoreRecord) -> list[str]:
    """OoD set names of a record: near first, then far, then any other group (stable)."""
    order = {"near": 0, "far": 1}
    names = sorted(rec.ood_scores, key=lambda n: order.get(rec.groups.get(n, "other"), 2))
    if not names:
        raise OodbenchError(f"Record {rec.model}/{rec.benchmark}/{rec.label} has no OoD scores.")
    clash = [n for n in names if n == "avg" or n.endswith(" avg")]
    if clash:
        raise OodbenchError(f"OoD set names {clash} clash with averaged rows: rename the sets.")
    return names


def _record_rows(rec: ScoreRecord, label: str, ci: float | None, n_boot: int, seed: int):
    names = _set_names(rec)
    point = np.array(
        [[evaluate(rec.id_scores, rec.ood_scores[n])[m] for m in METRICS] for n in names]
    )
    aggs = _aggregates(rec.groups, names)
    oods = names + [a[0] for a in aggs]
    groups = [rec.groups.get(n, "other") for n in names] + [a[1] for a in aggs]
    values = np.vstack([point] + [point[idx].mean(0, keepdims=True) for _, _, idx in aggs])
    df = pd.DataFrame(values, columns=list(METRICS))
    df.insert(0, "group", groups)
    df.insert(0, "ood", oods)
    df.insert(0, "method", label)
    df.insert(0, "benchmark", rec.benchmark)
    df.insert(0, "model", rec.model)
    df["accuracy"] = float(rec.accuracy)
    if ci is not None:
        key = f"{rec.model}\0{rec.benchmark}\0{label}".encode()
        rng = np.random.default_rng([seed, zlib.crc32(key)])
        boot = bootstrap(rec.id_scores, [rec.ood_scores[n] for n in names], n_boot, rng)
        boot = np.concatenate([boot] + [boot[idx].mean(0, keepdims=True) for _, _, idx in aggs])
        lo, hi = np.percentile(boot, [50 * (1 - ci), 50 * (1 + ci)], axis=1)
        for j, m in enumerate(METRICS):
            df[f"{m}_lo"], df[f"{m}_hi"] = lo[:, j], hi[:, j]
    return df


def _add_deltas(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    models = list(dict.fromkeys(df["model"]))
    if baseline not in models:
        raise OodbenchError(
            f"Baseline model {baseline!r} is not among the records. Models present: "
            f"{', '.join(models)}."
        )
    on = ["benchmark", "method", "ood"]
    values = [m for m in (*VALUES, *SET_SHIFT_METRICS, *RECORD_SHIFT_METRICS) if m in df]
    base = df.loc[df["model"] == baseline, on + values]
    merged = df[on].merge(base, on=on, how="left")
    for m in values:
        df[f"d_{m}"] = df[m].to_numpy() - merged[m].to_numpy()
    return df


# --------------------------------------------------------------------------- covariate shift


def _known(correct: np.ndarray) -> np.ndarray:
    return np.asarray(correct).astype(np.int64) >= 0


def _shift_correct(rec: ScoreRecord, name: str) -> np.ndarray | None:
    c = rec.shift_correct.get(name)
    return None if c is None else np.asarray(c, np.int8)


def shift_accuracy_of(rec: ScoreRecord, name: str) -> float:
    """Head accuracy on one shift set from the stored correctness (NaN when not stored)."""
    c = _shift_correct(rec, name)
    if c is None or not _known(c).any():
        return math.nan
    return float(np.mean(c[_known(c)] == 1))


def _failure(conf_list: list[np.ndarray], correct_list: list[np.ndarray | None]) -> dict[str, float]:
    """:func:`~oodbench.metrics.failure_metrics` on the pooled rows with a known label; NaN
    when correctness is missing (failure AUROC also when all predictions are right or all wrong)."""
    if not conf_list or any(c is None for c in correct_list):
        return dict.fromkeys(FAILURE, math.nan)
    conf = np.concatenate([np.asarray(x, np.float64) for x in conf_list])
    corr = np.concatenate([np.asarray(c).astype(np.int64) for c in correct_list])
    conf, corr = conf[corr >= 0], corr[corr >= 0] == 1
    if not corr.size:
        return dict.fromkeys(FAILURE, math.nan)
    return failure_metrics(conf, corr)


def record_shift_metrics(rec: ScoreRecord) -> dict[str, float]:
    """The :data:`RECORD_SHIFT_METRICS` of one record (NaN where its file lacks the data)."""
    names = list(rec.shift_scores)
    accs = [shift_accuracy_of(rec, n) for n in names]
    out = {"shift_accuracy": float(np.mean(accs)) if accs else math.nan}
    id_correct = None if rec.id_correct is None else np.asarray(rec.id_correct, np.int8)
    out.update(_failure([rec.id_scores], [id_correct]))
    shift = _failure([rec.shift_scores[n] for n in names], [_shift_correct(rec, n) for n in names])
    out.update({f"{m}_shift": v for m, v in shift.items()})
    return out


def _add_shift_columns(df: pd.DataFrame, records: list[ScoreRecord], labels: list[str]) -> pd.DataFrame:
    """``fsood_auroc`` per OoD row (averaged rows: the mean of their sets) and the
    :data:`RECORD_SHIFT_METRICS` per record; NaN for records without shift sets."""
    fsood = np.full(len(df), math.nan)
    rec_cols = {m: np.full(len(df), math.nan) for m in RECORD_SHIFT_METRICS}
    for rec, lab in zip(records, labels, strict=True):
        mask = ((df["model"] == rec.model) & (df["benchmark"] == rec.benchmark) & (df["method"] == lab)).to_numpy()
        if not rec.shift_scores:
            continue
        shift = list(rec.shift_scores.values())
        per_set = {n: fsood_auroc(rec.id_scores, shift, s) for n, s in rec.ood_scores.items()}
        names = _set_names(rec)
        aggs = {name: [names[i] for i in idx] for name, _, idx in _aggregates(rec.groups, names)}
        for i in np.flatnonzero(mask):
            ood = df["ood"].iat[i]
            fsood[i] = per_set[ood] if ood in per_set else float(np.mean([per_set[n] for n in aggs[ood]]))
        for m, v in record_shift_metrics(rec).items():
            rec_cols[m][mask] = v
    df["fsood_auroc"] = fsood
    for m, v in rec_cols.items():
        df[m] = v
    return df


def _head_ece(rec: ScoreRecord, keys: list[str], correct: list[np.ndarray | None]) -> float:
    """15-bin ECE of the head's max softmax probability on the pooled sets ``keys``."""
    from .metrics import ece

    conf = [rec.head_confidence.get(k) for k in keys]
    if not keys or any(c is None for c in conf) or any(c is None for c in correct):
        return math.nan
    corr = np.concatenate([np.asarray(c).astype(np.int64) for c in correct])
    return ece(np.concatenate(conf)[corr >= 0], corr[corr >= 0] == 1)


def failure_table(records: list[ScoreRecord]) -> pd.DataFrame:
    """Robustness and failure detection, one row per (model, benchmark, method) with shift sets.

    Columns: ``model, benchmark, method, accuracy`` (ID test), ``shift_accuracy:<set>`` per
    shift set and ``shift_accuracy`` (their unweighted mean), ``effective_robustness:<set>``
    where the catalogue gave the set a reference line, the failure-detection metrics of the
    score (higher score = more confident) on the ID test split (``failure_auroc, aurc,
    eaurc``) and on the shift sets pooled (``*_shift``), and ``ece`` / ``ece_shift``: the
    15-bin ECE of the head's maximum softmax probability (the same for every method of one
    model and head). Fractions; NaN where a scores file lacks the data.
    """
    from .metrics import effective_robustness

    recs = [r for r in records if r.shift_scores]
    if not recs:
        raise OodbenchError("No score record has covariate-shift scores: add a 'shift:' set to the "
                            "benchmark, extract it and rerun `oodbench score`.")
    labels = method_labels(recs)
    rows = []
    for rec, lab in zip(recs, labels, strict=True):
        row: dict[str, Any] = {"model": rec.model, "benchmark": rec.benchmark, "method": lab,
                               "accuracy": float(rec.accuracy)}
        for n in rec.shift_scores:
            row[f"shift_accuracy:{n}"] = shift_accuracy_of(rec, n)
        row.update(record_shift_metrics(rec))
        for n, info in rec.shift_sets.items():
            ref = (info or {}).get("reference")
            if ref and n in rec.shift_scores:
                row[f"effective_robustness:{n}"] = effective_robustness(
                    rec.accuracy, row[f"shift_accuracy:{n}"], float(ref[0]), float(ref[1]))
        id_corr = None if rec.id_correct is None else np.asarray(rec.id_correct, np.int8)
        row["ece"] = _head_ece(rec, ["id"], [id_corr])
        names = list(rec.shift_scores)
        row["ece_shift"] = _head_ece(rec, names, [_shift_correct(rec, n) for n in names])
        rows.append(row)
    return pd.DataFrame(rows)


def provenance(records: Sequence[ScoreRecord]) -> list[dict[str, Any]]:
    """One entry per model: store path, fingerprint prefix, oodbench version, params per method.

    Read from each record's ``fingerprint``, ``params`` and ``provenance`` (keys ``store``
    or ``store_path``, and ``oodbench_version`` or ``version``).
    """
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        p = r.provenance or {}
        entry = out.setdefault(
            r.model,
            {
                "model": r.model,
                "store": str(p.get("store", p.get("store_path", "?"))),
                "fingerprint": str(r.fingerprint)[:12],
                "oodbench_version": str(p.get("oodbench_version", p.get("version", "?"))),
                "params": {},
            },
        )
        entry["params"][f"{r.benchmark}/{r.label}"] = _jsonable(r.params)
    return list(out.values())


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


# --------------------------------------------------------------------------- bootstrap


def bootstrap(
    id_scores: np.ndarray, ood_sets: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap replicates of every metric of :func:`~oodbench.metrics.evaluate`.

    ID and OoD scores are resampled independently; each replicate draws one ID resample
    shared by all OoD sets. Vectorised: per (ID, OoD) pair the joint scores are sorted once
    and each replicate only counts resampled indices per tie group (``np.bincount``);
    blocks of replicates run on a few threads (numpy releases the GIL). The random draws
    happen in a fixed order, so results depend on ``rng`` only, not on the thread count.

    Args:
        id_scores: (N_id,) ID scores.
        ood_sets: K arrays of (N_k,) OoD scores.
        n_boot: replicates B.
        rng: random generator.

    Returns:
        (K, B, len(METRICS)) metric values, columns in ``METRICS`` order.
    """
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    pairs = [_tie_groups(id_scores, np.asarray(o, dtype=np.float64).ravel()) for o in ood_sets]
    n = id_scores.size
    width = max(n + g_ood.size + n_groups for _, g_ood, n_groups in pairs)
    chunk = max(1, min(n_boot, 1_000_000 // width))  # a few MB per block
    out = np.empty((len(pairs), n_boot, len(METRICS)))
    workers = max(1, min(8, os.cpu_count() or 1))

    def block(k: int, start: int, id_idx: np.ndarray, ood_idx: np.ndarray) -> None:
        g_id, g_ood, n_groups = pairs[k]
        out[k, start : start + len(id_idx)] = _metrics_from_groups(
            g_id[id_idx], g_ood[ood_idx], n_groups
        )

    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for start in range(0, n_boot, chunk):
            b = min(chunk, n_boot - start)
            id_idx = rng.integers(0, n, size=(b, n))
            for k, (_, g_ood, _) in enumerate(pairs):
                ood_idx = rng.integers(0, g_ood.size, size=(b, g_ood.size))
                pending.append(pool.submit(block, k, start, id_idx, ood_idx))
                while len(pending) > 2 * workers:
                    pending.popleft().result()
        for f in pending:
            f.result()
    return out


def _tie_groups(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Tie-group index of each sample in descending score order: (g_pos, g_neg, n_groups)."""
    z = np.concatenate([pos, neg])
    order = np.argsort(-z, kind="mergesort")
    zs = z[order]
    g_sorted = np.cumsum(np.r_[True, zs[1:] != zs[:-1]]) - 1
    g = np.empty_like(g_sorted)
    g[order] = g_sorted
    return g[: pos.size], g[pos.size :], int(g_sorted[-1]) + 1


def _group_counts(g: np.ndarray, n_groups: int) -> np.ndarray:
    """(B, n) group indices -> (B, n_groups) counts per group."""
    b = g.shape[0]
    flat = (g + (np.arange(b) * n_groups)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups)


def _metrics_from_groups(
    g_pos: np.ndarray, g_neg: np.ndarray, n_groups: int, level: float = 0.95
) -> np.ndarray:
    """Metrics of B resamples given (B, n_pos) and (B, n_neg) tie-group indices -> (B, 5).

    Mirrors :func:`oodbench.metrics.evaluate` (same ROC points, ties count 1/2, same FPR
    rule) from per-group counts in descending score order. Counts are float32 (exact below
    2**24 samples) and sums float64: results agree with ``evaluate`` to ~1e-9.
    """
    n, m = g_pos.shape[1], g_neg.shape[1]
    tp = _group_counts(g_pos, n_groups).astype(np.float32)
    fp = _group_counts(g_neg, n_groups).astype(np.float32)
    TP, FP = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    rows = np.arange(tp.shape[0])
    # AUROC: each OoD sample counts the ID samples strictly above it plus half its ties.
    auroc = (2 * _rowdot(fp, TP) - _rowdot(fp, tp)) / (2.0 * n * m)
    # FPR@95 (ID positive): first group whose cumulative ID count reaches the level.
    k = np.argmax(TP >= _count_at(level, n), axis=1)
    fpr95 = FP[rows, k].astype(np.float64) / m
    # FPR@95 (OoD positive, -score): the lowest group g whose "OoD at or below g" count
    # m - FP[g-1] reaches the level; report the ID share at or below it, n - TP[g-1].
    k = np.sum(FP[:, :-1] <= m - _count_at(level, m), axis=1)
    fpr95_ood = (n - np.where(k > 0, TP[rows, k - 1], 0).astype(np.float64)) / n
    # Step-wise average precision: ID positive (descending), OoD positive (ascending).
    seen = TP + FP
    below = (n + m) - seen  # samples at or below each group: N - seen + tp + fp
    below += tp
    below += fp
    np.maximum(seen, 1, out=seen)
    aupr_in = _rowdot(tp, np.divide(TP, seen, out=seen)) / n
    np.maximum(below, 1, out=below)
    ood_below = np.subtract(m, FP, out=FP)
    ood_below += fp
    aupr_out = _rowdot(fp, np.divide(ood_below, below, out=below)) / m
    return np.stack([auroc, fpr95, fpr95_ood, aupr_in, aupr_out], axis=1)


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b, dtype=np.float64)


def _count_at(level: float, n: int) -> int:
    """Smallest count c with c / n >= level (the tolerance of metrics._fpr_at)."""
    return int(np.searchsorted(np.arange(n + 1) / n, level - 1e-12, side="left"))
