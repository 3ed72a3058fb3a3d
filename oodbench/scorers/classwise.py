"""Scorers built on the head's classes: SHE, fDBD, NCI and OpenMax.

``h``: (N, D) features the head reads, ``z = h W^T + b``: (N, C) logits, ``y^ = argmax z``.
All scores are higher = more in-distribution.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp, softmax

from ..errors import OodbenchError
from .base import Param, Scorer
from .common import (
    CHUNK_BYTES,
    ELEMENTWISE_BYTES,
    chunk_rows,
    chunks,
    class_means,
    head_arrays,
    head_features,
    logit_blocks,
    logits,
    logits64,
    predictions,
    rowwise,
)
from .registry import register_scorer


def _correct_slots(data, who: str, n_classes: int, min_count: int = 1, keep: bool = True) -> np.ndarray:
    """Labels of the fit split with -1 wherever the head's prediction is wrong (or unlabelled).

    Raises when a labelled class has fewer than ``min_count`` correctly classified samples.
    ``keep``: keep the split's logits for later passes (see :func:`logit_blocks`).
    """
    labels = np.asarray(data.labels)
    if not (labels >= 0).any():
        raise OodbenchError(f"{who} needs labelled ID train samples; the train split has none.")
    pred = predictions(data, keep=keep)
    correct = np.where((pred == labels) & (labels >= 0), labels, -1)
    counts = np.bincount(correct[correct >= 0], minlength=n_classes)
    present = np.unique(labels[labels >= 0])
    short = present[counts[present] < min_count]
    if short.size:
        c = int(short[0])
        raise OodbenchError(
            f"{who}: class {c} has {counts[c]} correctly classified train sample(s); it needs ≥ {min_count}. "
            "Use a larger train subset or a better head."
        )
    return correct


def _correct_means(h: np.ndarray, correct: np.ndarray, n_classes: int, who: str) -> np.ndarray:
    """(C, D) mean of the correctly classified rows of each class; zeros for absent classes."""
    means, classes, _ = class_means(h, correct, who)
    out = np.zeros((n_classes, h.shape[1]), np.float64)
    out[classes] = means
    return out


@register_scorer
class SHE(Scorer):
    """Simplified Hopfield energy: <h, m_y^>, m_c = mean train feature of correctly classified class c.

    Classes without train samples get a zero pattern. Higher = more ID.
    """

    name = "she"
    needs = ("head", "features", "labels")
    fit_split = "train"
    reference = "Zhang et al., OoD Detection based on In-Distribution Data Patterns Memorization with Modern Hopfield Energy, ICLR 2023"

    def fit(self, data) -> SHE:
        n_classes = data.require_head().num_classes
        # one pass over the train logits: none kept for SHE alone (in `-m all` OpenMax, which
        # keeps them, fits first)
        correct = _correct_slots(data, self.name, n_classes, keep=False)
        self.patterns_ = _correct_means(head_features(data), correct, n_classes, self.name)
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        import torch
        self.check_fitted()
        h = head_features(data)
        pred = torch.from_numpy(np.asarray(logits(data)).argmax(1))
        patterns = torch.from_numpy(self.patterns_)
        out = np.empty(h.shape[0], np.float64)
        for r in chunks(h.shape[0], 4096):  # float64 products, 4,096-row blocks stay in cache
            x = torch.from_numpy(np.ascontiguousarray(h[r])).double()
            out[r] = torch.einsum("nd,nd->n", x, patterns[pred[r]]).numpy()
        return out


@register_scorer
class FDBD(Scorer):
    """Fast decision-boundary distance: sum_{c != y^} |z_y^ - z_c| / ||w_y^ - w_c|| / ||h - mu_train||.

    The reference sums over classes (pytorch-ood averages, dividing by C - 1). Higher = more ID.
    """

    name = "fdbd"
    needs = ("head", "features")
    fit_split = "train"
    reference = "Liu & Qin, Fast Decision Boundary based Out-of-Distribution Detector, ICML 2024"

    def fit(self, data) -> FDBD:
        h = head_features(data)
        self.mean_ = h.mean(0, dtype=np.float64)
        w, _ = head_arrays(data)
        sq = (w**2).sum(1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (w @ w.T)
        denom = np.sqrt(np.clip(d2, 0.0, None))
        np.fill_diagonal(denom, 1.0)  # |z_y^ - z_y^| = 0: the own class contributes nothing
        self.denom_ = np.maximum(denom, 1e-12)
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        h = head_features(data)
        w, b = head_arrays(data)

        def fdbd(r):
            x = np.asarray(h[r], np.float64)
            z = logits64(data, r)
            pred = z.argmax(1)
            zmax = z[np.arange(z.shape[0]), pred]
            boundary = (np.abs(zmax[:, None] - z) / self.denom_[pred]).sum(1)
            return boundary / np.maximum(np.linalg.norm(x - self.mean_, axis=1), 1e-12)

        return rowwise(fdbd, h.shape[0], chunk_rows(3 * w.shape[0] + h.shape[1]))


@register_scorer
class NCI(Scorer):
    """Neural-collapse inspired: <w_y^, h - mu>/||h - mu|| + alpha ||h||_1 (mu = train mean).

    Higher = more ID.
    """

    name = "nci"
    needs = ("head", "features")
    fit_split = "train"
    reference = (
        "Liu & Qin, Detecting Out-of-Distribution Through the Lens of Neural Collapse, CVPR 2025"
    )
    params = {"alpha": Param(1e-4, float, low=0.0, doc="weight of the L1 norm term")}
    search_space = {"alpha": (0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0)}

    def fit(self, data) -> NCI:
        self.mean_ = head_features(data).mean(0, dtype=np.float64)
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        h = head_features(data)
        w, b = head_arrays(data)

        def nci(r):
            x = np.asarray(h[r], np.float64)
            pred = logits64(data, r).argmax(1)
            c = x - self.mean_
            proj = np.einsum("nd,nd->n", w[pred], c) / np.maximum(np.linalg.norm(c, axis=1), 1e-12)
            return proj + self.alpha * np.abs(x).sum(1)

        return rowwise(nci, h.shape[0], chunk_rows(2 * w.shape[0] + 2 * h.shape[1]))


# -- OpenMax -------------------------------------------------------------------------------
TRANSLATION = 10000.0
"""libMR's translate amount: the tail is shifted to start at 10000 before the Weibull fit."""


