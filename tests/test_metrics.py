import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from oodbench.errors import OodbenchError
from oodbench.metrics import accuracy, auroc, evaluate


def _sk(id_s, ood_s):
    y = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    s = np.r_[id_s, ood_s]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    fpr_o, tpr_o, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y, s),
        "fpr95": fpr[np.searchsorted(tpr, 0.95)],
        "fpr95_ood": fpr_o[np.searchsorted(tpr_o, 0.95)],
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
    }


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed, ties):
    r = np.random.default_rng(seed)
    id_s, ood_s = r.normal(1, 1, 400), r.normal(0, 1.5, 700)
    if ties:
        id_s, ood_s = np.round(id_s), np.round(ood_s)
    ours, ref = evaluate(id_s, ood_s), _sk(id_s, ood_s)
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k


def test_fpr_conventions_differ_and_are_exact():
    id_s = np.arange(100, dtype=float)  # ID 0..99
    ood_s = np.arange(-50, 50, dtype=float)  # OoD -50..49
    m = evaluate(id_s, ood_s)
    # 95% of ID accepted -> threshold 5 -> OoD 5..49 accepted = 45/100
    assert m["fpr95"] == pytest.approx(0.45)
    # 95% of OoD caught (score <= 44) -> ID 0..44 rejected = 45/100
    assert m["fpr95_ood"] == pytest.approx(0.45)
    assert auroc(id_s + 1000, ood_s) == 1.0


def test_metrics_reject_nan_and_empty():
    with pytest.raises(OodbenchError, match="NaN"):
        evaluate(np.array([1.0, np.nan]), np.array([0.0]))
    with pytest.raises(OodbenchError, match="empty"):
        evaluate(np.array([]), np.array([0.0]))


def test_accuracy_ignores_unknown_labels():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
    assert accuracy(logits, np.array([0, 0, -1])) == 0.5


def test_fpr95_on_ties_is_right_where_openood_overstates_it():
    """README, metrics: one ID and one OoD sample per value 0..99. Accepting 95 % of ID accepts
    95 % of OoD; OpenOOD's FPR@95 (sklearn ``roc_curve`` with its collinear points dropped,
    then the first point with TPR >= 0.95) says 1.00."""
    v = np.arange(100.0)
    res = evaluate(v, v)
    assert res["fpr95"] == pytest.approx(0.95) and res["fpr95_ood"] == pytest.approx(0.95)
    fpr, tpr, _ = roc_curve(np.r_[np.zeros(100), np.ones(100)], np.r_[-v, -v])  # OpenOOD: OoD positive
    assert fpr[np.argmax(tpr >= 0.95)] == 1.0
