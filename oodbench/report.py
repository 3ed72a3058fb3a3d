"""Result tables from :class:`~oodbench.results.ScoreRecord` lists, and their renderings.

:func:`metrics_table` turns records into one tidy :class:`pandas.DataFrame` (one row per
model × benchmark × method × OoD set, plus ``near avg`` / ``far avg`` / ``avg`` rows that
average the sets of a group unweighted, OpenOOD style), optionally with seeded bootstrap
intervals and differences to a baseline model. :func:`render` formats that frame for the
terminal (rich), Markdown, LaTeX (booktabs), CSV or JSON. :func:`save_plots` draws figures
(see :mod:`oodbench.plots`).

Conventions are those of :mod:`oodbench.metrics`: higher score = more in-distribution, ID is
the positive class of ``auroc``/``fpr95``/``aupr_in``; ``fpr95`` is the classic (MCM) FPR@95
and ``fpr95_ood`` the OpenOOD v1.5 one. The frame holds fractions; tables show percentages.
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .errors import OodbenchError
from .metrics import HIGHER_IS_BETTER, LABELS, METRICS, evaluate
from .results import ScoreRecord

KEYS = ("model", "benchmark", "method", "ood")
VALUES = (*METRICS, "accuracy")
FORMATS = ("rich", "markdown", "csv", "json", "latex")
FPR_CONVENTIONS = {"id": ("fpr95",), "ood": ("fpr95_ood",), "both": ("fpr95", "fpr95_ood")}
CONVENTION_NOTE = (
    f"{LABELS['fpr95']}: fraction of OoD accepted at 95% ID TPR (ID positive; classic, MCM). "
    f"{LABELS['fpr95_ood']}: fraction of ID rejected at 95% OoD TPR (OoD positive; OpenOOD v1.5). "
    "AUPR: step-wise average precision."
)


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
        holds :func:`provenance` of the records (used by :func:`render`).
    """
    if not records:
        raise OodbenchError("No score records to report: run `oodbench score` first.")
    if ci is not None and not 0 < ci < 1:
        raise OodbenchError(f"The 'ci' parameter must be a float in (0, 1). Got {ci!r} instead.")
    if ci is not None and (int(n_boot) != n_boot or n_boot < 2):
        raise OodbenchError(f"The 'n_boot' parameter must be an int ≥ 2. Got {n_boot!r} instead.")
    labels = _labels(records)
    frames = [
        _record_rows(r, lab, ci, int(n_boot), seed) for r, lab in zip(records, labels, strict=True)
    ]
    df = pd.concat(frames, ignore_index=True)
    if baseline is not None:
        df = _add_deltas(df, baseline)
    df.attrs["provenance"] = provenance(records)
    df.attrs["baseline"] = baseline
    return df


def _labels(records: Sequence[ScoreRecord]) -> list[str]:
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
    base = df.loc[df["model"] == baseline, on + list(VALUES)]
    merged = df[on].merge(base, on=on, how="left")
    for m in VALUES:
        df[f"d_{m}"] = df[m].to_numpy() - merged[m].to_numpy()
    return df


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


# --------------------------------------------------------------------------- rendering


def render(
    df: pd.DataFrame,
    fmt: str = "rich",
    *,
    metrics: tuple[str, ...] = ("auroc", "fpr95"),
    fpr_convention: str = "id",
    title: str | None = None,
    provenance: list[dict] | None = None,
    standalone: bool = False,
) -> Any:
    """Format a :func:`metrics_table` frame.

    Args:
        df: the tidy frame.
        fmt: ``rich`` (a :class:`rich.table.Table`), ``markdown``, ``latex``, ``csv`` (the
            tidy frame, fractions, all columns, after one ``#`` comment line naming the
            conventions: read it with ``pd.read_csv(f, comment="#")``) or ``json``
            (``{"conventions", "title", "records", "provenance"}``).
        metrics: metrics shown per OoD set in rich/markdown/latex (ID accuracy is always
            the last column); ``fpr95`` stands for the FPR@95 of ``fpr_convention``.
        fpr_convention: ``id`` (``fpr95``, ID positive, classic MCM), ``ood``
            (``fpr95_ood``, OoD positive, OpenOOD v1.5) or ``both``.
        title: table title / caption.
        provenance: per-model provenance (:func:`provenance`); defaults to
            ``df.attrs["provenance"]``.
        standalone: LaTeX only: a complete compilable document instead of a table float.

    Returns:
        A rich Table for ``rich``, else a string. Wide tables show percentages with two
        decimals, ``±`` the half-width of the bootstrap interval when present and the
        difference to the baseline model in parentheses when present.
    """
    if fmt not in FORMATS:
        raise OodbenchError(f"Unknown report format {fmt!r}. Available: {', '.join(FORMATS)}.")
    if fpr_convention not in FPR_CONVENTIONS:
        raise OodbenchError(
            f"The 'fpr_convention' parameter must be one of {', '.join(FPR_CONVENTIONS)}. "
            f"Got {fpr_convention!r} instead."
        )
    prov = provenance if provenance is not None else df.attrs.get("provenance", [])
    if fmt == "csv":
        return _csv(df)
    if fmt == "json":
        return _json(df, title, prov)
    wide = _Wide(df, _expand_metrics(metrics, fpr_convention))
    if fmt == "rich":
        return _rich(wide, title)
    if fmt == "markdown":
        return _markdown(wide, title, prov)
    return _latex(wide, title, prov, standalone)


