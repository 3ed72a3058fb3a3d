"""Tests of oodbench.report (tables, intervals, renderings) and oodbench.plots."""

from __future__ import annotations

import copy
import io
import json
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from oodbench.errors import OodbenchError
from oodbench.metrics import LABELS, METRICS, evaluate
from oodbench.plots import save_plots
from oodbench.report import TerminalView, mark_ranks, render, tex_escape, to_text
from oodbench.results import ScoreRecord
from oodbench.tables import _metrics_from_groups, _tie_groups, bootstrap, metrics_table

MODELS = ("zeroshot", "ft_lora")
METHODS = ("msp", "energy", "my_score%")  # '_' and '%' must be escaped in LaTeX
SETS = {
    "near_a": ("near", 0.5),
    "near_b": ("near", 0.3),
    "far_a": ("far", -1.0),
    "far_b": ("far", -2.0),
}
FINGERPRINT = "0123456789abcdef0123"


def make_record(model, method, shift, seed, n_id=300, n_ood=200, **provenance) -> ScoreRecord:
    rng = np.random.default_rng(seed)
    return ScoreRecord(
        model=model,
        model_key=f"{model}-0123",
        fingerprint=FINGERPRINT,
        benchmark="toy",
        method=method,
        params={"T": 1.0},
        head="zeroshot",
        id_scores=rng.normal(shift, 1.0, n_id),
        ood_scores={name: rng.normal(mu, 1.0, n_ood) for name, (_, mu) in SETS.items()},
        groups={name: group for name, (group, _) in SETS.items()},
        accuracy=0.8 if model == "zeroshot" else 0.85,
        provenance={"store": "/data/store", "oodbench_version": "0.1.0", **provenance},
    )


@pytest.fixture(scope="module")
def records() -> list[ScoreRecord]:
    # ft_lora/my_score% has the largest ID shift (best everywhere), ft_lora/energy the next.
    return [
        make_record(model, method, shift=1.0 + i + 0.5 * j, seed=10 * i + j)
        for i, model in enumerate(MODELS)
        for j, method in enumerate(METHODS)
    ]


@pytest.fixture(scope="module")
def table(records) -> pd.DataFrame:
    return metrics_table(records, baseline="zeroshot", ci=0.95, n_boot=300, seed=0)


def row(df, model, method, ood):
    hit = df[(df.model == model) & (df.method == method) & (df.ood == ood)]
    assert len(hit) == 1
    return hit.iloc[0]


# --------------------------------------------------------------------------- table


def test_columns_and_rows(table):
    assert list(table.columns[:11]) == [
        "model",
        "benchmark",
        "method",
        "ood",
        "group",
        *METRICS,
        "accuracy",
    ]
    per_record = set(SETS) | {"near avg", "far avg", "avg"}
    assert len(table) == len(MODELS) * len(METHODS) * len(per_record)
    assert set(table.ood) == per_record
    assert set(table.loc[table.ood.str.contains("avg"), "group"]) == {"near", "far", "avg"}


def test_values_equal_evaluate(records, table):
    for rec in records:
        for name, ood in rec.ood_scores.items():
            got = row(table, rec.model, rec.label, name)
            want = evaluate(rec.id_scores, ood)
            assert got.group == rec.groups[name]
            for m in METRICS:
                assert got[m] == pytest.approx(want[m], abs=1e-12)
            assert got.accuracy == rec.accuracy


def test_averaged_rows_are_unweighted_means(table):
    for (model, method), df in table.groupby(["model", "method"]):
        sets = df[~df.ood.str.contains("avg")]
        for ood, group in [("near avg", "near"), ("far avg", "far")]:
            want = sets.loc[sets.group == group, list(METRICS)].mean()
            assert np.allclose(row(df, model, method, ood)[list(METRICS)].astype(float), want)
        want = sets[list(METRICS)].mean()
        assert np.allclose(row(df, model, method, "avg")[list(METRICS)].astype(float), want)


def test_baseline_deltas(table):
    for m in (*METRICS, "accuracy"):
        for _, r in table.iterrows():
            base = row(table, "zeroshot", r.method, r.ood)
            assert r[f"d_{m}"] == pytest.approx(r[m] - base[m])
    assert (table.loc[table.model == "zeroshot", "d_auroc"] == 0).all()


