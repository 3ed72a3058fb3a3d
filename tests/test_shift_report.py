"""Covariate-shift columns of the report and the failure-detection table (issue 18), each
compared with an independent implementation on the same arrays (scikit-learn or a loop)."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from oodbench.cli import app
from oodbench.config import ShiftSet
from oodbench.engine import head_outcomes
from oodbench.errors import OodbenchError
from oodbench.metrics import predictions_correct
from oodbench.report import render
from oodbench.tables import failure_table, metrics_table

SHIFT = "digits-shifted"
# Sums of <= ~2000 terms in float64: any two orders agree to ~1e-12 relative.
TOL = 1e-10


def _aurc_loop(conf: np.ndarray, correct: np.ndarray) -> float:
    """Risk-coverage by hand (no ties in these scores): keep the k most confident, k = n..1,
    selective risk = errors / k; trapezoids over coverage k / n, closed at (0, risk of the top one)."""
    order = np.argsort(-conf, kind="stable")
    err = ~correct[order]
    n = len(conf)
    risk = [sum(err[:k]) / k for k in range(1, n + 1)]
    area = risk[0] / n  # coverage 0 .. 1/n at the top prediction's risk
    for k in range(1, n):
        area += (risk[k - 1] + risk[k]) / 2 / n
    return area


def _ece_loop(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Guo et al. 2017: bins (i/15, (i+1)/15], sum over bins of |acc - mean conf| * share."""
    total = 0.0
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins
        inside = [j for j in range(len(conf)) if (lo < conf[j] <= hi) or (i == 0 and conf[j] == 0)]
        if inside:
            total += abs(np.mean(correct[inside]) - np.mean(conf[inside])) * len(inside) / len(conf)
    return total


def test_fsood_and_record_columns_match_independent_implementations(digits_store):
    recs = list(digits_store["records"].values())
    df = metrics_table(recs)
    rec = digits_store["records"]["energy"]
    rows = df[df["method"] == rec.label].set_index("ood")
    pos = np.concatenate([rec.id_scores, rec.shift_scores[SHIFT]])
    per_set = {}
    for name, s in rec.ood_scores.items():
        y = np.r_[np.ones(pos.size), np.zeros(s.size)]
        per_set[name] = roc_auc_score(y, np.r_[pos, s])
        assert rows.loc[name, "fsood_auroc"] == pytest.approx(per_set[name], abs=TOL)
    assert rows.loc["avg", "fsood_auroc"] == pytest.approx(np.mean(list(per_set.values())), abs=TOL)
    correct = rec.shift_correct[SHIFT] == 1
    assert rows.loc["avg", "shift_accuracy"] == pytest.approx(correct.mean(), abs=TOL)
    conf = rec.shift_scores[SHIFT]
    assert len(np.unique(conf)) == conf.size  # the loop below assumes no ties
    assert rows.loc["avg", "aurc_shift"] == pytest.approx(_aurc_loop(conf, correct), abs=TOL)
    assert rows.loc["avg", "failure_auroc_shift"] == pytest.approx(roc_auc_score(correct, conf), abs=TOL)
    r = 1 - correct.mean()
    assert rows.loc["avg", "eaurc_shift"] == pytest.approx(_aurc_loop(conf, correct) - (r + (1 - r) * math.log(1 - r)), abs=TOL)
    # ID test: the tiny model may classify every test digit right (failure AUROC undefined)
    id_correct = np.asarray(rec.id_correct, bool)
    assert rows.loc["avg", "aurc"] == pytest.approx(_aurc_loop(rec.id_scores, id_correct), abs=TOL)


def test_failure_table_ece_and_effective_robustness(digits_store):
    rec = digits_store["records"]["msp"]
    slope, intercept = 0.9, -0.4
    rec = dataclasses.replace(rec, shift_sets={SHIFT: {"classes": None, "reference": [slope, intercept]}})
    (row,) = failure_table([rec]).to_dict("records")
    correct = rec.shift_correct[SHIFT] == 1
    conf = rec.head_confidence[SHIFT]
    assert row[f"shift_accuracy:{SHIFT}"] == pytest.approx(correct.mean(), abs=TOL)
    assert row["ece_shift"] == pytest.approx(_ece_loop(conf, correct), abs=TOL)
    assert row["ece"] == pytest.approx(_ece_loop(rec.head_confidence["id"], np.asarray(rec.id_correct, bool)), abs=TOL)
    lg = lambda p: math.log(p / (1 - p))  # noqa: E731
    predicted = 1 / (1 + math.exp(-(slope * lg(min(rec.accuracy, 1 - 1e-6)) + intercept)))
    assert row[f"effective_robustness:{SHIFT}"] == pytest.approx(correct.mean() - predicted, abs=1e-9)


