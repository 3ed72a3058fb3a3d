"""Renderings of a :func:`~oodbench.tables.metrics_table` frame, and the report figures.

:func:`render` formats the tidy frame for the terminal (rich, an 80-column view by default),
Markdown, LaTeX (booktabs), CSV or JSON. :func:`save_plots` draws figures (see
:mod:`oodbench.plots`). The frame itself is built by :mod:`oodbench.tables` (re-exported here).

Conventions are those of :mod:`oodbench.metrics`: higher score = more in-distribution, ID is
the positive class of ``auroc``/``fpr95``/``aupr_in``; ``fpr95`` is the classic (MCM) FPR@95
and ``fpr95_ood`` the OpenOOD v1.5 one. The frame holds fractions; tables show percentages.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .errors import OodbenchError
from .metrics import HIGHER_IS_BETTER, LABELS, METRICS
from .results import ScoreRecord
from .tables import (
    SET_SHIFT_METRICS,
    VALUES,
    _jsonable,
    bootstrap,
    failure_table,
    metrics_table,
    provenance,
)

__all__ = ["FORMATS", "bootstrap", "failure_table", "metrics_table", "render_failure", "provenance", "render", "save_plots", "tex_escape"]

KEYS = ("model", "benchmark", "method", "ood")
FORMATS = ("rich", "markdown", "csv", "json", "latex")
LAYOUTS = ("compact", "wide")
HIGHLIGHT_RULE = "distinct values held by one row; never the worst possible value"
SHORT_NAME = 9
"""Longest OoD set name shown unabbreviated in the compact terminal view."""
FPR_CONVENTIONS = {"id": ("fpr95",), "ood": ("fpr95_ood",), "both": ("fpr95", "fpr95_ood")}
CONVENTION_NOTE = (
    f"{LABELS['fpr95']}: fraction of OoD accepted at 95% ID TPR (ID positive; classic, MCM). "
    f"{LABELS['fpr95_ood']}: fraction of ID rejected at 95% OoD TPR (OoD positive; OpenOOD v1.5). "
    "AUPR: step-wise average precision."
)
SHIFT_LABELS = {
    **LABELS,
    "failure_auroc": "Failure AUROC (ID)↑", "aurc": "AURC (ID)↓", "eaurc": "E-AURC (ID)↓",
    "failure_auroc_shift": "Failure AUROC (shift)↑", "aurc_shift": "AURC (shift)↓",
    "eaurc_shift": "E-AURC (shift)↓", "ece_shift": "ECE (shift)↓",
}
"""Column labels of the covariate-shift / failure-detection columns (tables.RECORD_SHIFT_METRICS)."""
SHIFT_HIGHER = {**HIGHER_IS_BETTER, **{f"{m}_shift": HIGHER_IS_BETTER[m] for m in ("failure_auroc", "aurc", "eaurc", "ece")}}
SHIFT_NOTE = (
    "Shift acc: head top-1 accuracy on covariate-shift sets (argmax over a set's class subset), "
    "mean over sets. FSOOD AUROC: ID test and all shift sets together positive vs each OoD set "
    "(OpenOOD v1.5). AURC/E-AURC (lower better) and failure AUROC (correct predictions positive) "
    "rank the score as a confidence (FD-Shifts) on the ID test split and on the shift sets pooled."
)
RECORD_METRIC_OPTIONS = {"shift_accuracy": ("shift_accuracy",),
                         **{m: (m, f"{m}_shift") for m in ("failure_auroc", "aurc", "eaurc")}}
"""--metric names of per-record shift columns -> the columns they add after ID accuracy."""


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
    layout: str = "compact",
) -> Any:
    """Format a :func:`metrics_table` frame.

    Args:
        df: the tidy frame.
        fmt: ``rich`` (a :class:`TerminalView`, printable by a rich console), ``markdown``, ``latex``, ``csv`` (the
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
        layout: rich only: ``compact`` (a table per metric, fitted to the console width) or
            ``wide`` (every metric per set in one table); see :class:`TerminalView`.

    Returns:
        A :class:`TerminalView` for ``rich``, else a string. Wide tables show percentages with two
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
    per_set, tail = _split_metrics(metrics, df)
    wide = _Wide(df, _expand_metrics(per_set, fpr_convention), tail)
    if fmt == "rich":
        return TerminalView(wide, title, layout)
    if fmt == "markdown":
        return _markdown(wide, title, prov)
    return _latex(wide, title, prov, standalone)


def _split_metrics(metrics: Sequence[str], df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(per-OoD-set metrics, per-record columns after ID accuracy) of a --metric list; the
    covariate-shift ones need a frame with shift columns (records scored with shift sets)."""
    per_set, tail = [], []
    for m in metrics:
        if m in RECORD_METRIC_OPTIONS or m in SET_SHIFT_METRICS:
            if m not in df and RECORD_METRIC_OPTIONS.get(m, (m,))[0] not in df:
                raise OodbenchError(
                    f"--metric {m} needs covariate-shift scores, which none of these records has: add a "
                    "'shift:' set to the benchmark, extract it and rerun `oodbench score`."
                )
        if m in RECORD_METRIC_OPTIONS:
            tail += [c for c in RECORD_METRIC_OPTIONS[m] if c not in tail]
        else:
            per_set.append(m)
    return per_set, tail


def _expand_metrics(metrics: Sequence[str], convention: str) -> list[str]:
    out: list[str] = []
    for m in metrics:
        for name in FPR_CONVENTIONS[convention] if m == "fpr95" else (m,):
            if name not in (*METRICS, *SET_SHIFT_METRICS):
                available = (*METRICS, *SET_SHIFT_METRICS, *RECORD_METRIC_OPTIONS)
                raise OodbenchError(f"Unknown metric {name!r}. Available: {', '.join(available)}.")
            if name not in out:
                out.append(name)
    return out


WORST = {"auroc": 0.0, "aupr_in": 0.0, "aupr_out": 0.0, "accuracy": 0.0, "fpr95": 100.0,
         "fpr95_ood": 100.0, "fsood_auroc": 0.0, "shift_accuracy": 0.0, "failure_auroc": 0.0,
         "failure_auroc_shift": 0.0}
"""The worst possible value (percent) of each table metric: never highlighted."""


def mark_ranks(values: dict[Any, float], higher_is_better: bool, worst: float | None = None) -> dict[Any, int]:
    """Which cells of one column to highlight: key -> 1 (best, bold) or 2 (second, underlined).

    ``values`` are percentages as displayed (NaN: absent). Ranks are those of the *distinct*
    values: the best value, then the next one. A rank marks a cell only when exactly one cell
    holds it (a tie singles nobody out), so a tied best marks nothing and a tied second no
    second; a column whose values are all equal marks nothing. ``worst``, the worst possible
    value (:data:`WORST`: 0 for AUROC/AUPR/accuracy, 100 for an FPR), is never marked.
    """
    vals = {k: v for k, v in values.items() if not math.isnan(v)}
    distinct = sorted(set(vals.values()), reverse=higher_is_better)
    out: dict[Any, int] = {}
    if len(distinct) < 2:
        return out
    for rank, v in enumerate(distinct[:2], start=1):
        holders = [k for k, x in vals.items() if x == v]
        if len(holders) != 1 or v == worst:
            break  # a tied or worst best leaves no meaningful second either
        out[holders[0]] = rank
    return out


class _Wide:
    """The wide layout shared by rich/markdown/latex: rows = (benchmark, model, method),
    columns = (ood, metric) with OoD sets first, then averages, then ID accuracy."""

    def __init__(self, df: pd.DataFrame, metrics: list[str], tail: Sequence[str] = ()):
        self.df, self.metrics = df, metrics
        self.tail = [("", "accuracy")] + [("", m) for m in tail]  # per-record columns, last
        is_agg = df["ood"].str.endswith(" avg") | (df["ood"] == "avg")
        order = {"near": 0, "far": 1}
        sets = list(dict.fromkeys(df.loc[~is_agg, "ood"]))
        first_group = df.loc[~is_agg].groupby("ood", sort=False)["group"].first()
        sets.sort(key=lambda s: order.get(first_group[s], 2))
        aggs = list(dict.fromkeys(df.loc[is_agg, "ood"]))
        aggs.sort(key=lambda a: (a == "avg", order.get(a.split(" ")[0], 2)))
        self.oods = sets + aggs
        self.columns = [(o, m) for o in self.oods for m in metrics] + self.tail
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
        """(row, col) -> 1 (best) or 2 (second best) within its benchmark: :func:`mark_ranks`
        of each column's values as shown (percent, two decimals)."""
        out: dict[tuple, int] = {}
        for bench in dict.fromkeys(r[0] for r in self.rows):
            rows = [r for r in self.rows if r[0] == bench]
            for col in self.columns:
                vals = {r: round(100 * self.value(r, col)[0], 2) for r in rows}
                marks = mark_ranks(vals, SHIFT_HIGHER[col[1]], WORST.get(col[1]))
                out.update({(r, col): rank for r, rank in marks.items()})
        return out

    def show_delta(self, row, delta: float | None) -> bool:
        """Deltas are shown for every model but the baseline (``df.attrs["baseline"]``)."""
        if delta is None or math.isnan(delta):
            return False
        return row[1] != self.df.attrs.get("baseline")

    def header(self, col) -> tuple[str, str]:
        ood, m = col
        return ood, SHIFT_LABELS[m]


def _pct(v: float | None, signed: bool = False) -> str:
    """A fraction as a percentage with two decimals ("–" for none/NaN); a value that rounds to
    zero prints as 0.00 (never "-0.00")."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    x = 100 * v
    x = 0.0 if abs(x) < 0.005 else x
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _plain_cell(wide: _Wide, row, col) -> str:
    v, half, delta = wide.value(row, col)
    text = _pct(v)
    if half is not None and not math.isnan(v) and not math.isnan(half):
        text += f" ±{_pct(half)}"
    if wide.show_delta(row, delta):
        text += f" ({_pct(delta, signed=True)})"
    return text


class TerminalView:
    """The rich rendering of a metrics frame; it lays itself out for the console's width.

    ``layout="compact"`` (default): one table per metric (AUROC, FPR@95...), rows = methods
    (grouped by method, then model, when several models are compared), a column per OoD set
    (when a table does not fit, names longer than :data:`SHORT_NAME` are abbreviated, with a
    legend), then the ``near avg`` / ``far avg`` / ``avg`` columns, and ID accuracy in the
    first table. Columns that still do not fit the width continue in a further table that
    repeats the row keys, so a number is never wrapped. ``layout="wide"``: every metric of every set in one table, at its natural width.
    Printed with a console, it uses the console's width; :meth:`natural_width` is the width at
    which nothing is split (what :func:`to_text` uses by default, e.g. for files).
    """

    def __init__(self, wide: _Wide, title: str | None = None, layout: str = "compact"):
        if layout not in LAYOUTS:
            raise OodbenchError(f"Unknown table layout {layout!r}. Available: {', '.join(LAYOUTS)}.")
        self.wide, self.title, self.layout = wide, title, layout
        self.ranks = wide.ranks()
        self.rows = _compare_order(wide)
        self.names: dict[str, str] = {}  # OoD set -> shown name; set per rendering

    def blocks(self) -> list[tuple[str | None, list[tuple]]]:
        """(table title, columns) of each table before any split for width."""
        w = self.wide
        if self.layout == "wide":
            return [(self.title, list(w.columns))]
        out = []
        for i, m in enumerate(w.metrics):
            cols = [(ood, m) for ood in w.oods] + (list(w.tail) if i == 0 else [])
            name = f"{SHIFT_LABELS[m]} (%)"
            out.append((f"{self.title} · {name}" if self.title else name, cols))
        return out

    def table(self, title: str | None, columns: list[tuple]):
        """A rich Table of ``columns`` (key columns first); numbers never wrap."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        w = self.wide
        table = Table(title=Text(title) if title else None, box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True, show_edge=False)
        for name in w.key_names:
            table.add_column(name, overflow="fold")
        for col in columns:
            table.add_column(Text(self.header(col)), justify="right", no_wrap=True)
        previous = None
        for row in self.rows:
            block = (row[0], row[2]) if w.several_models else (row[0],)
            if previous is not None and block != previous:
                table.add_section()
            keys = w.keys(row)
            if w.several_models and previous == block:  # the method once per block
                keys[-1] = ""
            previous = block
            cells = [Text(k) for k in keys]
            for col in columns:
                style = {1: "bold", 2: "underline"}.get(self.ranks.get((row, col), 0), "")
                cells.append(Text(_plain_cell(w, row, col), style=style))
            table.add_row(*cells)
        return table

    def header(self, col: tuple) -> str:
        ood, m = col
        if not ood:
            return SHIFT_LABELS[m]
        name = self.names.get(ood, ood)
        return name if self.layout == "compact" else f"{name}\n{SHIFT_LABELS[m]}"

    def split(self, console, options, width: int):
        """Tables of at most ``width`` columns: each block's columns packed greedily.

        Widths are counted (cell lengths + 2 per gap, the table's layout) and each part is
        checked with rich's own measure, dropping columns while it is still too wide."""
        from rich.cells import cell_len
        from rich.measure import Measurement

        w = self.wide

        def measured(title, cols) -> int:
            opts = options.update_width(10**6)
            return Measurement.get(console, opts, self.table(title, cols)).maximum

        keys = [
            max([cell_len(name)] + [cell_len(k[i]) for k in map(w.keys, self.rows)])
            for i, name in enumerate(w.key_names)
        ]
        base = sum(keys) + 2 * (len(keys) - 1)
        for title, cols in self.blocks():
            sizes = {
                c: max([*map(cell_len, self.header(c).split("\n"))]
                       + [cell_len(_plain_cell(w, r, c)) for r in self.rows])
                for c in cols
            }
            pending = list(cols)
            while pending:
                part, used = [pending[0]], base + 2 + sizes[pending[0]]
                for c in pending[1:]:
                    if used + 2 + sizes[c] > width:
                        break
                    part.append(c)
                    used += 2 + sizes[c]
                while len(part) > 1 and measured(title, part) > width:
                    part.pop()
                yield self.table(title, part)
                pending, title = pending[len(part):], None

    def notes(self) -> list[str]:
        legend = [f"{short} = {name}" for name, short in self.names.items() if short != name]
        out = [f"Percent; best bold, second underlined ({HIGHLIGHT_RULE}). {CONVENTION_NOTE}"]
        out += [SHIFT_NOTE] if _shows_shift(self.wide) else []
        return out + ([f"Sets: {'; '.join(legend)}."] if legend else [])

    def natural_width(self, console=None) -> int:
        """Width (columns) at which no table is split."""
        from rich.console import Console
        from rich.measure import Measurement

        console = console or Console(width=10**6)
        opts = console.options.update_width(10**6)
        return max(Measurement.get(console, opts, self.table(t, c)).maximum for t, c in self.blocks())

    def __rich_console__(self, console, options):
        from rich.text import Text

        self.names = {}
        tables = list(self.split(console, options, options.max_width))
        if self.layout == "compact" and len(tables) > len(self.blocks()):  # shorter names
            self.names = _short_names(self.wide.oods)
            tables = list(self.split(console, options, options.max_width))
        for i, table in enumerate(tables):
            if i:
                yield Text("")
            yield table
        yield Text("")
        for note in self.notes():
            yield Text(note, style="dim")

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        return Measurement(40, min(options.max_width, self.natural_width(console)))


def to_text(view: Any, width: int | None = None, *, styles: bool = False) -> str:
    """``view`` (a rich renderable, e.g. :class:`TerminalView`) as text ``width`` columns wide.

    ``width`` None: the view's natural width (:meth:`TerminalView.natural_width`), the full
    table for files and logs. ``styles``: keep ANSI styles (bold/underline marks).
    """
    import io

    from rich.console import Console

    if width is None:
        width = view.natural_width() if hasattr(view, "natural_width") else 10**4
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=styles, color_system="standard" if styles else None,
                      no_color=not styles, highlight=False, emoji=False)
    console.print(view)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def _compare_order(wide: _Wide) -> list[tuple[str, str, str]]:
    """Rows by benchmark; with several models grouped by method (models side by side)."""
    if not wide.several_models:
        return list(wide.rows)
    methods = {m: i for i, m in enumerate(dict.fromkeys(r[2] for r in wide.rows))}
    models = {m: i for i, m in enumerate(dict.fromkeys(r[1] for r in wide.rows))}
    benches = {b: i for i, b in enumerate(dict.fromkeys(r[0] for r in wide.rows))}
    return sorted(wide.rows, key=lambda r: (benches[r[0]], methods[r[2]], models[r[1]]))


def _short_names(names: Sequence[str], limit: int | None = None) -> dict[str, str]:
    """Column names of at most ``limit`` characters (default :data:`SHORT_NAME`), unique."""
    limit = limit or SHORT_NAME
    out: dict[str, str] = {}
    for name in names:
        short = name if len(name) <= limit else name[: limit - 1] + "…"
        i = 1
        while short in out.values():
            i += 1
            short = f"{name[: limit - 1 - len(str(i))]}…{i}"
        out[name] = short
    return out


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
    note = f" {SHIFT_NOTE}" if _shows_shift(wide) else ""
    lines += ["", f"Percent; best **bold**, second _italic_ ({HIGHLIGHT_RULE}). {CONVENTION_NOTE}{note}", ""]
    lines += _provenance_lines(prov, bullet="- ")
    return "\n".join(lines) + "\n"


def _shows_shift(wide: _Wide) -> bool:
    return len(wide.tail) > 1 or any(m in SET_SHIFT_METRICS for m in wide.metrics)


FAILURE_FORMATS = ("rich", "markdown", "csv", "json")


def _failure_label(col: str) -> str:
    if ":" in col:
        kind, name = col.split(":", 1)
        return f"{name} {'shift acc↑' if kind == 'shift_accuracy' else 'eff. rob.↑'}"
    return {**SHIFT_LABELS, "shift_accuracy": "Shift acc (avg)↑"}[col]


def render_failure(df: pd.DataFrame, fmt: str = "rich", title: str | None = None) -> Any:
    """Format a :func:`~oodbench.tables.failure_table` frame: ``rich`` (a rich Table),
    ``markdown``, ``csv`` (fractions) or ``json``; percentages with two decimals otherwise."""
    if fmt not in FAILURE_FORMATS:
        raise OodbenchError(f"The failure-detection table renders as {', '.join(FAILURE_FORMATS)}; got {fmt!r}.")
    note = f"{SHIFT_NOTE} ECE: 15-bin expected calibration error of the head's max softmax probability."
    if fmt == "csv":
        import csv

        return f"# oodbench failure detection, fractions. {note}\n" + df.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)
    if fmt == "json":
        rows = [{k: _jsonable(v) for k, v in r.items()} for r in df.to_dict("records")]
        return json.dumps({"title": title, "note": note, "records": rows, "oodbench_version": __version__}, indent=2)
    keys = ["model", "benchmark", "method"] if df["model"].nunique() > 1 else ["method"]
    values = [c for c in df.columns if c not in ("model", "benchmark", "method")]
    heads = [k.capitalize() for k in keys] + [_failure_label(c) for c in values]
    cells = [[str(r[k]) for k in keys] + [_pct(r[c]) for c in values] for _, r in df.iterrows()]
    if fmt == "markdown":
        lines = [f"### {title}", ""] if title else []
        lines.append("| " + " | ".join(_md_escape(h) for h in heads) + " |")
        lines.append("|" + "---|" * len(keys) + "---:|" * len(values))
        lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in cells]
        return "\n".join([*lines, "", f"Percent. {note}", ""])
    return PackedTable(title or "Robustness and failure detection (%)", heads[: len(keys)], heads[len(keys):],
                       cells, len(keys), note)