def test_unknown_baseline_lists_models(records):
    with pytest.raises(OodbenchError, match="Models present: zeroshot, ft_lora"):
        metrics_table(records, baseline="zero-shot")


def test_bad_arguments(records):
    with pytest.raises(OodbenchError, match="'ci' parameter must be a float in \\(0, 1\\). Got 95"):
        metrics_table(records, ci=95)
    with pytest.raises(OodbenchError, match="No score records"):
        metrics_table([])
    with pytest.raises(OodbenchError, match="Two score records"):
        metrics_table(records + records[:1])


def test_same_method_two_heads_gets_head_in_label(records):
    linear = make_record("zeroshot", "msp", 2.0, seed=99)
    linear.head = "linear"
    df = metrics_table([records[0], linear])
    assert set(df.method) == {"msp[zeroshot]", "msp[linear]"}


# --------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("decimals", [None, 1, 0])  # ties included
def test_bootstrap_kernel_matches_evaluate(decimals):
    rng = np.random.default_rng(decimals or 7)
    pos, neg = rng.normal(1, 1, 400), rng.normal(0, 1, 250)
    if decimals is not None:
        pos, neg = pos.round(decimals), neg.round(decimals)
    g_pos, g_neg, n_groups = _tie_groups(pos, neg)
    got = _metrics_from_groups(g_pos[None], g_neg[None], n_groups)[0]  # identity "resample"
    want = evaluate(pos, neg)
    assert got == pytest.approx([want[m] for m in METRICS], abs=1e-7)


def test_bootstrap_replicates_match_evaluate_on_resampled_arrays():
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(1, 1, 60).round(1), rng.normal(0, 1, 50).round(1)
    g_pos, g_neg, n_groups = _tie_groups(pos, neg)
    i, j = rng.integers(0, 60, (5, 60)), rng.integers(0, 50, (5, 50))
    got = _metrics_from_groups(g_pos[i], g_neg[j], n_groups)
    for b in range(5):
        want = evaluate(pos[i[b]], neg[j[b]])
        assert got[b] == pytest.approx([want[m] for m in METRICS], abs=1e-7)


def test_intervals_contain_estimate(table):
    for m in METRICS:
        assert (table[f"{m}_lo"] <= table[m] + 1e-12).all(), m
        assert (table[m] <= table[f"{m}_hi"] + 1e-12).all(), m
        assert (table[f"{m}_lo"] < table[f"{m}_hi"]).any(), m


def test_intervals_are_seeded(records):
    a = metrics_table(records[:2], ci=0.9, n_boot=100, seed=1)
    b = metrics_table(records[:2], ci=0.9, n_boot=100, seed=1)
    c = metrics_table(records[:2], ci=0.9, n_boot=100, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.auroc_lo, c.auroc_lo)
    # Each record has its own stream: order of records does not matter.
    d = metrics_table(records[:2][::-1], ci=0.9, n_boot=100, seed=1)
    key = ["model", "method", "ood"]
    pd.testing.assert_frame_equal(
        a.sort_values(key).reset_index(drop=True), d.sort_values(key).reset_index(drop=True)
    )


def test_intervals_narrow_with_more_samples():
    small = make_record("m", "msp", 1.0, seed=5, n_id=100, n_ood=100)
    large = make_record("m", "msp", 1.0, seed=5, n_id=3000, n_ood=3000)
    widths = [
        metrics_table([r], ci=0.95, n_boot=200).pipe(lambda d: d.auroc_hi - d.auroc_lo)
        for r in (small, large)
    ]
    assert (widths[1] < widths[0]).all()


def test_bootstrap_shape():
    rng = np.random.default_rng(0)
    out = bootstrap(rng.normal(size=50), [rng.normal(size=30), rng.normal(size=40)], 20, rng)
    assert out.shape == (2, 20, len(METRICS))
    assert np.all((out >= 0) & (out <= 1))


# --------------------------------------------------------------------------- renderings


def test_rich(table):
    t = render(table, "rich", title="Toy")
    assert isinstance(t, TerminalView)
    console = Console(record=True, width=400)
    console.print(t)
    text = console.export_text()
    for method in METHODS:
        assert method in text
    assert LABELS["fpr95"] in text and "ft_lora" in text
    assert "±" in text and "(+" in text  # interval and delta vs the baseline


