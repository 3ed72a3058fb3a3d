"""Report figures from score records (matplotlib, Agg; no pyplot, no global state).

Figures (one file per format each), for every benchmark:

* ``hist_<bench>_<model>_<method>``: ID vs OoD score histograms, one panel per OoD set;
* ``roc_<bench>_<method>``: ROC curves (ID positive), one panel per model, a curve per set;
* ``heatmap_<bench>``: average AUROC over all OoD sets, methods x models;
* ``wise_alpha_<bench>``: average AUROC / FPR@95 (and ID accuracy) against WiSE-FT alpha,
  one line per method, when records carry ``provenance["wise_alpha"]``;
* ``layer_<bench>``: the same against ``provenance["layer"]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import OodbenchError
from .fsutil import atomic_path
from .metrics import LABELS, _roc
from .results import ScoreRecord
from .tables import method_labels, metrics_table

SWEEPS = {"wise_alpha": "WiSE-FT alpha", "layer": "layer"}


def save_plots(
    records: list[ScoreRecord], out_dir: Path, *, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write every figure of this module for ``records`` into ``out_dir``.

    Args:
        records: score records (higher score = more ID).
        out_dir: created if missing.
        formats: file formats understood by matplotlib (``png``, ``pdf``, ``svg``...).

    Returns:
        Paths written, in order.
    """
    if not records:
        raise OodbenchError("No score records to plot: run `oodbench score` first.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out_dir, tuple(formats))
    table = metrics_table(records)
    labelled = list(zip(records, method_labels(records), strict=True))  # labels as in the table
    for bench in dict.fromkeys(r.benchmark for r in records):
        recs = [(r, lab) for r, lab in labelled if r.benchmark == bench]
        avg = table[(table["benchmark"] == bench) & (table["ood"] == "avg")]
        for r, lab in recs:
            writer.save(_histograms(r, lab), "hist", bench, r.model, lab)
        for method in dict.fromkeys(lab for _, lab in recs):
            writer.save(
                _rocs([r for r, lab in recs if lab == method], method), "roc", bench, method
            )
        writer.save(_heatmap(avg, bench), "heatmap", bench)
        for key, name in SWEEPS.items():
            swept = [(r, lab) for r, lab in recs if key in (r.provenance or {})]
            if swept:
                writer.save(_sweep(swept, avg, key, name, bench), key, bench)
    return writer.paths


class _Writer:
    """Saves figures under unique, file-system-safe names."""

    def __init__(self, out_dir: Path, formats: tuple[str, ...]):
        self.out_dir, self.formats, self.paths = out_dir, formats, []
        self._used: set[str] = set()

    def save(self, fig: Figure, *parts: str) -> None:
        stem = "_".join(re.sub(r"[^A-Za-z0-9_.=-]+", "-", str(p)).strip("-") for p in parts)
        base, i = stem, 1
        while stem in self._used:
            i += 1
            stem = f"{base}-{i}"
        self._used.add(stem)
        FigureCanvasAgg(fig)
        fig.draw_without_rendering()  # lay out once, not once per format
        fig.set_layout_engine("none")
        for fmt in self.formats:
            path = self.out_dir / f"{stem}.{fmt}"
            with atomic_path(path) as tmp:  # a killed run leaves the previous figure, never a torn one
                fig.savefig(tmp, format=fmt, metadata=_metadata(fmt))
            self.paths.append(path)


def _metadata(fmt: str) -> dict | None:
    return {"CreationDate": None} if fmt == "pdf" else None


def _grid(n: int, width: float = 3.6, height: float = 2.8) -> tuple[Figure, list]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _plot_axis(scores: np.ndarray) -> tuple[float, float]:
    """(centre, scale) so that (s - centre) / scale is drawable; (0, 1) for ordinary scores.

    Scores of huge magnitude (> 1e100) or a spread below float64 resolution at their magnitude
    (e.g. a constant 1e308) cannot be binned or ticked as they are; they are drawn shifted by
    their median and divided by their largest deviation (halved first, so nothing overflows).
    """
    finite = scores[np.isfinite(scores)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    mag = max(abs(lo), abs(hi))
    if mag < 1e100 and hi - lo > 1e-9 * mag:
        return 0.0, 1.0
    centre = float(np.partition(finite, finite.size // 2)[finite.size // 2])  # a median without averaging (no overflow)
    half = float(np.abs(finite / 2 - centre / 2).max())
    return centre, (2 * half if 0 < half < 1e300 else 1.0)


def _scaled(values: np.ndarray, centre: float, scale: float) -> np.ndarray:
    if (centre, scale) == (0.0, 1.0):
        return values
    with np.errstate(over="ignore", invalid="ignore"):
        return (values / 2 - centre / 2) / (scale / 2)


def _histograms(rec: ScoreRecord, label: str) -> Figure:
    names = list(rec.ood_scores)
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names, strict=True):
        ood = np.asarray(rec.ood_scores[name], dtype=np.float64)
        ids = np.asarray(rec.id_scores, dtype=np.float64)
        centre, scale = _plot_axis(np.concatenate([ids, ood]))
        ids, ood = _scaled(ids, centre, scale), _scaled(ood, centre, scale)
        both = np.concatenate([ids, ood])
        bins = np.histogram_bin_edges(both[np.isfinite(both)], bins=50)
        kw = {"bins": bins, "density": True, "alpha": 0.55, "histtype": "stepfilled"}  # 1 patch
        ax.hist(ids, label="ID test", **kw)
        ax.hist(ood, label=f"{name} ({rec.groups.get(name, '?')})", **kw)
        ax.set_title(name, fontsize=9)
        shifted = "" if (centre, scale) == (0.0, 1.0) else f" − {centre:.6g}" + (f", ÷ {scale:.3g}" if scale != 1 else "")
        ax.set_xlabel(f"score{shifted} (higher = more ID)", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{rec.benchmark} · {rec.model} · {label}", fontsize=10)
    return fig


def _rocs(recs: list[ScoreRecord], label: str) -> Figure:
    fig, axes = _grid(len(recs), 3.4, 3.2)
    for ax, rec in zip(axes, recs, strict=True):
        for name, ood in rec.ood_scores.items():
            tpr, fpr, _ = _roc(np.asarray(rec.id_scores, float), np.asarray(ood, float))
            style = "-" if rec.groups.get(name) == "near" else "--"
            ax.plot(fpr, tpr, style, lw=1.2, label=name)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="FPR (OoD accepted)", ylabel="TPR (ID accepted)")
        ax.set_title(rec.model, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"ROC (ID positive; near solid, far dashed) · {label}", fontsize=10)
    return fig


def _heatmap(avg, bench: str) -> Figure:
    grid = avg.pivot_table(index="method", columns="model", values="auroc", sort=False)
    fig = Figure(
        figsize=(1.6 + 1.1 * grid.shape[1], 1.2 + 0.45 * grid.shape[0]), layout="constrained"
    )
    ax = fig.subplots()
    image = ax.imshow(100 * grid.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    low, high = image.get_clim()
    for (i, j), v in np.ndenumerate(100 * grid.to_numpy()):
        if np.isfinite(v):
            dark = v < low + 0.6 * (high - low)  # viridis: dark colours at the low end
            ax.text(
                j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="w" if dark else "k"
            )
    fig.colorbar(image, ax=ax, label=f"average {LABELS['auroc']} (%)")
    ax.set_title(f"{bench}: average AUROC over all OoD sets", fontsize=10)
    return fig


def _sweep(recs: list[tuple[ScoreRecord, str]], avg, key: str, name: str, bench: str) -> Figure:
    panels = [("auroc", LABELS["auroc"]), ("fpr95", LABELS["fpr95"])]
    if any(np.isfinite(r.accuracy) for r, _ in recs):
        panels.append(("accuracy", LABELS["accuracy"]))
    fig = Figure(figsize=(4 * len(panels), 3.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for method in dict.fromkeys(lab for _, lab in recs):
        mine = sorted(
            (r for r, lab in recs if lab == method), key=lambda r: float(r.provenance[key])
        )
        xs = [float(r.provenance[key]) for r in mine]
        for ax, (col, _) in zip(axes, panels, strict=True):
            ys = [_avg_value(avg, r.model, method, col) for r in mine]
            ax.plot(xs, [100 * y for y in ys], "o-", ms=3, label=method)
    for ax, (_, label) in zip(axes, panels, strict=True):
        ax.set(xlabel=name, ylabel=f"{label} (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{bench}: average over all OoD sets vs {name}", fontsize=10)
    return fig


def _avg_value(avg, model: str, method: str, col: str) -> float:
    hit = avg[(avg["model"] == model) & (avg["method"] == method)]
    return float(hit[col].iloc[0]) if len(hit) else math.nan