def _expand_metrics(metrics: Sequence[str], convention: str) -> list[str]:
    out: list[str] = []
    for m in metrics:
        for name in FPR_CONVENTIONS[convention] if m == "fpr95" else (m,):
            if name not in METRICS:
                raise OodbenchError(f"Unknown metric {name!r}. Available: {', '.join(METRICS)}.")
            if name not in out:
                out.append(name)
    return out


class _Wide:
    """The wide layout shared by rich/markdown/latex: rows = (benchmark, model, method),
    columns = (ood, metric) with OoD sets first, then averages, then ID accuracy."""

    def __init__(self, df: pd.DataFrame, metrics: list[str]):
        self.df, self.metrics = df, metrics
        is_agg = df["ood"].str.endswith(" avg") | (df["ood"] == "avg")
        order = {"near": 0, "far": 1}
        sets = list(dict.fromkeys(df.loc[~is_agg, "ood"]))
        first_group = df.loc[~is_agg].groupby("ood", sort=False)["group"].first()
        sets.sort(key=lambda s: order.get(first_group[s], 2))
        aggs = list(dict.fromkeys(df.loc[is_agg, "ood"]))
        aggs.sort(key=lambda a: (a == "avg", order.get(a.split(" ")[0], 2)))
        self.oods = sets + aggs
        self.columns = [(o, m) for o in self.oods for m in metrics] + [("", "accuracy")]
        rows = dict.fromkeys(zip(df["benchmark"], df["model"], df["method"], strict=True))
        benches = {b: i for i, b in enumerate(dict.fromkeys(df["benchmark"]))}
        self.rows = sorted(rows, key=lambda r: benches[r[0]])  # stable: benchmark blocks
        self.index = {(r.benchmark, r.model, r.method, r.ood): r for r in df.itertuples()}
        self.several_models = df["model"].nunique() > 1
        self.several_benchmarks = df["benchmark"].nunique() > 1

    @property
    def key_names(self) -> list[str]:
        return (
            (["Benchmark"] if self.several_benchmarks else [])
            + (["Model"] if self.several_models else [])
            + ["Method"]
        )

    def keys(self, row: tuple[str, str, str]) -> list[str]:
        b, model, method = row
        return (
            ([b] if self.several_benchmarks else [])
            + ([model] if self.several_models else [])
            + [method]
        )

    def value(self, row, col) -> tuple[float, float | None, float | None]:
        """(value, CI half-width or None, delta or None); value NaN when absent."""
        ood, m = col
        r = self.index.get((*row, ood)) if ood else self.index.get((*row, "avg"))
        if r is None:
            return math.nan, None, None
        v = getattr(r, m)
        lo, hi = getattr(r, f"{m}_lo", None), getattr(r, f"{m}_hi", None)
        half = (hi - lo) / 2 if lo is not None and hi is not None else None
        return v, half, getattr(r, f"d_{m}", None)

    def ranks(self) -> dict[tuple, int]:
        """(row, col) -> 1 for the best, 2 for the second best value of its column within
        its benchmark (compared at display precision; ties share a rank)."""
        out: dict[tuple, int] = {}
        for bench in dict.fromkeys(r[0] for r in self.rows):
            rows = [r for r in self.rows if r[0] == bench]
            for col in self.columns:
                vals = {r: round(100 * self.value(r, col)[0], 2) for r in rows}
                vals = {r: v for r, v in vals.items() if not math.isnan(v)}
                if len(vals) < 2:
                    continue
                sign = 1 if HIGHER_IS_BETTER[col[1]] else -1
                distinct = sorted(set(vals.values()), key=lambda v: -sign * v)
                for r, v in vals.items():
                    if v in distinct[:2]:
                        out[(r, col)] = distinct.index(v) + 1
        return out

    def show_delta(self, row, delta: float | None) -> bool:
        """Deltas are shown for every model but the baseline (``df.attrs["baseline"]``)."""
        if delta is None or math.isnan(delta):
            return False
        return row[1] != self.df.attrs.get("baseline")

    def header(self, col) -> tuple[str, str]:
        ood, m = col
        return ood, LABELS[m]


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def _plain_cell(wide: _Wide, row, col) -> str:
    v, half, delta = wide.value(row, col)
    text = _pct(v)
    if half is not None and not math.isnan(v) and not math.isnan(half):
        text += f" ±{_pct(half)}"
    if wide.show_delta(row, delta):
        text += f" ({_pct(delta, signed=True)})"
    return text