def expected_cells(df: pd.DataFrame, metrics=("auroc", "fpr95")) -> list[str]:
    """Every table cell as it must appear on one line: value ±half-width (delta vs baseline)."""
    cells = []
    for r in df.itertuples():
        for m in metrics:
            text = f"{100 * getattr(r, m):.2f}"
            if hasattr(r, f"{m}_lo"):
                text += f" ±{100 * (getattr(r, f'{m}_hi') - getattr(r, f'{m}_lo')) / 2:.2f}"
            if hasattr(r, f"d_{m}") and r.model != df.attrs.get("baseline"):
                text += f" ({100 * getattr(r, f'd_{m}'):+.2f})"
            cells.append(text)
    return cells


def check_fits(text: str, df: pd.DataFrame, width: int = 80) -> None:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    flat = set()
    for line in lines:  # cells are separated by at least two spaces (one per side)
        flat.update(c.strip() for c in line.split("  ") if c.strip())
    missing = [c for c in expected_cells(df) if c not in flat]
    assert not missing, missing[:5]  # a wrapped cell would be split over two lines


@pytest.mark.parametrize("several", [False, True])
def test_rich_fits_80_columns(records, several):
    recs = records if several else [r for r in records if r.model == "zeroshot"]
    df = metrics_table(recs, baseline="zeroshot" if several else None, ci=0.95, n_boot=50)
    console = Console(record=True, width=80)
    console.print(render(df, "rich", title="Toy"))
    text = console.export_text()
    check_fits(text, df)
    assert "Toy · AUROC↑ (%)" in text and f"Toy · {LABELS['fpr95']} (%)" in text
    if several:  # models side by side under each method, the method named once
        lines = text.splitlines()
        i = next(k for k, x in enumerate(lines) if x.startswith("zeroshot") and " msp " in x)
        assert lines[i + 1].startswith("ft_lora ") and " msp " not in lines[i + 1]


def test_rich_abbreviates_long_set_names_only_when_needed(records):
    rec = copy.copy(records[0])
    names = ["inaturalist-mos", "places-mos", "textures-dtd", "openimage-o"]
    rec.ood_scores = {n: rec.ood_scores["near_a"] + i for i, n in enumerate(names)}
    rec.groups = dict.fromkeys(names, "far")
    view = render(metrics_table([rec]), "rich")
    for width, short in [(80, True), (300, False)]:
        console = Console(record=True, width=width)
        console.print(view)
        text = console.export_text()
        assert ("inatural… = inaturalist-mos" in text) == short  # the legend
        header = next(x for x in text.splitlines() if x.startswith("Method"))
        assert ("inatural…" in header) == short and ("inaturalist-mos" in header) != short
        assert "places-mos" in text  # short enough as it is


def test_rich_wide_layout_and_natural_width(table):
    view = render(table, "rich", layout="wide")
    text = to_text(view)  # natural width: one table, every metric of every set
    header = [x for x in text.splitlines() if x.startswith("Model")]
    assert len(header) == 1 and header[0].count(LABELS["fpr95"]) == 7
    assert max(map(len, text.splitlines())) > 80  # nothing squeezed
    compact = to_text(render(table, "rich"))  # compact, unsplit: one table per metric
    assert compact.count("near_a") == 2 and compact.count("ID acc") == 1
    with pytest.raises(OodbenchError, match="Unknown table layout 'tall'"):
        render(table, "rich", layout="tall")


def write_scores(tmp_path, records) -> list[str]:
    from oodbench.results import save_records

    paths = []
    for model in dict.fromkeys(r.model for r in records):
        path = tmp_path / f"{model}.h5"
        mine = [r for r in records if r.model == model]
        save_records(path, mine, {"benchmark": "toy", "model_key": mine[0].model_key,
                                  "fingerprint": FINGERPRINT, "model_label": model})
        paths.append(str(path))
    return paths


