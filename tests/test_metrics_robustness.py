"""Shift accuracy, effective robustness, FSOOD and failure-detection metrics, each compared
with an independent implementation on the same arrays (scikit-learn / scipy where they
have one, otherwise a plain loop written from the paper's definition).

Tolerances: every compared quantity is a sum of at most n <= 2000 terms in [0, 1] computed
in float64 in two different orders, so the two results differ by at most ~n * 2**-52 < 1e-12.
"""

import numpy as np
import pytest
from scipy.special import expit as sp_expit
from scipy.special import logit as sp_logit
from sklearn.metrics import roc_auc_score

from oodbench.errors import OodbenchError
from oodbench.metrics import (
    aurc,
    bootstrap_interval,
    bootstrap_replicates,
    eaurc,
    ece,
    effective_robustness,
    evaluate,
    failure_auroc,
    failure_metrics,
    fit_reference_line,
    fsood_auroc,
    fsood_evaluate,
    logit,
    optimal_aurc,
    predictions_correct,
    risk_coverage,
    shift_accuracies,
    shift_accuracy,
    softmax,
    softmax_ece,
)

SUM_TOL = 1e-12  # see the module docstring


def _failure_data(seed: int, n: int = 600, ties: bool = False):
    r = np.random.default_rng(seed)
    correct = r.random(n) < 0.7
    confidence = r.normal(0, 1, n) + 1.2 * correct  # informative but imperfect
    if ties:
        confidence = np.round(confidence * 2) / 2  # ~10 distinct values
    return confidence, correct


# --------------------------------------------------------------------------- references


def _rc_loop(confidence, correct):
    """Risk-coverage points by removing the least confident prediction one at a time and
    recording a point once a whole confidence level has gone (FD-Shifts' procedure)."""
    order = sorted(range(len(confidence)), key=lambda i: confidence[i])
    n = len(order)
    errors = sum(1 for i in order if not correct[i])
    covs, risks = [1.0], [errors / n]
    for step in range(n - 1):
        i, nxt = order[step], order[step + 1]
        errors -= 0 if correct[i] else 1
        if confidence[i] != confidence[nxt]:
            kept = n - step - 1
            covs.append(kept / n)
            risks.append(errors / kept)
    covs.append(0.0)
    risks.append(risks[-1])
    return covs, risks


def _aurc_loop(confidence, correct):
    covs, risks = _rc_loop(confidence, correct)
    area = 0.0
    for j in range(len(covs) - 1):
        area += (covs[j] - covs[j + 1]) * (risks[j] + risks[j + 1]) / 2
    return area


def _mean_risk_loop(confidence, correct):
    """Geifman et al.'s AURC: the mean selective risk of the top-k predictions, k = 1..n."""
    order = sorted(range(len(confidence)), key=lambda i: -confidence[i])
    errors, total = 0, 0.0
    for k, i in enumerate(order, start=1):
        errors += 0 if correct[i] else 1
        total += errors / k
    return total / len(order), errors / len(order)


def _ece_loop(confidence, correct, n_bins=15):
    """Guo et al. 2017: bins (lo, hi] of equal width; |bin|/n * |acc - conf| summed."""
    edges = np.linspace(0, 1, n_bins + 1)
    n, total = len(confidence), 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        members = [i for i in range(n) if (lo < confidence[i] <= hi) or (b == 0 and confidence[i] == 0)]
        if members:
            acc = sum(bool(correct[i]) for i in members) / len(members)
            conf = sum(confidence[i] for i in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


# --------------------------------------------------------------------------- failure AUROC


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_failure_auroc_matches_sklearn(seed, ties):
    conf, correct = _failure_data(seed, ties=ties)
    assert failure_auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=SUM_TOL)


def test_failure_auroc_edges():
    conf = np.linspace(0, 1, 10)
    assert np.isnan(failure_auroc(conf, np.ones(10, bool)))  # all correct: undefined
    assert np.isnan(failure_auroc(conf, np.zeros(10, bool)))  # all wrong: undefined
    assert failure_auroc(np.ones(10), np.arange(10) % 2 == 0) == 0.5  # constant score
    assert failure_auroc(conf, conf > 0.5) == 1.0