def _rich(wide: _Wide, title: str | None):
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(title) if title else None, caption=CONVENTION_NOTE, caption_justify="left"
    )
    for name in wide.key_names:
        table.add_column(name, overflow="fold")
    for col in wide.columns:
        ood, label = wide.header(col)
        header = Text(f"{ood}\n{label}" if ood else label)  # Text: names are not markup
        table.add_column(header, justify="right", overflow="fold")
    ranks = wide.ranks()
    previous = None
    for row in wide.rows:
        if previous is not None and row[0] != previous:
            table.add_section()
        previous = row[0]
        cells = [Text(k) for k in wide.keys(row)]
        for col in wide.columns:
            style = {1: "bold", 2: "underline"}.get(ranks.get((row, col), 0), "")
            cells.append(Text(_plain_cell(wide, row, col), style=style))
        table.add_row(*cells)
    return table


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def _markdown(wide: _Wide, title: str | None, prov: list[dict]) -> str:
    heads = wide.key_names + [
        f"{ood} {label}" if ood else label for ood, label in map(wide.header, wide.columns)
    ]
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(_md_escape(h) for h in heads) + " |")
    lines.append("|" + "---|" * len(wide.key_names) + "---:|" * len(wide.columns))
    ranks = wide.ranks()
    for row in wide.rows:
        cells = [_md_escape(k) for k in wide.keys(row)]
        for col in wide.columns:
            text = _plain_cell(wide, row, col)
            mark = {1: "**", 2: "_"}.get(ranks.get((row, col), 0), "")
            cells.append(f"{mark}{text}{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Percent; best **bold**, second _italic_. {CONVENTION_NOTE}", ""]
    lines += _provenance_lines(prov, bullet="- ")
    return "\n".join(lines) + "\n"


def _provenance_lines(prov: list[dict], bullet: str) -> list[str]:
    if not prov:
        return []
    out = [f"Provenance (rendered by oodbench {__version__}):"]
    for p in prov:
        params = "; ".join(
            f"{k}={json.dumps(v, sort_keys=True)}" for k, v in p.get("params", {}).items()
        )
        out.append(
            f"{bullet}{p.get('model')}: store {p.get('store')}, fingerprint "
            f"{str(p.get('fingerprint'))[:12]}, oodbench {p.get('oodbench_version')}; "
            f"params: {params or 'none'}"
        )
    return out


def _csv(df: pd.DataFrame) -> str:
    import csv

    return f"# oodbench metrics as fractions. {CONVENTION_NOTE}\n" + df.to_csv(
        index=False, quoting=csv.QUOTE_NONNUMERIC
    )


def _json(df: pd.DataFrame, title: str | None, prov: list[dict]) -> str:
    records = [{k: _jsonable(v) for k, v in r.items()} for r in df.to_dict("records")]
    doc = {
        "conventions": {m: LABELS[m] for m in VALUES} | {"note": CONVENTION_NOTE},
        "title": title,
        "records": records,
        "provenance": _jsonable(prov),
        "oodbench_version": __version__,
    }
    return json.dumps(doc, indent=2, ensure_ascii=False)