def oodbench_cli(*args, COLUMNS: str | None = None) -> str:
    """``oodbench report ARGS`` in process, stdout not a terminal; COLUMNS None: unset."""
    from typer.testing import CliRunner

    from oodbench.cli import app

    result = CliRunner().invoke(app, ["report", *args], env={"COLUMNS": COLUMNS})
    assert result.exit_code == 0, result.output[-2000:]
    return result.stdout


def test_cli_report_80_columns_and_full_width(records, tmp_path):
    paths = write_scores(tmp_path, records)
    df = metrics_table(records, baseline="zeroshot")
    check_fits(oodbench_cli(*paths, "--baseline", "zeroshot", COLUMNS="80"), df)
    piped = oodbench_cli(*paths, "--baseline", "zeroshot")  # a pipe, no COLUMNS: full width
    check_fits(piped, df, width=10**4)
    assert piped.count("near_a") == 2  # not split: one table per metric
    oodbench_cli(*paths, "--wide", "-o", str(tmp_path / "t.txt"), COLUMNS="80")  # a file: full width
    wide = (tmp_path / "t.txt").read_text()
    assert max(map(len, wide.splitlines())) > 80 and wide.count(LABELS["fpr95"]) >= 7


@pytest.mark.parametrize("fmt", ["markdown", "latex", "json", "csv"])
def test_every_format_names_methods_convention_and_provenance(table, fmt):
    out = render(table, fmt)
    assert isinstance(out, str)
    for method in METHODS:
        assert (tex_escape(method) if fmt == "latex" else method) in out
    assert ("FPR@95TPR(ID+)" in out) and ("FPR@95TPR(OoD+)" in out)
    if fmt != "csv":
        assert FINGERPRINT[:12] in out and FINGERPRINT[:13] not in out
        assert "/data/store" in out and '"T": 1.0' in out and "0.1.0" in out


def test_markdown_layout(table):
    out = render(table, "markdown", metrics=("auroc", "fpr95"), fpr_convention="ood")
    header = out.splitlines()[0]
    assert f"near_a {LABELS['fpr95_ood']}" in header and LABELS["fpr95"] not in header
    assert "avg AUROC↑" in header and "ID acc↑" in header
    best = next(line for line in out.splitlines() if line.startswith("| ft_lora | my_score% |"))
    cells = best.split(" | ")[2:-1]  # 7 x (AUROC, FPR)
    # best in every AUROC/FPR column but far_b's: its AUROC is energy's, its FPR a 0.00 tie
    assert [c.startswith("**") for c in cells] == [True] * 6 + [False, False] + [True] * 6
    assert "0.00 ±0.00 (-1.00) |" in best and "| 0.00 ±0.00 (-2.33) |" in out  # tie: unmarked


@pytest.mark.parametrize(
    ("values", "higher", "want", "worst"),
    [
        ({"a": 90.0, "b": 80.0, "c": 70.0}, True, {"a": 1, "b": 2}, 0.0),
        ({"a": 10.0, "b": 20.0, "c": 30.0}, False, {"a": 1, "b": 2}, 100.0),
        ({"a": 90.0, "b": 90.0, "c": 70.0}, True, {}, 0.0),  # tied best: nobody singled out
        ({"a": 90.0, "b": 80.0, "c": 80.0}, True, {"a": 1}, 0.0),  # tied second: no second
        ({"a": 50.0, "b": 50.0}, True, {}, 0.0),  # all equal
        ({"a": 50.0, "b": 100.0, "c": 100.0}, False, {"a": 1}, 100.0),  # FPR 100: never marked
        ({"a": 50.0, "b": 100.0}, False, {"a": 1}, 100.0),
        ({"a": 50.0, "b": 100.0}, False, {"a": 1, "b": 2}, None),  # no known worst value
        ({"a": 100.0, "b": 100.0}, False, {}, 100.0),
        ({"a": 60.0, "b": 0.0}, True, {"a": 1}, 0.0),  # AUROC 0 is never marked
        ({"a": 60.0, "b": math.nan, "c": 55.0}, True, {"a": 1, "c": 2}, 0.0),  # absent: skipped
    ],
)
def test_mark_ranks(values, higher, want, worst):
    assert mark_ranks(values, higher, worst) == want