# --------------------------------------------------------------------------- AURC / E-AURC


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aurc_matches_loop(seed, ties):
    conf, correct = _failure_data(seed, ties=ties)
    covs, risks = _rc_loop(conf, correct)
    coverage, risk, thresholds = risk_coverage(conf, correct)
    np.testing.assert_allclose(coverage, covs, rtol=0, atol=SUM_TOL)
    np.testing.assert_allclose(risk, risks, rtol=0, atol=SUM_TOL)
    assert thresholds.size == coverage.size - 1 and np.all(np.diff(thresholds) > 0)
    assert aurc(conf, correct) == pytest.approx(_aurc_loop(conf, correct), abs=SUM_TOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_aurc_is_mean_risk_plus_trapezoid_end_terms(seed):
    """Without ties: trapezoids over the n coverage steps = mean risk + (r(1/n) - r(1)) / 2n."""
    conf, correct = _failure_data(seed)
    assert np.unique(conf).size == conf.size
    mean_risk, risk_full = _mean_risk_loop(conf, correct)
    order = np.argsort(-conf)
    risk_top1 = float(not correct[order[0]])
    expected = mean_risk + (risk_top1 - risk_full) / (2 * conf.size)
    assert aurc(conf, correct) == pytest.approx(expected, abs=SUM_TOL)


def test_aurc_ties_do_not_depend_on_order():
    conf, correct = _failure_data(3, ties=True)
    perm = np.random.default_rng(0).permutation(conf.size)
    assert aurc(conf[perm], correct[perm]) == aurc(conf, correct)
    # a tie group counts as one step: ranking a tied wrong one first changes nothing
    c = np.array([2.0, 1.0, 1.0, 0.0])
    assert aurc(c, np.array([1, 1, 0, 0], bool)) == aurc(c, np.array([1, 0, 1, 0], bool))


def test_aurc_eaurc_edges():
    conf = np.random.default_rng(0).random(50)
    assert aurc(conf, np.ones(50, bool)) == 0.0 and eaurc(conf, np.ones(50, bool)) == 0.0
    assert aurc(conf, np.zeros(50, bool)) == 1.0 and eaurc(conf, np.zeros(50, bool)) == 0.0
    correct = np.arange(50) % 5 != 0  # error rate 0.2
    # constant score: one point (1, r) and the closing (0, r): the area is the error rate
    assert aurc(np.zeros(50), correct) == pytest.approx(0.2, abs=SUM_TOL)
    assert eaurc(np.zeros(50), correct) == pytest.approx(0.2 - (0.2 + 0.8 * np.log(0.8)), abs=SUM_TOL)
    assert optimal_aurc(0.0) == 0.0 and optimal_aurc(1.0) == 1.0


@pytest.mark.parametrize(("n", "errors"), [(10, 1), (100, 10), (1000, 300), (50, 49)])
def test_eaurc_of_a_perfect_ranking_is_the_trapezoid_error(n, errors):
    """Perfect ranking: the curve is the oracle's, 1 - a/c for c > a, sampled at k/n. Trapezoids
    under that concave curve fall short of the integral r + (1-r) ln(1-r) by the leading
    Euler-Maclaurin term (h^2/12) * (f'(a) - f'(1)) = (1/a - a) / (12 n^2), f' = a / c^2."""
    conf = np.arange(n, dtype=float)
    correct = np.arange(n) >= errors
    a = 1 - errors / n
    value = eaurc(conf, correct)
    assert -(1 / a - a) / (12 * n * n) <= value <= 0


def test_failure_inputs_refused():
    with pytest.raises(OodbenchError, match="one correctness flag"):
        aurc(np.zeros(3), np.ones(2, bool))
    with pytest.raises(OodbenchError, match="NaN"):
        aurc(np.array([0.0, np.nan]), np.ones(2, bool))
    with pytest.raises(OodbenchError, match="booleans"):
        aurc(np.zeros(2), np.array([0, 2]))
    assert set(failure_metrics(*_failure_data(0))) == {"failure_auroc", "aurc", "eaurc"}


# --------------------------------------------------------------------------- ECE


@pytest.mark.parametrize("seed", [0, 1])
def test_ece_matches_bin_loop(seed):
    r = np.random.default_rng(seed)
    conf = r.random(2000) ** 0.3
    correct = r.random(2000) < conf * 0.9
    conf[:30] = np.linspace(0, 1, 16)[r.integers(0, 16, 30)]  # exactly on bin edges
    assert ece(conf, correct) == pytest.approx(_ece_loop(conf, correct), abs=SUM_TOL)
    assert ece(conf, correct, n_bins=7) == pytest.approx(_ece_loop(conf, correct, 7), abs=SUM_TOL)


def test_ece_edges_and_softmax():
    assert ece(np.ones(5), np.ones(5, bool)) == 0.0  # all correct at confidence 1
    assert ece(np.full(4, 0.75), np.array([1, 1, 1, 0], bool)) == pytest.approx(0.0, abs=1e-15)
    assert ece(np.full(4, 0.9), np.zeros(4, bool)) == pytest.approx(0.9)  # all wrong
    # 1/15 sits in the first bin (lo, hi], just above it in the second
    assert ece(np.array([1 / 15, 1 / 15 + 1e-9]), np.array([1, 0], bool)) == pytest.approx(
        (abs(1 - 1 / 15) + abs(0 - 1 / 15 - 1e-9)) / 2
    )
    with pytest.raises(OodbenchError, match=r"\[0, 1\]"):
        ece(np.array([1.5]), np.array([True]))
    logits = np.random.default_rng(0).normal(0, 3, (300, 5))
    labels = np.random.default_rng(1).integers(-1, 5, 300)
    known = labels >= 0
    p = np.exp(logits[known]) / np.exp(logits[known]).sum(1, keepdims=True)
    np.testing.assert_allclose(softmax(logits[known]), p, rtol=1e-12)
    expected = _ece_loop(p.max(1), p.argmax(1) == labels[known])
    assert softmax_ece(logits, labels) == pytest.approx(expected, abs=SUM_TOL)


# --------------------------------------------------------------------------- shift accuracy


def test_shift_accuracy_per_set_average_and_class_subset():
    r = np.random.default_rng(0)
    logits_a, labels_a = r.normal(size=(200, 10)), r.integers(-1, 10, 200)
    logits_b, labels_b = r.normal(size=(50, 10)), r.integers(0, 10, 50)
    subset = np.array([1, 3, 4, 8])
    labels_c = subset[r.integers(0, 4, 80)]
    logits_c = r.normal(size=(80, 10))

    def loop(logits, labels, classes=None):
        hits = total = 0
        for row, y in zip(logits, labels, strict=True):
            if y < 0:
                continue
            cols = range(len(row)) if classes is None else classes
            pred = max(cols, key=lambda c: row[c])
            hits, total = hits + (pred == y), total + 1
        return hits / total

    out = shift_accuracies({"a": (logits_a, labels_a), "b": (logits_b, labels_b),
                            "c": (logits_c, labels_c, subset)})
    ref = {"a": loop(logits_a, labels_a), "b": loop(logits_b, labels_b),
           "c": loop(logits_c, labels_c, list(subset))}
    for k, v in ref.items():
        assert out[k] == pytest.approx(v, abs=SUM_TOL), k
    assert out["avg"] == pytest.approx(np.mean(list(ref.values())), abs=SUM_TOL)
    # the subset mask matters: the unmasked argmax is a different (worse) prediction
    assert shift_accuracy(logits_c, labels_c) != out["c"]
    assert predictions_correct(logits_a, labels_a).size == int((labels_a >= 0).sum())
    assert np.isnan(shift_accuracy(logits_a[:3], np.full(3, -1)))


def test_shift_accuracy_refuses_bad_input():
    with pytest.raises(OodbenchError, match="out of range"):
        shift_accuracy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(OodbenchError, match="Class subset"):
        shift_accuracy(np.zeros((2, 3)), np.array([0, 1]), classes=np.array([5]))
    with pytest.raises(OodbenchError, match="named 'avg'"):
        shift_accuracies({"avg": (np.zeros((1, 2)), np.zeros(1, int))})
    with pytest.raises(OodbenchError, match="No shift sets"):
        shift_accuracies({})


# --------------------------------------------------------------------------- effective robustness


def test_effective_robustness_matches_scipy_formula():
    id_acc = np.array([0.3, 0.55, 0.76, 0.9])
    shift_acc = np.array([0.12, 0.3, 0.5, 0.61])
    slope, intercept = 0.83, -0.71
    ref = shift_acc - sp_expit(slope * sp_logit(id_acc) + intercept)
    np.testing.assert_allclose(effective_robustness(id_acc, shift_acc, slope, intercept), ref,
                               rtol=0, atol=1e-15)
    on_line = float(sp_expit(slope * sp_logit(0.7) + intercept))
    assert effective_robustness(0.7, on_line, slope, intercept) == pytest.approx(0, abs=1e-15)
    assert isinstance(effective_robustness(0.7, 0.5, slope, intercept), float)


def test_logit_is_clipped_and_line_fit_recovers_the_line():
    assert np.isfinite(logit(0.0)) and np.isfinite(logit(1.0))
    assert logit(1.0) == sp_logit(1 - 1e-6)
    # 1 - 1e-6 is stored with an error <= 2**-53, i.e. ~1.1e-10 relative to 1e-6: the two
    # clipped ends agree in magnitude to that (d log(x) = dx / x)
    assert logit(0.0) == pytest.approx(-logit(1.0), abs=2e-10)
    assert np.isfinite(effective_robustness(1.0, 1.0, 1.0, 0.0))
    id_acc = np.array([0.2, 0.4, 0.6, 0.8, 0.95])
    shift_acc = sp_expit(0.9 * sp_logit(id_acc) - 0.4)
    slope, intercept = fit_reference_line(id_acc, shift_acc)
    assert (slope, intercept) == pytest.approx((0.9, -0.4), abs=1e-12)
    with pytest.raises(OodbenchError, match="two models"):
        fit_reference_line([0.5], [0.4])


# --------------------------------------------------------------------------- FSOOD


@pytest.mark.parametrize("seed", [0, 1])
def test_fsood_matches_sklearn_on_the_union(seed):
    r = np.random.default_rng(seed)
    id_s, ood_s = r.normal(2, 1, 300), r.normal(0, 1, 400)
    shifts = [r.normal(1, 1, 150), np.round(r.normal(1.5, 1, 90))]
    pos = np.r_[id_s, shifts[0], shifts[1]]
    y = np.r_[np.ones(pos.size), np.zeros(ood_s.size)]
    ref = roc_auc_score(y, np.r_[pos, ood_s])
    assert fsood_auroc(id_s, shifts, ood_s) == pytest.approx(ref, abs=SUM_TOL)
    assert fsood_evaluate(id_s, shifts, ood_s) == evaluate(pos, ood_s)
    # harder than the ID-only setting here: shift sets score between ID and OoD
    assert fsood_auroc(id_s, shifts, ood_s) < evaluate(id_s, ood_s)["auroc"]
    assert fsood_auroc(id_s, [], ood_s) == evaluate(id_s, ood_s)["auroc"]
    with pytest.raises(OodbenchError, match="Shift set 1"):
        fsood_auroc(id_s, [shifts[0], np.array([np.nan])], ood_s)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_replicates_match_a_manual_loop_and_share_indices():
    conf, correct = _failure_data(0, n=80)
    ood = np.random.default_rng(5).normal(size=40)
    got = bootstrap_replicates(lambda c, k, o: aurc(c, k) + o.mean(), [(conf, correct), (ood,)],
                               20, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    ref = []
    for _ in range(20):
        i = rng.integers(0, 80, 80)
        j = rng.integers(0, 40, 40)
        ref.append(_aurc_loop(conf[i], correct[i]) + ood[j].mean())
    np.testing.assert_allclose(got, ref, rtol=0, atol=SUM_TOL)
    # arrays of one group are resampled together
    x = np.arange(30.0)
    pairs = bootstrap_replicates(lambda a, b: float(np.all(b == 2 * a)), [(x, 2 * x)], 10,
                                 np.random.default_rng(0))
    assert np.all(pairs == 1)


def test_bootstrap_interval_percentiles_seed_and_nan():
    conf, correct = _failure_data(1, n=300)
    lo, hi = bootstrap_interval(aurc, [(conf, correct)], ci=0.9, n_boot=200,
                                rng=np.random.default_rng(3))
    boot = bootstrap_replicates(aurc, [(conf, correct)], 200, np.random.default_rng(3))
    assert (lo, hi) == tuple(np.percentile(boot, [5, 95]))
    assert lo < aurc(conf, correct) < hi
    assert bootstrap_interval(aurc, [(conf, correct)], n_boot=50) == bootstrap_interval(
        aurc, [(conf, correct)], n_boot=50
    )
    # failure AUROC on 2 correct of 40: some resamples are all wrong (NaN) and are left out
    few = np.arange(40) < 2
    lo, hi = bootstrap_interval(failure_auroc, [(np.arange(40.0), few)], n_boot=100)
    assert 0 <= lo <= hi <= 1
    with pytest.raises(OodbenchError, match="n_boot"):
        bootstrap_replicates(aurc, [(conf, correct)], 1, np.random.default_rng(0))
    with pytest.raises(OodbenchError, match="'ci'"):
        bootstrap_interval(aurc, [(conf, correct)], ci=95)


def test_metrics_module_imports_no_torch():
    """metrics.py stays pure numpy (the package __init__ imports more; the module does not)."""
    import ast
    from pathlib import Path

    import oodbench.metrics

    tree = ast.parse(Path(oodbench.metrics.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or "").split(".")[0])
    assert imported <= {"__future__", "collections", "numpy", ".errors"}, imported
