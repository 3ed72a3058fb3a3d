"""Scores computed from the head's logits alone (``z``: (N, C) logits, ``p = softmax(z)``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp, softmax

from ..console import warn
from ..errors import OodbenchError
from .base import Param, Scorer
from .common import (
    ELEMENTWISE_BYTES,
    as_float64_tensor,
    chunk_rows,
    chunks,
    energy,
    log_softmax64,
    logits,
    max_softmax,
    rowwise,
)
from .registry import register_scorer


def _by_rows(z: np.ndarray, fn) -> np.ndarray:
    """Apply ``fn`` (float64 (n, C) logits -> (n,) scores) over row chunks of ``z``."""
    return rowwise(
        lambda r: fn(np.asarray(z[r], np.float64)),
        z.shape[0],
        chunk_rows(4 * z.shape[1], budget=ELEMENTWISE_BYTES),
    )


@register_scorer
class MSP(Scorer):
    """Maximum softmax probability: max_c softmax(z)_c. Higher = more ID."""

    name = "msp"
    needs = ("logits",)
    reference = (
        "Hendrycks & Gimpel, A Baseline for Detecting Misclassified and OoD Examples, ICLR 2017"
    )

    def score(self, data) -> np.ndarray:
        return _by_rows(logits(data), max_softmax)


@register_scorer
class MaxLogit(Scorer):
    """Maximum logit: max_c z_c. Higher = more ID."""

    name = "maxlogit"
    needs = ("logits",)
    reference = "Hendrycks et al., Scaling OoD Detection to Real-World Settings, ICML 2022"

    def score(self, data) -> np.ndarray:
        return logits(data).max(1).astype(np.float64)


@register_scorer
class Energy(Scorer):
    """Negative free energy: T * logsumexp(z / T). Higher = more ID."""

    name = "energy"
    needs = ("logits",)
    reference = "Liu et al., Energy-based Out-of-distribution Detection, NeurIPS 2020"
    params = {"temperature": Param(1.0, float, low=1e-6, doc="temperature T")}
    search_space = {"temperature": (0.1, 0.5, 1.0, 2.0, 10.0)}

    def score(self, data) -> np.ndarray:
        return _by_rows(logits(data), lambda z: energy(z, self.temperature))


@register_scorer
class Entropy(Scorer):
    """Negative entropy of the softmax: sum_c p_c log p_c. Higher (more peaked) = more ID."""

    name = "entropy"
    needs = ("logits",)
    reference = "Chan et al., Entropy Maximization and Meta Classification for OoD Detection in Semantic Segmentation, ICCV 2021"

    def score(self, data) -> np.ndarray:
        import torch
        def neg_entropy(z):
            logp = log_softmax64(z)
            return (torch.exp(logp) * logp).sum(1).numpy()

        return _by_rows(logits(data), neg_entropy)


def _nll_terms(
    z: np.ndarray, y: np.ndarray, beta: float, derivatives: bool
) -> tuple[float, float, float]:
    """Mean NLL of softmax(beta z) on labels y and, optionally, its first and second derivative
    in beta; accumulated over row chunks."""
    nll = grad = hess = 0.0
    for r in chunks(z.shape[0], chunk_rows(4 * z.shape[1])):
        zc = np.asarray(z[r], np.float64)
        zy = zc[np.arange(zc.shape[0]), y[r]]
        lse = logsumexp(beta * zc, axis=1)
        nll += float((lse - beta * zy).sum())
        if derivatives:
            p = np.exp(beta * zc - lse[:, None])
            ez = (p * zc).sum(1)
            grad += float((ez - zy).sum())
            hess += float(((p * zc * zc).sum(1) - ez**2).sum())
    n = z.shape[0]
    return nll / n, grad / n, hess / n


def fit_temperature(
    z: np.ndarray, y: np.ndarray, t_min: float = 1e-4, t_max: float = 1e4
) -> tuple[float, bool]:
    """Temperature T in [t_min, t_max] minimising the mean NLL of softmax(z / T) on labels ``y``.

    The NLL is convex in beta = 1/T, so its derivative g is increasing. Until the root of g is
    bracketed, beta doubles or halves (or takes a longer Newton step); then safeguarded Newton
    (rtsafe: geometric bisection when a step leaves the bracket or shrinks too slowly). One
    pass over the logits per step. Returns (T, whether a minimum was bracketed): separable
    data (g < 0 everywhere) end at t_min or where g underflows to 0.
    """
    b_min, b_max = 1.0 / t_max, 1.0 / t_min
    lo, hi, beta, dx_old = 0.0, np.inf, 1.0, np.inf
    for _ in range(200):
        _, grad, hess = _nll_terms(z, y, beta, True)
        if grad > 0:
            hi = beta
        else:
            lo = beta
        if grad == 0.0 or (grad > 0 and beta <= b_min) or (grad < 0 and beta >= b_max):
            break  # at the optimum, or the optimum lies beyond the allowed range
        newton = beta - grad / hess if hess > 0 else np.nan
        if np.isinf(hi):
            new = max(newton, 2.0 * beta) if np.isfinite(newton) else 2.0 * beta
        elif lo == 0.0:
            new = min(newton, 0.5 * beta) if np.isfinite(newton) else 0.5 * beta
        elif lo < newton < hi and abs(newton - beta) < 0.5 * dx_old:
            new = newton
        else:
            new = np.sqrt(lo * hi)
        new = min(max(new, b_min), b_max)
        dx_old = abs(new - beta)
        if dx_old <= 1e-10 * beta or hi - lo <= 1e-10 * beta:
            break
        beta = new
    return 1.0 / beta, bool(np.isfinite(hi))


@register_scorer
class TempScale(Scorer):
    """Temperature-scaled MSP: max_c softmax(z / T)_c, T fitted by NLL on ID-val logits and labels.

    Higher = more ID. The fitted temperature is ``temperature_``.
    """

    name = "tempscale"
    needs = ("logits", "labels")
    fit_split = "val"
    reference = "Guo et al., On Calibration of Modern Neural Networks, ICML 2017"

    def fit(self, data) -> TempScale:
        z = logits(data)
        y = np.asarray(data.labels)
        known = y >= 0
        if known.sum() < 2:
            raise OodbenchError(
                "tempscale needs ≥ 2 labelled ID validation samples to fit T; the val split has fewer."
            )
        if y[known].max() >= z.shape[1]:
            raise OodbenchError(
                f"tempscale: val label {int(y[known].max())} is outside the head's {z.shape[1]} classes."
            )
        z, y = (z, y) if known.all() else (z[known], y[known])
        self.temperature_, bracketed = fit_temperature(z, y)
        if not bracketed:
            warn(
                "tempscale: the ID-val NLL keeps falling as T -> 0 (every sample is classified "
                f"correctly with a margin); using T = {self.temperature_:.3g}, where softmax saturates."
            )
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        t = self.temperature_
        return _by_rows(logits(data), lambda z: max_softmax(z, t))


@register_scorer
class GEN(Scorer):
    """Generalized entropy: -sum over the top-M probabilities of p^gamma (1 - p)^gamma.

    M is capped at the number of classes. Higher = more ID. No clamping of p (as the
    reference code); pytorch-ood averages instead of summing and clamps p to [1e-7, 1 - 1e-7].
    """

    name = "gen"
    needs = ("logits",)
    reference = "Liu et al., GEN: Pushing the Limits of Softmax-Based OoD Detection, CVPR 2023"
    params = {
        "gamma": Param(0.1, float, low=1e-6, doc="exponent gamma"),
        "m": Param(100, int, low=1, doc="number of top probabilities M (capped at C)"),
    }
    search_space = {"gamma": (0.01, 0.05, 0.1, 0.5, 1.0), "m": (10, 50, 100, 200, 500)}

    def score(self, data) -> np.ndarray:
        import torch
        z = logits(data)
        m = min(self.m, z.shape[1])
        g = self.gamma

        def gen(zc):
            p = torch.softmax(as_float64_tensor(zc), dim=1)
            top = p if m == p.shape[1] else torch.topk(p, m, dim=1, sorted=False).values
            return (-(top**g * (1.0 - top) ** g).sum(1)).numpy()

        return _by_rows(z, gen)


@register_scorer
class KLM(Scorer):
    """KL matching: -min_k KL(p || q_k), q_k = mean ID-val softmax of the samples predicted k.

    The minimum runs over classes predicted for at least one val sample; labels are not used.
    Higher = more ID.
    """

    name = "klm"
    needs = ("logits",)
    fit_split = "val"
    reference = "Hendrycks et al., Scaling OoD Detection to Real-World Settings, ICML 2022"

    def fit(self, data) -> KLM:
        z = logits(data)  # the ID validation split: every sample is ID, labels are not needed
        if z.shape[0] == 0:
            raise OodbenchError("klm needs ID validation samples to fit; the val split is empty.")
        pred = z.argmax(1)
        classes, inv, counts = np.unique(pred, return_inverse=True, return_counts=True)
        sums = np.zeros((classes.size, z.shape[1]), np.float64)
        for r in chunks(z.shape[0], chunk_rows(4 * z.shape[1])):
            onehot = sp.csr_matrix(
                (np.ones(r.stop - r.start), (inv[r], np.arange(r.stop - r.start))),
                shape=(classes.size, r.stop - r.start),
            )
            sums += onehot @ softmax(np.asarray(z[r], np.float64), axis=1)
        q = sums / counts[:, None]
        self.log_q_ = np.log(np.maximum(q, np.finfo(np.float64).tiny))
        self.classes_ = classes
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        import torch
        self.check_fitted()

        log_q = torch.from_numpy(np.ascontiguousarray(self.log_q_, dtype=np.float64))

        def neg_min_kl(zc):
            logp = log_softmax64(zc)
            p = torch.exp(logp)
            kl = (p * logp).sum(1, keepdim=True) - p @ log_q.T
            return (-kl.amin(1)).numpy()

        z = logits(data)
        return rowwise(
            lambda r: neg_min_kl(np.asarray(z[r], np.float64)),
            z.shape[0],
            chunk_rows(4 * z.shape[1] + self.log_q_.shape[0], budget=ELEMENTWISE_BYTES),
        )
