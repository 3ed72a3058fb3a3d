"""OoD detection metrics from two score arrays (higher score = more in-distribution).

Conventions (stated once, used everywhere):

* ``auroc``: ID is the positive class; area under the ROC curve of the score, ties count 1/2.
* ``fpr95``: the classic convention (Hendrycks & Gimpel, ODIN, MCM): the fraction of OoD
  samples accepted at the threshold that accepts 95% of ID samples (ID positive, TPR = 95%).
* ``fpr95_ood``: OpenOOD v1.5 / pytorch-ood 0.4 convention: OoD is positive (score -s); the
  fraction of ID samples rejected at the threshold that catches 95% of OoD samples.
* ``aupr_in``: average precision with ID positive and the score; ``aupr_out``: average
  precision with OoD positive and -score. Both are step-wise sums (scikit-learn's
  ``average_precision_score``), not trapezoids (OpenOOD integrates by trapezoids).

All metrics are fractions in [0, 1]; reports show them as percentages.
"""

from __future__ import annotations

import numpy as np

from .errors import OodbenchError

METRICS = ("auroc", "fpr95", "fpr95_ood", "aupr_in", "aupr_out")
HIGHER_IS_BETTER = {"auroc": True, "fpr95": False, "fpr95_ood": False, "aupr_in": True,
                    "aupr_out": True, "accuracy": True}
LABELS = {
    "auroc": "AUROC↑",
    "fpr95": "FPR@95TPR(ID+)↓",
    "fpr95_ood": "FPR@95TPR(OoD+)↓",
    "aupr_in": "AUPR-In↑",
    "aupr_out": "AUPR-Out↑",
    "accuracy": "ID acc↑",
}


def _check(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    if a.size == 0:
        raise OodbenchError(f"{name} scores are empty: score a non-empty split.")
    if not np.all(np.isfinite(a)):
        bad = int((~np.isfinite(a)).sum())
        raise OodbenchError(f"{name} scores contain {bad} NaN/inf values: fix the scorer or features.")
    return a


def _groups(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sort: the distinct score values in descending order with the number of ID (pos)
    and OoD (neg) samples at each. Every metric of this module is a function of these."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    order = np.argsort(-scores)  # order inside a tie group never matters: groups are summed
    s, y = scores[order], is_pos[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each tie group
    tp = np.cumsum(y)[last]
    n_pos = np.diff(np.r_[0, tp])
    n_neg = np.diff(np.r_[0, last + 1]) - n_pos
    return s[last], n_pos, n_neg


def _curve(n_pos: np.ndarray, n_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tpr, fpr, tp, fp) at every group threshold, from the top group down, starting at (0, 0)."""
    tp = np.r_[0, np.cumsum(n_pos)]
    fp = np.r_[0, np.cumsum(n_neg)]
    return tp / max(tp[-1], 1), fp / max(fp[-1], 1), tp, fp


def _roc(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct threshold, descending; returns (tpr, fpr, thresholds)."""
    s, n_pos, n_neg = _groups(pos, neg)
    tpr, fpr, _, _ = _curve(n_pos, n_neg)
    return tpr, fpr, np.r_[np.inf, s]


def _ap(tpr: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    return float(np.sum(np.diff(tpr) * precision[1:]))


def _fpr_at(tpr: np.ndarray, fpr: np.ndarray, tpr_level: float) -> float:
    i = int(np.searchsorted(tpr, tpr_level - 1e-12, side="left"))
    return float(fpr[min(i, fpr.size - 1)])


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under ROC with ID positive (Mann-Whitney U / (n_id * n_ood), ties count 1/2)."""
    pos, neg = _check("ID", id_scores), _check("OoD", ood_scores)
    tpr, fpr, _ = _roc(pos, neg)
    return float(np.trapezoid(tpr, fpr))


def evaluate(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    """All metrics of this module for one (ID, OoD) pair, from one sort; see the module docstring.

    The OoD-positive view (score -s) has the same tie groups in reverse order, so its curve
    is the cumulative counts taken from the bottom group up."""
    pos, neg = _check("ID", id_scores), _check("OoD", ood_scores)
    _, n_pos, n_neg = _groups(pos, neg)
    t, f, tp, fp = _curve(n_pos, n_neg)
    t_o, f_o, tp_o, fp_o = _curve(n_neg[::-1], n_pos[::-1])
    return {
        "auroc": float(np.trapezoid(t, f)),
        "fpr95": _fpr_at(t, f, tpr),
        "fpr95_ood": _fpr_at(t_o, f_o, tpr),
        "aupr_in": _ap(t, tp, fp),
        "aupr_out": _ap(t_o, tp_o, fp_o),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy over samples with a known label (label >= 0)."""
    labels = np.asarray(labels)
    known = labels >= 0
    if not known.any():
        return float("nan")
    return float((np.asarray(logits)[known].argmax(1) == labels[known]).mean())