def test_highlighting_skips_ties_and_worst_values():
    def rec(method, shift, seed):  # shift 20: perfect (AUROC 100, FPR 0); -20: AUROC 0, FPR 100
        r = make_record("zeroshot", method, shift, seed)
        r.ood_scores = {"near_a": r.ood_scores["near_a"]}
        r.groups = {"near_a": "near"}
        return r

    df = metrics_table([rec("perfect", 20, 1), rec("also", 20, 2), rec("worst", -20, 3)])
    out = render(df, "markdown")
    assert "**" not in out.split("\n\n")[0] and "_100" not in out and "_0.00" not in out
    view = render(df, "rich")
    assert not view.ranks  # every column: a tie at the best value, the rest the worst value
    ranks = render(metrics_table([rec("perfect", 20, 1), rec("worst", -20, 3)]), "rich").ranks
    assert {(r[2], c[1], k) for (r, c), k in ranks.items() if c[0] == "near_a"} == {
        ("perfect", "auroc", 1),
        ("perfect", "fpr95", 1),
    }  # the second best is the worst possible value (AUROC 0, FPR 100): not underlined


def test_csv_round_trip(table):
    back = pd.read_csv(io.StringIO(render(table, "csv")), comment="#")
    assert list(back.columns) == list(table.columns)
    assert np.allclose(back.auroc, table.auroc) and np.allclose(back.d_fpr95, table.d_fpr95)


def test_json(table):
    doc = json.loads(render(table, "json", title="Toy"))
    assert doc["title"] == "Toy" and len(doc["records"]) == len(table)
    assert doc["conventions"]["fpr95"] == LABELS["fpr95"]
    assert [p["model"] for p in doc["provenance"]] == list(MODELS)
    assert doc["provenance"][0]["fingerprint"] == FINGERPRINT[:12]


def test_bad_render_arguments(table):
    with pytest.raises(OodbenchError, match="Unknown report format 'html'"):
        render(table, "html")
    with pytest.raises(OodbenchError, match="'fpr_convention' parameter must be one of"):
        render(table, "markdown", fpr_convention="OpenOOD")
    with pytest.raises(OodbenchError, match="Unknown metric 'aupr'"):
        render(table, "markdown", metrics=("aupr",))


# --------------------------------------------------------------------------- LaTeX


def test_tex_escape():
    assert tex_escape(r"a_b%c&d#e$f{g}h~i^j\k") == (
        r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    )


def latex_row(out: str, model: str, method: str) -> list[str]:
    """Keys and cells of one row, its parts (one per tabular) joined."""
    prefix = f"{tex_escape(model)} & {method} &"
    lines = [x for x in out.splitlines() if x.startswith(prefix)]
    cells = [c.strip() for line in lines for c in line.removesuffix(r"\\").split(" & ")[2:]]
    return [tex_escape(model), method, *cells]


def test_latex_structure_and_escaping(table):
    out = render(table, "latex", title="Toy_1 & 2")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in out
    assert r"my\_score\%" in out and r"Toy\_1 \& 2" in out and r"near\_a" in out
    body = [x for x in out.splitlines() if not x.startswith("%")]
    assert not any("my_score%" in x or "near_a" in x for x in body)  # raw only in comments
    assert r"FPR@95\\TPR(ID+)$\downarrow$" in out and r"$\pm$" in out  # label on two lines
    assert r"\documentclass" not in out


def test_latex_best_bold_second_underlined(table):
    out = render(table, "latex")
    best = latex_row(out, "ft_lora", r"my\_score\%")
    second = latex_row(out, "ft_lora", "energy")
    # columns: Model, Method, 7 x (AUROC, FPR), ID acc; AUROC of near_a and near_b
    for col in (2, 3, 4, 5):  # near sets: clear ordering by construction
        assert best[col].startswith(r"\textbf{"), best[col]
        assert second[col].startswith(r"\underline{"), second[col]
    worst = latex_row(out, "zeroshot", "msp")
    assert not any(c.startswith((r"\textbf", r"\underline")) for c in worst[2:-1])


def test_latex_fpr_convention_header(table):
    out = render(table, "latex", fpr_convention="both")
    assert r"TPR(ID+)$\downarrow$" in out and r"TPR(OoD+)$\downarrow$" in out


LATEX = next((e for e in ("pdflatex", "lualatex", "tectonic") if shutil.which(e)), None)