class PackedTable:
    """A rich renderable: key columns, then value columns packed greedily into as many tables as
    the console's width needs (each repeating the key columns), so no number is ever wrapped;
    long headers break at spaces. Printed to a file (:func:`to_text`), it is one table."""

    def __init__(self, title: str, key_heads: list[str], heads: list[str], rows: list[list[str]],
                 n_keys: int, note: str):
        self.title, self.key_heads, self.heads, self.note = title, key_heads, heads, note
        self.keys = [r[:n_keys] for r in rows]
        self.cells = [r[n_keys:] for r in rows]

    def _widths(self) -> tuple[int, list[int]]:
        keys = sum(max([len(h)] + [len(k[i]) for k in self.keys]) for i, h in enumerate(self.key_heads))
        keys += 2 * (len(self.key_heads) - 1)
        cols = [max([len(c[j]) for c in self.cells] + [max(map(len, h.split()))]) for j, h in enumerate(self.heads)]
        return keys, cols

    @staticmethod
    def _wrap(head: str, width: int) -> str:
        lines: list[str] = []
        for word in head.split():
            if lines and len(lines[-1]) + 1 + len(word) <= width:
                lines[-1] += " " + word
            else:
                lines.append(word)
        return "\n".join(lines)

    def _table(self, title: str | None, cols: list[int], widths: list[int]):
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(title) if title else None, box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True, show_edge=False)
        for h in self.key_heads:
            table.add_column(h, no_wrap=True)
        for j in cols:
            table.add_column(Text(self._wrap(self.heads[j], widths[j])), justify="right", no_wrap=True)
        for k, c in zip(self.keys, self.cells, strict=True):
            table.add_row(*k, *(c[j] for j in cols))
        return table

    def natural_width(self, console=None) -> int:
        keys, cols = self._widths()
        return max(keys + sum(w + 2 for w in cols), len(self.title))

    def __rich_console__(self, console, options):
        from rich.text import Text

        keys, widths = self._widths()
        parts: list[list[int]] = []
        used = options.max_width + 1
        for j, w in enumerate(widths):
            if parts and used + 2 + w <= options.max_width:
                parts[-1].append(j)
                used += 2 + w
            else:
                parts.append([j])
                used = keys + 2 + w
        for i, cols in enumerate(parts):
            if i:
                yield Text("")
            yield self._table(self.title if i == 0 else None, cols, widths)
        yield Text("")
        yield Text(self.note, style="dim")

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        return Measurement(40, min(options.max_width, self.natural_width(console)))


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