def test_old_records_have_no_shift_columns_and_metric_says_why(digits_store):
    old = [dataclasses.replace(r, shift_scores={}, shift_correct={}, head_confidence={}, shift_sets={})
           for r in digits_store["records"].values()]
    df = metrics_table(old)
    assert "fsood_auroc" not in df and "aurc" not in df  # old outputs unchanged
    with pytest.raises(OodbenchError, match="--metric aurc needs covariate-shift scores"):
        render(df, "markdown", metrics=("auroc", "aurc"))
    with pytest.raises(OodbenchError, match="No score record has covariate-shift scores"):
        failure_table(old)


def test_head_outcomes_mask_the_class_subset():
    """ImageNet-R/A style: the argmax (and the softmax) over the subset's logits only."""
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(50, 6)), rng.choice([1, 3, 4], size=50)
    labels[:3] = -1
    subset = [4, 1, 3]
    run = SimpleNamespace(
        test=SimpleNamespace(logits=logits, labels=np.zeros(50, int)),
        shift={"r": SimpleNamespace(logits=logits, labels=labels)},
        benchmark=SimpleNamespace(shift={"r": ShiftSet("r", subset)}), head=SimpleNamespace(name="zeroshot"),
    )
    out = head_outcomes(run)
    correct, conf = out["r"]
    assert (correct[:3] == -1).all()
    np.testing.assert_array_equal(correct[3:] == 1, predictions_correct(logits, labels, np.array(subset))[:])
    sub = logits[:, subset]
    expected = np.exp(sub - sub.max(1, keepdims=True))
    np.testing.assert_allclose(conf, (expected / expected.sum(1, keepdims=True)).max(1), rtol=1e-12)
    # without the mask the full argmax often lands outside the subset
    assert (predictions_correct(logits, labels) != predictions_correct(logits, labels, np.array(subset))).any()


def test_cli_report_shift_metrics_and_failure_table(digits_store):
    runner = CliRunner()
    store = str(digits_store["store"])
    res = runner.invoke(app, ["report", "--store", store, "-f", "csv", "--metric", "fsood_auroc", "--metric", "aurc"])
    assert res.exit_code == 0, res.output
    assert "fsood_auroc" in res.output and "aurc_shift" in res.output
    res = runner.invoke(app, ["report", "--store", store, "-f", "markdown", "--metric", "fsood_auroc",
                              "--metric", "shift_accuracy"])
    assert res.exit_code == 0 and "FSOOD AUROC↑" in res.output and "Shift acc↑" in res.output
    res = runner.invoke(app, ["report", "--store", store, "--failure", "-f", "markdown"])
    assert res.exit_code == 0, res.output
    assert f"{SHIFT} shift acc↑" in res.output and "ECE (shift)↓" in res.output


def test_failure_table_fits_80_columns_and_files_get_full_width(digits_store, tmp_path):
    """The rich failure table packs its columns into tables of the console's width (numbers never
    wrapped); a file gets it as one full-width table, written atomically."""
    import re

    from oodbench.api import load_scores
    from oodbench.report import render_failure, to_text

    view = render_failure(failure_table(load_scores(store=digits_store["store"])))
    narrow = to_text(view, 80)
    lines = narrow.splitlines()
    assert max(map(len, lines)) <= 80 and narrow.count("Method") >= 2  # split into several tables
    full = to_text(view)

    def numbers(text: str) -> list[str]:
        return sorted(re.findall(r"(?<![\w.])-?\d+\.\d\d(?![\w.])", text))

    # at least 7 methods x 10 columns (other tests may have scored more methods into this store;
    # failure AUROC on ID is "–" where the head makes no ID error)
    assert len(numbers(full)) >= 7 * 10
    assert numbers(narrow) == numbers(full)  # every number whole on one line, none lost
    assert "-0.00" not in narrow  # a value that rounds to zero is 0.00
    assert full.count("Method") == 1 and max(map(len, full.splitlines())) > 80
    out = tmp_path / "failure.txt"
    res = CliRunner().invoke(app, ["report", "--store", str(digits_store["store"]), "--failure", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().count("Method") == 1 and not list(tmp_path.glob(".*tmp"))


def test_percent_cells_never_show_negative_zero():
    from oodbench.report import _pct

    assert _pct(-1e-9) == "0.00" and _pct(-0.0) == "0.00" and _pct(-1e-9, signed=True) == "+0.00"
    assert _pct(-0.0001) == "-0.01" and _pct(float("nan")) == "–"