def fit_weibull(x: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (shape c, scale lam) of a two-parameter Weibull (location 0) on x > 0.

    Solves the profile equation sum x^c ln x / sum x^c - 1/c - mean(ln x) = 0 (increasing in c)
    on ln c, in log space so that x^c never overflows; lam = (mean x^c)^(1/c). A constant
    sample gives c = inf (a step at lam).
    """
    # imported here: scipy.optimize takes ~0.4 s to import and listing the scorers needs none of it
    from scipy.optimize import brentq

    y = np.log(np.asarray(x, np.float64))
    if y.size < 2 or np.ptp(y) == 0:
        return np.inf, float(np.exp(y.max()))
    ymax, ymean = y.max(), y.mean()

    def g(log_c: float) -> float:
        c = np.exp(log_c)
        w = softmax(c * (y - ymax))
        return float((w * y).sum() - ymean - 1.0 / c)

    c = float(np.exp(brentq(g, -30.0, 60.0, xtol=1e-14, rtol=1e-15, maxiter=500)))
    log_lam = ymax + (logsumexp(c * (y - ymax)) - np.log(y.size)) / c
    return c, float(np.exp(log_lam))


def weibull_cdf(x: np.ndarray, c: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """1 - exp(-(x / lam)^c) elementwise (broadcast), 0 for x ≤ 0; stable for huge or infinite c."""
    x, c, lam = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (x, c, lam)))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = c * (np.log(np.where(x > 0, x, 1.0)) - np.log(lam))
    t = np.where(np.isnan(t), -np.inf, t)  # inf * 0 (x == lam, c = inf): the step's left side
    out = -np.expm1(-np.exp(np.clip(t, -np.inf, 700.0)))
    return np.where(x > 0, out, 0.0)


def top_stable(x: np.ndarray, alpha: int) -> np.ndarray:
    """``np.argsort(-x, axis=1, kind="stable")[:, :alpha]`` (the alpha largest entries of each
    row, by value descending then index ascending) without sorting whole rows: a partial
    selection, then a sort of the alpha picks; rows where the alpha-th value is tied with an
    entry left out take the full stable sort."""
    n, c = x.shape
    if alpha * 8 >= c:
        return np.argsort(-x, axis=1, kind="stable")[:, :alpha]
    part = np.argpartition(-x, alpha - 1, axis=1)[:, :alpha]
    vals = np.take_along_axis(x, part, 1)
    top = np.take_along_axis(part, np.lexsort((part, -vals), axis=-1), 1)
    tied = (x >= vals.min(1, keepdims=True)).sum(1) > alpha
    if tied.any():
        top[tied] = np.argsort(-x[tied], axis=1, kind="stable")[:, :alpha]
    return top


def _distances(z: np.ndarray, mav: np.ndarray, kind: str, eu_weight: float) -> np.ndarray:
    """Distance of logit rows (..., C) to class mean logit vectors (..., C) broadcast together."""
    eu = np.linalg.norm(z - mav, axis=-1)
    if kind == "euclidean":
        return eu
    cos = 1.0 - (z * mav).sum(-1) / np.maximum(
        np.linalg.norm(z, axis=-1) * np.linalg.norm(mav, axis=-1), 1e-12
    )
    return cos if kind == "cosine" else eu_weight * eu + cos


@register_scorer
class OpenMax(Scorer):
    """OpenMax: 1 - p_unknown after Weibull recalibration of the top-alpha logits.

    Fit: per class, the mean logit vector (MAV) of the correctly classified train samples and
    a Weibull (libMR FitHigh: tail shifted by ``translate`` - min, 10000 as libMR's C++ source
    and pytorch-ood; OpenOOD's PyPI ``libmr`` uses 1) on the ``tail`` largest distances to it. Score: for the top-alpha classes (rank i weight (alpha + 1 - i) / alpha),
    z'_c = z_c (1 - w_c ω_c), z_unknown = sum_c z_c w_c ω_c, p = softmax([z', z_unknown]).
    alpha is capped at C. Higher = more ID.
    """

    name = "openmax"
    needs = ("logits", "labels")
    fit_split = "train"
    reference = "Bendale & Boult, Towards Open Set Deep Networks, CVPR 2016"
    params = {
        "tail": Param(20, int, low=2, doc="tail size of the Weibull fit"),
        "alpha": Param(3, int, low=1, doc="number of top classes revised (capped at C)"),
        "distance": Param(
            "euclidean", str, choices=("euclidean", "eucos", "cosine"), doc="distance to the MAV"
        ),
        "eu_weight": Param(0.005, float, low=0.0, doc="weight of the Euclidean part of 'eucos'"),
        "translate": Param(
            TRANSLATION, float, low=0.0,
            doc="libMR translate_amount (libMR source, pytorch-ood: 10000; OpenOOD's PyPI libmr: 1)",
        ),
    }
    search_space = {"tail": (10, 20, 50, 100), "alpha": (1, 3, 5, 10)}

    def fit(self, data) -> OpenMax:
        n_classes = data.require_head().num_classes
        correct = _correct_slots(data, self.name, n_classes, min_count=2)
        # class means (MAVs) of the correct rows' logits, then their distances: two passes
        # over row blocks of logits (a big train split's logits are never held whole)
        classes, counts = np.unique(correct[correct >= 0], return_counts=True)
        slot = np.full(n_classes, -1)
        slot[classes] = np.arange(classes.size)
        sums = np.zeros((classes.size, n_classes), np.float64)
        for r, z in logit_blocks(data):
            sel = correct[r] >= 0
            k = int(sel.sum())
            onehot = sp.csr_matrix(
                (np.ones(k), (slot[correct[r][sel]], np.arange(k))), shape=(classes.size, k)
            )
            sums += onehot @ np.asarray(z[sel], np.float64)
        self.mavs_ = np.zeros((n_classes, n_classes), np.float64)
        self.mavs_[classes] = sums / counts[:, None]
        self.weibull_ = np.full((n_classes, 3), np.nan)  # shape c, scale, translation shift
        rows = np.flatnonzero(correct >= 0)
        dist = np.concatenate(
            [
                _distances(
                    np.asarray(z[correct[r] >= 0], np.float64),
                    self.mavs_[correct[r][correct[r] >= 0]],
                    self.distance,
                    self.eu_weight,
                )
                for r, z in logit_blocks(data, CHUNK_BYTES // 8)
            ]
        )
        cls = correct[rows]
        order = np.argsort(cls, kind="stable")
        classes, starts = np.unique(cls[order], return_index=True)
        for c, d in zip(classes, np.split(dist[order], starts[1:]), strict=True):
            tail = np.sort(d)[-self.tail :]
            shift = self.translate - tail.min()
            self.weibull_[c] = (*fit_weibull(tail + shift), shift)
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        import torch
        self.check_fitted()
        z = logits(data)
        alpha = min(self.alpha, z.shape[1])
        weights = (alpha + 1.0 - np.arange(1, alpha + 1)) / alpha

        def openmax(r):
            x = np.asarray(z[r], np.float64)
            top = top_stable(x, alpha)  # (n, alpha)
            d = _distances(x[:, None, :], self.mavs_[top], self.distance, self.eu_weight)
            shape, scale, shift = (self.weibull_[top, i] for i in range(3))
            fitted = ~np.isnan(shape)  # classes without train samples are not revised
            ws = np.where(
                fitted,
                weibull_cdf(
                    d + np.nan_to_num(shift),
                    np.nan_to_num(shape, nan=1.0),
                    np.nan_to_num(scale, nan=1.0),
                ),
                0.0,
            )
            omega = ws * weights  # the revision weights of the top-alpha classes (0 elsewhere)
            x_top = np.take_along_axis(x, top, 1)
            unknown = (x_top * omega).sum(1)
            revised = x.copy()
            np.put_along_axis(revised, top, x_top * (1.0 - omega), axis=1)
            lse = np.logaddexp(torch.logsumexp(torch.from_numpy(revised), dim=1).numpy(), unknown)
            return -np.expm1(unknown - lse)  # 1 - p_unknown, p over [revised logits, unknown]

        return rowwise(openmax, z.shape[0], chunk_rows(4 * alpha * z.shape[1], budget=ELEMENTWISE_BYTES))
