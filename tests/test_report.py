"""Tests of oodbench.report (tables, intervals, renderings) and oodbench.plots."""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from rich.table import Table

from oodbench.errors import OodbenchError
from oodbench.metrics import LABELS, METRICS, evaluate
from oodbench.plots import save_plots
from oodbench.report import (
    _metrics_from_groups,
    _tie_groups,
    bootstrap,
    metrics_table,
    render,
    tex_escape,
)
from oodbench.results import ScoreRecord

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
    assert isinstance(t, Table)
    console = Console(record=True, width=400)
    console.print(t)
    text = console.export_text()
    for method in METHODS:
        assert method in text
    assert LABELS["fpr95"] in text and "ft_lora" in text
    assert "±" in text and "(+" in text  # interval and delta vs the baseline


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
    assert best.count("**") >= 2 * 14  # best in every AUROC/FPR column (2 x 7)


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
    line = next(x for x in out.splitlines() if x.startswith(f"{tex_escape(model)} & {method} &"))
    return [c.strip() for c in line.removesuffix(r"\\").split(" & ")]


def test_latex_structure_and_escaping(table):
    out = render(table, "latex", title="Toy_1 & 2")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in out
    assert r"my\_score\%" in out and r"Toy\_1 \& 2" in out and r"near\_a" in out
    body = [x for x in out.splitlines() if not x.startswith("%")]
    assert not any("my_score%" in x or "near_a" in x for x in body)  # raw only in comments
    assert r"FPR@95TPR(ID+)$\downarrow$" in out and r"$\pm$" in out
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
    assert r"FPR@95TPR(ID+)$\downarrow$" in out and r"FPR@95TPR(OoD+)$\downarrow$" in out


LATEX = next((e for e in ("pdflatex", "lualatex", "tectonic") if shutil.which(e)), None)


def test_latex_standalone_document(table):
    doc = render(table, "latex", standalone=True, title="Toy")
    assert doc.startswith(r"\documentclass{article}") and r"\usepackage{booktabs}" in doc
    assert doc.rstrip().endswith(r"\end{document}")


@pytest.mark.skipif(LATEX is None, reason="no LaTeX engine (pdflatex/lualatex/tectonic); .ci/run installs one")
def test_latex_standalone_compiles(table, tmp_path):
    doc = render(table, "latex", standalone=True, title="Toy")
    engine = LATEX
    (tmp_path / "table.tex").write_text(doc)
    args = (
        [engine, "table.tex"]
        if engine == "tectonic"
        else [engine, "-interaction=nonstopmode", "-halt-on-error", "table.tex"]
    )
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "table.pdf").stat().st_size > 0


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