TEX_LINEWIDTH = 345.0
"""Width (pt) the LaTeX parts are packed for: ``article``'s 10 pt text width."""


def _latex(wide: _Wide, title: str | None, prov: list[dict], standalone: bool) -> str:
    r"""A table float of one or more tabulars, each at most :data:`TEX_LINEWIDTH` wide.

    The OoD sets (all metrics of a set stay together; ID accuracy closes the last part) are
    packed into parts by an estimate of their width in ``\small``; each part repeats the row
    keys and is shrunk to ``\linewidth`` only if it is still wider (a narrower page), so the
    fragment never makes an overfull box.
    """
    caption = tex_escape((title + ". ") if title else "") + tex_escape(
        f"Percent; best bold, second underlined ({HIGHLIGHT_RULE}). {CONVENTION_NOTE}"
    )
    parts = _tex_parts(wide)
    body: list[str] = [r"\ifdefined\oodbenchbox\else\newsavebox{\oodbenchbox}\fi"]
    for i, (oods, acc) in enumerate(parts):
        if i:
            body.append(r"\par\medskip")
        body += [
            r"\sbox{\oodbenchbox}{%",
            *_tex_tabular(wide, oods, acc),
            "}%",
            r"\ifdim\wd\oodbenchbox>\linewidth \typeout{oodbench: a table part scaled to linewidth}%",
            r"\resizebox{\linewidth}{!}{\usebox{\oodbenchbox}}\else\usebox{\oodbenchbox}\fi",
        ]
    lines = [_tex_comment(f"% {line}") for line in _provenance_lines(prov, bullet="  ")]
    lines += [
        "% requires \\usepackage{booktabs} and \\usepackage{graphicx}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{caption}}}",
        *body,
        r"\end{table}",
    ]
    if standalone:
        lines = [
            r"\documentclass{article}",
            r"\usepackage[T1]{fontenc}",
            r"\usepackage{booktabs}",
            r"\usepackage{graphicx}",
            r"\begin{document}",
            *lines,
            r"\end{document}",
        ]
    return "\n".join(lines) + "\n"


