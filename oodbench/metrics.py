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

Distribution-shift, full-spectrum and failure-detection metrics (shift accuracy, effective
robustness, FSOOD, failure AUROC, AURC, E-AURC, ECE) and their bootstrap intervals follow
below, with their conventions. This module imports numpy only (no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import OodbenchError

METRICS = ("auroc", "fpr95", "fpr95_ood", "aupr_in", "aupr_out")
HIGHER_IS_BETTER = {"auroc": True, "fpr95": False, "fpr95_ood": False, "aupr_in": True,
                    "aupr_out": True, "accuracy": True, "shift_accuracy": True,
                    "effective_robustness": True, "fsood_auroc": True, "failure_auroc": True,
                    "aurc": False, "eaurc": False, "ece": False}
LABELS = {
    "auroc": "AUROC↑",
    "fpr95": "FPR@95TPR(ID+)↓",
    "fpr95_ood": "FPR@95TPR(OoD+)↓",
    "aupr_in": "AUPR-In↑",
    "aupr_out": "AUPR-Out↑",
    "accuracy": "ID acc↑",
    "shift_accuracy": "Shift acc↑",
    "effective_robustness": "Eff. robustness↑",
    "fsood_auroc": "FSOOD AUROC↑",
    "failure_auroc": "Failure AUROC↑",
    "aurc": "AURC↓",
    "eaurc": "E-AURC↓",
    "ece": "ECE↓",
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


# ------------------------------------------------------------------ distribution shift
#
# Conventions of the robustness / trust metrics below (fractions, like the rest):
#
# * ``shift_accuracy``: top-1 accuracy of the head on a covariate-shift set (labelled images
#   of the ID classes), optionally with the argmax restricted to a class subset (ImageNet-R/A
#   are 200-class subsets: WiSE-FT's evaluation masks the other logits). ``shift_accuracies``
#   adds "avg", the unweighted mean over the sets (WiSE-FT's "avg shifts").
# * ``effective_robustness`` (Taori et al. 2020): shift accuracy minus the shift accuracy
#   predicted from ID accuracy by a reference line in logit space,
#   ``logit(shift) = slope * logit(id) + intercept``.
# * ``fsood_*`` (OpenOOD v1.5 full-spectrum OoD): the ID test set and all shift sets,
#   concatenated, are the positives against each OoD set; same conventions as ``evaluate``.
# * failure detection (FD-Shifts, Jaeger et al. 2023): a confidence score (higher = more
#   confident) should rank correct predictions above wrong ones. ``failure_auroc`` has the
#   correct predictions positive; ``aurc`` / ``eaurc`` are areas under the selective-risk vs
#   coverage curve (lower is better); ``ece`` is the expected calibration error of the
#   head's maximum softmax probability.

SHIFT_AVG = "avg"
LOGIT_EPS = 1e-6  # accuracies are clipped to [eps, 1 - eps] before the logit


def _labels_logits(logits: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits), np.asarray(labels).ravel()
    if logits.ndim != 2 or logits.shape[0] != labels.size:
        raise OodbenchError(
            f"{what}: logits must be (N, C) with one label per row; got logits {logits.shape} "
            f"and {labels.size} labels."
        )
    if labels.size and labels.max(initial=-1) >= logits.shape[1]:
        raise OodbenchError(
            f"{what}: label {int(labels.max())} is out of range for {logits.shape[1]} classes."
        )
    return logits, labels


def predictions_correct(
    logits: np.ndarray, labels: np.ndarray, classes: np.ndarray | None = None
) -> np.ndarray:
    """Whether the head's top-1 prediction is right, for the samples with a known label.

    Args:
        logits: (N, C) head logits.
        labels: (N,) class indices in 0..C-1; -1 (unknown) rows are dropped.
        classes: optional class subset (indices into C); the argmax runs over these columns
            only (the other logits are masked, as WiSE-FT evaluates ImageNet-R/A). Labels
            outside the subset count as wrong.

    Returns:
        (M,) bool, M = number of rows with label >= 0, in row order.
    """
    logits, labels = _labels_logits(logits, labels, "predictions_correct")
    known = labels >= 0
    logits, labels = logits[known], labels[known]
    if classes is None:
        return logits.argmax(1) == labels
    classes = np.asarray(classes, dtype=np.int64).ravel()
    if classes.size == 0 or classes.min() < 0 or classes.max() >= logits.shape[1]:
        raise OodbenchError(
            f"Class subset must be a non-empty list of indices in 0..{logits.shape[1] - 1}."
        )
    return classes[logits[:, classes].argmax(1)] == labels


def shift_accuracy(
    logits: np.ndarray, labels: np.ndarray, classes: np.ndarray | None = None
) -> float:
    """Top-1 accuracy on one shift set: mean of :func:`predictions_correct` (NaN if no
    sample has a known label)."""
    correct = predictions_correct(logits, labels, classes)
    return float(correct.mean()) if correct.size else float("nan")


def shift_accuracies(
    sets: dict[str, tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """Accuracy per shift set and their unweighted mean under the key ``"avg"``.

    Args:
        sets: name -> (logits (N, C), labels (N,)) or (logits, labels, class subset).
    """
    if not sets:
        raise OodbenchError("No shift sets to evaluate: add a 'shift:' set to the benchmark.")
    if SHIFT_AVG in sets:
        raise OodbenchError(f"A shift set may not be named {SHIFT_AVG!r}: rename it.")
    out = {name: shift_accuracy(*arrays) for name, arrays in sets.items()}
    out[SHIFT_AVG] = float(np.mean(list(out.values())))
    return out


def logit(p: np.ndarray | float, eps: float = LOGIT_EPS) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps], so accuracies of 0 or 1 stay finite."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def expit(x: np.ndarray | float) -> np.ndarray:
    """The inverse of :func:`logit` (without the clipping): 1 / (1 + exp(-x))."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def fit_reference_line(
    id_accuracy: np.ndarray, shift_accuracy: np.ndarray, eps: float = LOGIT_EPS
) -> tuple[float, float]:
    """Least-squares line of logit(shift accuracy) on logit(ID accuracy) over K >= 2 models
    (Taori et al. 2020's baseline fit); returns (slope, intercept) in logit space."""
    x, y = logit(id_accuracy, eps).ravel(), logit(shift_accuracy, eps).ravel()
    if x.size != y.size or x.size < 2 or np.ptp(x) == 0:
        raise OodbenchError(
            "A reference line needs at least two models with different ID accuracies "
            f"(got {x.size} ID and {y.size} shift accuracies)."
        )
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def effective_robustness(
    id_accuracy: np.ndarray | float,
    shift_accuracy: np.ndarray | float,
    slope: float,
    intercept: float,
    eps: float = LOGIT_EPS,
) -> np.ndarray | float:
    """Shift accuracy above the reference line (Taori et al. 2020), as a fraction:

        shift_accuracy - expit(slope * logit(id_accuracy) + intercept)

    ``id_accuracy`` is clipped to [eps, 1 - eps] before the logit. Positive = more robust
    than the models the line was fitted on. Array inputs broadcast; floats give a float."""
    predicted = expit(slope * logit(id_accuracy, eps) + intercept)
    out = np.asarray(shift_accuracy, dtype=np.float64) - predicted
    return float(out) if out.ndim == 0 else out


def _fsood_positives(id_scores: np.ndarray, shift_scores_list) -> np.ndarray:
    parts = [_check("ID", id_scores)]
    parts += [_check(f"Shift set {i}", s) for i, s in enumerate(shift_scores_list)]
    return np.concatenate(parts)


def fsood_auroc(
    id_scores: np.ndarray, shift_scores_list: list[np.ndarray], ood_scores: np.ndarray
) -> float:
    """Full-spectrum AUROC (OpenOOD v1.5 FSOOD): the ID test scores and every shift set's
    scores, concatenated (each sample counts once), are positive against one OoD set."""
    return auroc(_fsood_positives(id_scores, shift_scores_list), ood_scores)


def fsood_evaluate(
    id_scores: np.ndarray,
    shift_scores_list: list[np.ndarray],
    ood_scores: np.ndarray,
    tpr: float = 0.95,
) -> dict[str, float]:
    """All metrics of :func:`evaluate` in the full-spectrum setting (positives = ID test and
    all shift sets, concatenated), against one OoD set."""
    return evaluate(_fsood_positives(id_scores, shift_scores_list), ood_scores, tpr)


# ------------------------------------------------------------------ failure detection


def _check_failure(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = _check("Confidence", confidence)
    correct = np.asarray(correct).ravel()
    if correct.size != conf.size:
        raise OodbenchError(
            f"Failure detection needs one correctness flag per confidence; got {correct.size} "
            f"flags for {conf.size} scores."
        )
    if correct.dtype != bool and not np.isin(correct, (0, 1)).all():
        raise OodbenchError("Correctness flags must be booleans (or 0/1).")
    return conf, correct.astype(bool)


def failure_auroc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of the confidence for correct (positive) vs wrong predictions, ties 1/2
    (FD-Shifts' ``failauc``). NaN when all predictions are right or all wrong."""
    conf, correct = _check_failure(confidence, correct)
    if correct.all() or not correct.any():
        return float("nan")
    return auroc(conf[correct], conf[~correct])


def risk_coverage(
    confidence: np.ndarray, correct: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Selective risk vs coverage, as FD-Shifts builds the curve (`rc_stats`, the default
    since its 2024 AUGRC release; the older `legacy=True` curve depends on sort order in ties).

    Predictions are kept from the most confident down; there is one point per distinct
    confidence value, after the whole tie group (never part of it) is kept, so ties cannot
    depend on sort order. Points, coverage descending: (1, error rate), one per remaining
    threshold, and a closing point (0, risk of the top group).

    Returns:
        (coverage, risk, threshold): coverage and selective risk (errors / kept) per point,
        and the lowest confidence kept at each point but the last (one fewer entry).
    """
    conf, correct = _check_failure(confidence, correct)
    values, inverse = np.unique(-conf, return_inverse=True)  # groups, most confident first
    kept = np.cumsum(np.bincount(inverse, minlength=values.size))
    errors = np.cumsum(np.bincount(inverse, weights=(~correct).astype(np.float64), minlength=values.size))
    risk = errors / kept
    coverage = np.r_[kept[::-1] / conf.size, 0.0]
    return coverage, np.r_[risk[::-1], risk[0]], -values[::-1]


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve (:func:`risk_coverage`) by trapezoids, as a fraction
    (FD-Shifts reports it x1000). Lower is better; 0 = no errors, 1 = all wrong.

    Without ties this is the mean selective risk over the n coverage steps k/n plus
    (risk(1/n) - risk(1)) / (2n), the trapezoid's end corrections."""
    coverage, risk, _ = risk_coverage(confidence, correct)
    return float(-np.trapezoid(risk, coverage))  # coverage descends


def optimal_aurc(error_rate: float) -> float:
    """AURC of an oracle confidence for binary errors at the given error rate r, in the
    continuous limit used by FD-Shifts and Geifman et al. 2019: r + (1 - r) ln(1 - r)
    (with (1 - r) ln(1 - r) = 0 at r = 1)."""
    r = float(error_rate)
    return r + ((1 - r) * np.log1p(-r) if r < 1 else 0.0)


def eaurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Excess AURC: :func:`aurc` minus :func:`optimal_aurc` of the same error rate (FD-Shifts'
    binary-residual formula). Can be slightly negative: the oracle term is the continuous
    limit, and trapezoids under the concave oracle curve fall short of it (a perfect ranking
    of n predictions with accuracy a gives about -(1/a - a) / (12 n^2))."""
    conf, correct = _check_failure(confidence, correct)
    return aurc(conf, correct) - optimal_aurc(1.0 - correct.mean())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits in float64 (max-subtracted)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017): confidences in [0, 1] fall into
    ``n_bins`` equal-width bins (lo, hi] (a confidence of exactly 0 goes to the first), and

        ECE = sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|.
    """
    conf, correct = _check_failure(confidence, correct)
    if int(n_bins) != n_bins or n_bins < 1:
        raise OodbenchError(f"The 'n_bins' parameter must be an int >= 1. Got {n_bins!r} instead.")
    if conf.min() < 0 or conf.max() > 1:
        raise OodbenchError("ECE needs confidences in [0, 1] (probabilities, e.g. the max softmax).")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    gap = np.bincount(bins, weights=correct - conf, minlength=n_bins)  # sum(acc - conf) per bin
    return float(np.abs(gap).sum() / conf.size)


def softmax_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """:func:`ece` of the head's maximum softmax probability on the rows with label >= 0."""
    logits, labels = _labels_logits(logits, labels, "softmax_ece")
    known = labels >= 0
    prob = softmax(logits[known])
    return ece(prob.max(1), prob.argmax(1) == labels[known], n_bins)


def failure_metrics(confidence: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """``failure_auroc``, ``aurc`` and ``eaurc`` of one confidence score on one set."""
    return {
        "failure_auroc": failure_auroc(confidence, correct),
        "aurc": aurc(confidence, correct),
        "eaurc": eaurc(confidence, correct),
    }


# ------------------------------------------------------------------ bootstrap intervals


def bootstrap_replicates(
    metric: Callable[..., float],
    groups: Sequence[Sequence[np.ndarray]],
    n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bootstrap replicates of any metric of this module, as ``report.bootstrap`` does for
    the ID/OoD metrics: each group is resampled with replacement on its own (ID, each
    shift set and each OoD set are separate groups); the arrays inside one group are
    aligned per sample and share one index draw (confidence and correctness of the same
    predictions). Draws happen replicate by replicate, group by group, in order, so the
    result depends on ``rng`` only.

    Args:
        metric: called as ``metric(*arrays)`` with the resampled arrays of all groups,
            flattened in order, e.g. ``aurc`` with ``groups=[(confidence, correct)]``.
        groups: G groups, each a sequence of arrays of one common length N_g >= 1.
        n_boot: replicates B >= 2.
        rng: random generator.

    Returns:
        (B,) metric values (NaN where the metric is undefined on a replicate).
    """
    if int(n_boot) != n_boot or n_boot < 2:
        raise OodbenchError(f"The 'n_boot' parameter must be an int >= 2. Got {n_boot!r} instead.")
    groups = [[np.asarray(a) for a in g] for g in groups]
    sizes = []
    for i, g in enumerate(groups):
        lengths = {len(a) for a in g}
        if len(lengths) != 1 or 0 in lengths:
            raise OodbenchError(f"Bootstrap group {i} needs non-empty arrays of one length.")
        sizes.append(lengths.pop())
    out = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        arrays = []
        for g, n in zip(groups, sizes, strict=True):
            idx = rng.integers(0, n, size=n)
            arrays += [a[idx] for a in g]
        out[b] = metric(*arrays)
    return out


def bootstrap_interval(
    metric: Callable[..., float],
    groups: Sequence[Sequence[np.ndarray]],
    ci: float = 0.95,
    n_boot: int = 1000,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) at level ``ci`` of ``metric`` (see
    :func:`bootstrap_replicates`), the same percentiles as ``report``'s intervals:
    50 (1 - ci) and 50 (1 + ci). Replicates where the metric is undefined (NaN, e.g.
    ``failure_auroc`` on an all-correct resample) are left out; all NaN gives (NaN, NaN).
    ``rng`` defaults to ``np.random.default_rng(0)``."""
    if not 0 < ci < 1:
        raise OodbenchError(f"The 'ci' parameter must be a float in (0, 1). Got {ci!r} instead.")
    rng = np.random.default_rng(0) if rng is None else rng
    boot = bootstrap_replicates(metric, groups, n_boot, rng)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(boot, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)