# --------------------------------------------------------------------------- LaTeX

_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "±": r"$\pm$",
    "–": "--",
}
_TEX_RE = re.compile("|".join(re.escape(c) for c in _TEX))


def tex_escape(s: str) -> str:
    """Escape LaTeX special characters (``\\ & % $ # _ { } ~ ^``) and arrows in ``s``."""
    return _TEX_RE.sub(lambda m: _TEX[m.group()], str(s))


def _tex_cell(wide: _Wide, row, col, rank: int) -> str:
    v, half, delta = wide.value(row, col)
    if math.isnan(v):
        return "--"
    text = _pct(v)
    text = {1: rf"\textbf{{{text}}}", 2: rf"\underline{{{text}}}"}.get(rank, text)
    if half is not None and not math.isnan(half):
        text += rf"{{\scriptsize$\pm${_pct(half)}}}"
    if wide.show_delta(row, delta):
        text += rf" {{\scriptsize({_pct(delta, signed=True)})}}"
    return text


def _latex(wide: _Wide, title: str | None, prov: list[dict], standalone: bool) -> str:
    caption = tex_escape((title + ". ") if title else "") + tex_escape(
        f"Percent; best bold, second underlined. {CONVENTION_NOTE}"
    )
    tabular = _tex_tabular(wide)
    if standalone:  # shrink a table wider than the page to fit it (graphicx)
        tabular = [
            r"\sbox{\oodbenchbox}{%",
            *tabular,
            "}",
            r"\ifdim\wd\oodbenchbox>\linewidth \resizebox{\linewidth}{!}{\usebox{\oodbenchbox}}%",
            r"\else\usebox{\oodbenchbox}\fi",
        ]
    lines = [_tex_comment(f"% {line}") for line in _provenance_lines(prov, bullet="  ")]
    lines += [
        "% requires \\usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{caption}}}",
        *tabular,
        r"\end{table}",
    ]
    if standalone:
        lines = [
            r"\documentclass{article}",
            r"\usepackage[T1]{fontenc}",
            r"\usepackage{booktabs}",
            r"\usepackage{graphicx}",
            r"\usepackage[landscape,margin=1.5cm]{geometry}",
            r"\newsavebox{\oodbenchbox}",
            r"\begin{document}",
            *lines,
            r"\end{document}",
        ]
    return "\n".join(lines) + "\n"


def _tex_tabular(wide: _Wide) -> list[str]:
    """The booktabs tabular: a row of OoD set names over a row of metric labels."""
    nk, nm = len(wide.key_names), len(wide.metrics)
    top, rules, pos = [""] * nk, [], nk + 1
    for ood in wide.oods:
        top.append(rf"\multicolumn{{{nm}}}{{c}}{{{tex_escape(ood)}}}")
        rules.append(rf"\cmidrule(lr){{{pos}-{pos + nm - 1}}}")
        pos += nm
    top.append("")
    second = [tex_escape(k) for k in wide.key_names]
    second += [tex_escape(wide.header(c)[1]) for c in wide.columns]
    ranks = wide.ranks()
    body, previous = [], None
    for row in wide.rows:
        if previous is not None and row[0] != previous:
            body.append(r"\midrule")
        previous = row[0]
        cells = [tex_escape(k) for k in wide.keys(row)]
        cells += [_tex_cell(wide, row, c, ranks.get((row, c), 0)) for c in wide.columns]
        body.append(" & ".join(cells) + r" \\")
    return [
        rf"\begin{{tabular}}{{{'l' * nk + 'r' * len(wide.columns)}}}",
        r"\toprule",
        " & ".join(top) + r" \\",
        " ".join(rules),
        " & ".join(second) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]


def _tex_comment(line: str) -> str:
    """One safe comment line: no newlines, no ``^^`` (TeX reads it even in comments)."""
    return re.sub(r"[\r\n]+", " ", line).replace("^^", "^ ^")


# --------------------------------------------------------------------------- plots


def save_plots(
    records: list[ScoreRecord], out_dir: Path, *, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write the report figures; see :func:`oodbench.plots.save_plots`."""
    from .plots import save_plots as _save_plots

    return _save_plots(records, out_dir, formats=formats)