def _tex_len(text: str, small: float = 4.6, big: float = 6.8) -> float:
    r"""Rough width (pt) of ``text`` in ``\small`` roman: capitals and symbols wider."""
    return sum(big if (c.isupper() or c in "@%±") else small for c in text)


def _label_lines(label: str) -> list[str]:
    """A metric label on at most two lines: ``FPR@95TPR(ID+)↓`` -> ``FPR@95`` / ``TPR(ID+)↓``."""
    head, sep, tail = label.partition("TPR")
    return [head, sep + tail] if sep and head else [label]


def _tex_label(label: str) -> str:
    """A header cell: the label's lines stacked (a nested tabular; no extra package)."""
    lines = _label_lines(label)
    if len(lines) == 1:
        return tex_escape(label)
    return r"\begin{tabular}[b]{@{}r@{}}" + r"\\".join(map(tex_escape, lines)) + r"\end{tabular}"


def _tex_parts(wide: _Wide, width: float = TEX_LINEWIDTH) -> list[tuple[list[str], bool]]:
    """(OoD sets, with ID accuracy) of each tabular: sets packed greedily under ``width`` pt."""
    pad = 12.0  # 2 x \tabcolsep
    keys = sum(
        pad + max(_tex_len(k) for k in [name, *(wide.keys(r)[i] for r in wide.rows)])
        for i, name in enumerate(wide.key_names)
    )

    def col_width(col) -> float:
        cells = [_plain_cell(wide, r, col) for r in wide.rows]
        main = max(len(c.split(" ")[0]) for c in cells)  # the value; interval, delta scriptsize
        rest = max(len(c) - len(c.split(" ")[0]) for c in cells)
        label = max(map(_tex_len, _label_lines(wide.header(col)[1])))
        return pad + max(label, 4.6 * main + 3.6 * rest)

    def set_width(ood) -> float:
        cols = sum(col_width((ood, m)) for m in wide.metrics)
        return max(cols, pad + _tex_len(ood))

    acc = sum(col_width(c) for c in wide.tail)
    parts: list[tuple[list[str], bool]] = []
    current: list[str] = []
    used = keys
    for ood in wide.oods:
        w = set_width(ood)
        if current and used + w > width:
            parts.append((current, False))
            current, used = [], keys
        current.append(ood)
        used += w
    if current and used + acc > width:
        parts.append((current, False))
        current = []
    parts.append((current, True))
    return parts