def test_latex_standalone_document(table):
    doc = render(table, "latex", standalone=True, title="Toy")
    assert doc.startswith(r"\documentclass{article}") and r"\usepackage{booktabs}" in doc
    assert doc.rstrip().endswith(r"\end{document}")


def compile_latex(doc: str, tmp_path) -> str:
    """Compile ``doc`` with the LaTeX engine; returns the log."""
    (tmp_path / "table.tex").write_text(doc)
    args = (
        [LATEX, "table.tex"]
        if LATEX == "tectonic"
        else [LATEX, "-interaction=nonstopmode", "-halt-on-error", "table.tex"]
    )
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "table.pdf").stat().st_size > 0
    log = tmp_path / "table.log"
    return log.read_text(errors="replace") if log.exists() else proc.stdout + proc.stderr


NO_LATEX = "no LaTeX engine (pdflatex/lualatex/tectonic); .ci/run installs one"


@pytest.mark.skipif(LATEX is None, reason=NO_LATEX)
def test_latex_standalone_compiles(table, tmp_path):
    log = compile_latex(render(table, "latex", standalone=True, title="Toy"), tmp_path)
    assert "Overfull \\hbox" not in log


@pytest.mark.skipif(LATEX is None, reason=NO_LATEX)
@pytest.mark.parametrize("columns", ["onecolumn", "twocolumn"])
def test_latex_fragment_fits_the_page(table, tmp_path, columns):
    # 7 OoD columns x 2 metrics with intervals and deltas: ~1000 pt as one tabular
    fragment = render(table, "latex", title="Toy")
    doc = "\n".join([
        rf"\documentclass[{columns}]{{article}}",
        r"\usepackage[T1]{fontenc}",
        r"\usepackage{booktabs}",
        r"\usepackage{graphicx}",
        r"\begin{document}",
        fragment,
        render(table, "latex"),  # twice in one document: the save box is allocated once
        r"\end{document}",
    ])
    log = compile_latex(doc, tmp_path)
    assert "Overfull \\hbox" not in log
    assert fragment.count(r"\sbox{\oodbenchbox}") > 1  # split into parts
    if columns == "onecolumn":  # the parts fit article's text width unscaled
        assert "scaled to linewidth" not in log


# --------------------------------------------------------------------------- plots


def test_save_plots(records, tmp_path):
    def trimmed(rec):  # two OoD sets keep the test fast
        keep = ("near_a", "far_a")
        rec = copy.copy(rec)
        rec.ood_scores = {k: v for k, v in rec.ood_scores.items() if k in keep}
        return rec

    recs = [r for r in records if r.method == "my_score%"]
    sweep = [
        make_record(f"wise{a}", "msp", 1.0 + a, seed=50, wise_alpha=a, layer=k)
        for k, a in enumerate((0.0, 1.0))
    ]
    paths = save_plots(
        [trimmed(r) for r in recs + sweep], tmp_path / "figs", formats=("png", "pdf")
    )
    assert paths and len(paths) == len(set(paths))
    names = {p.stem for p in paths}
    assert {
        "hist_toy_ft_lora_my_score",
        "hist_toy_wise0.0_msp",
        "roc_toy_my_score",
        "roc_toy_msp",
        "heatmap_toy",
        "wise_alpha_toy",
        "layer_toy",
    } <= names
    assert len(paths) == 2 * len(names)
    for p in paths:
        head = p.read_bytes()[:8]
        assert p.stat().st_size > 1000
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else head.startswith(b"%PDF")


# --------------------------------------------------------------------------- import graph


def imported_modules(module: str) -> set[str]:
    """oodbench modules a module imports anywhere in its source (also inside functions)."""
    import ast
    import importlib.util

    path = importlib.util.find_spec(module).origin
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("oodbench")}


def test_tables_plots_report_import_one_way():
    # report -> plots -> tables: the table-building piece lives below both renderers
    assert not {"oodbench.report", "oodbench.plots"} & imported_modules("oodbench.tables")
    assert "oodbench.report" not in imported_modules("oodbench.plots")
    assert "oodbench.tables.metrics_table" in imported_modules("oodbench.plots")
    assert "oodbench.tables.metrics_table" in imported_modules("oodbench.report")