def _tex_tabular(wide: _Wide, oods: Sequence[str], with_acc: bool) -> list[str]:
    """A booktabs tabular of ``oods``: a row of OoD set names over a row of metric labels."""
    nk, nm = len(wide.key_names), len(wide.metrics)
    columns = [(o, m) for o in oods for m in wide.metrics] + (list(wide.tail) if with_acc else [])
    top, rules, pos = [""] * nk, [], nk + 1
    for ood in oods:
        top.append(rf"\multicolumn{{{nm}}}{{c}}{{{tex_escape(ood)}}}")
        rules.append(rf"\cmidrule(lr){{{pos}-{pos + nm - 1}}}")
        pos += nm
    if with_acc:
        top += [""] * len(wide.tail)
    second = [tex_escape(k) for k in wide.key_names]
    second += [_tex_label(wide.header(c)[1]) for c in columns]
    ranks = wide.ranks()
    body, previous = [], None
    for row in wide.rows:
        if previous is not None and row[0] != previous:
            body.append(r"\midrule")
        previous = row[0]
        cells = [tex_escape(k) for k in wide.keys(row)]
        cells += [_tex_cell(wide, row, c, ranks.get((row, c), 0)) for c in columns]
        body.append(" & ".join(cells) + r" \\")
    head = [" & ".join(top) + r" \\", " ".join(rules)] if oods else []
    return [
        rf"\begin{{tabular}}{{{'l' * nk + 'r' * len(columns)}}}",
        r"\toprule",
        *head,
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
