"""Activation shaping on the head's input features, then the energy of the reshaped logits.

``h``: (N, D) features the head reads, ``W`` (C, D), ``b`` (C,), energy = logsumexp(W h' + b).
These scores were designed for non-negative (post-ReLU) penultimate features; they are
computed as defined on whatever features the head reads (CLIP embeddings are signed, so
expect them to degrade there: ``relu_assumption = True``). Higher = more in-distribution.
"""

from __future__ import annotations

import numpy as np

from ..errors import OodbenchError
from .base import Param, Scorer
from .common import chunk_rows, energy, head_arrays, head_features, logits64, rowwise
from .registry import register_scorer


def _percent(default: float, doc: str) -> Param:
    return Param(default, float, low=0.0, high=100.0, doc=doc)


FIT_SPLIT_PARAM = Param(
    "train", str, choices=("train", "val"),
    doc="ID split the thresholds/statistics are fitted on (OpenOOD: val)",
)


class SelectableFitSplit(Scorer):
    """A scorer whose fit split is the parameter ``fit_split``: oodbench fits on ID train,
    OpenOOD's postprocessors (ReAct, VRA, Residual) on ID val (``-p react.fit_split=val``)."""

    fit_split = "train"

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.fit_split = self.hparams["fit_split"]  # the instance's split (the class keeps the default)
        self.fitted_ = False


class _Shaped(Scorer):
    """Energy of the head applied to ``shape(h)`` (subclasses define ``shape``)."""

    needs = ("head", "features")
    relu_assumption = True

    def shape(self, h: np.ndarray) -> np.ndarray:  # (n, D) float64 -> (n, D)
        raise NotImplementedError

    def weight(self, w: np.ndarray) -> np.ndarray:
        return w

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        h = head_features(data)
        w, b = head_arrays(data)
        w = self.weight(w)
        return rowwise(
            lambda r: energy(self.shape(np.asarray(h[r], np.float64)) @ w.T + b),
            h.shape[0],
            chunk_rows(2 * w.shape[0] + 3 * h.shape[1]),
        )


def _kept(d: int, p: float) -> int:
    """Number of activations kept when pruning the lowest p percent of d (at least 1)."""
    return max(1, d - int(np.round(d * p / 100.0)))


def _top_mask(h: np.ndarray, k: int) -> np.ndarray:
    """Boolean (n, D) mask of the k largest entries of each row.

    h >= the row's k-th largest value (torch's multithreaded kthvalue); rows where that value
    is tied with an entry left out choose among the ties as ``np.argpartition`` does."""
    import torch
    n, d = h.shape
    if k >= d:
        return np.ones(h.shape, bool)
    kth = torch.kthvalue(torch.from_numpy(np.ascontiguousarray(h)), d - k + 1, dim=1).values.numpy()
    mask = h >= kth[:, None]
    tied = mask.sum(1) != k
    if tied.any():
        idx = np.argpartition(-h[tied], k - 1, axis=1)[:, :k]
        sub = np.zeros((idx.shape[0], d), bool)
        np.put_along_axis(sub, idx, True, axis=1)
        mask[tied] = sub
    return mask


@register_scorer
class ReAct(SelectableFitSplit, _Shaped):
    """Energy of W min(h, tau) + b, tau = p-th percentile of all ID train activations
    (``fit_split=val``: of ID val, as OpenOOD). Higher = more ID."""

    name = "react"
    reference = (
        "Sun et al., ReAct: Out-of-distribution Detection With Rectified Activations, NeurIPS 2021"
    )
    params = {
        "p": _percent(90.0, "percentile of ID train activations used as the clip threshold"),
        "fit_split": FIT_SPLIT_PARAM,
    }
    search_space = {"p": (85.0, 90.0, 95.0, 99.0)}

    def fit(self, data) -> ReAct:
        self.threshold_ = float(np.percentile(head_features(data), self.p))
        self.fitted_ = True
        return self

    def shape(self, h):
        return np.minimum(h, self.threshold_)


@register_scorer
class VRA(SelectableFitSplit, _Shaped):
    """Energy of W clip(h, tau_lo, tau_hi) + b, thresholds = ID train percentiles ``low``/``high``
    (``fit_split=val``: ID val, as OpenOOD).

    ``per_dim``: one threshold pair per feature dimension (pytorch-ood's VRA) instead of one
    over all activations. This is the clipping form of VRA in the references table (the
    paper's full operator also zeroes activations below tau_lo and adds an offset). Higher = more ID.
    """

    name = "vra"
    reference = "Xu et al., VRA: Variational Rectified Activation for Out-of-distribution Detection, NeurIPS 2023"
    params = {
        "low": _percent(10.0, "lower percentile"),
        "high": _percent(90.0, "upper percentile"),
        "per_dim": Param(False, bool, doc="per-dimension thresholds"),
        "fit_split": FIT_SPLIT_PARAM,
    }
    search_space = {"low": (1.0, 5.0, 10.0, 15.0), "high": (85.0, 90.0, 95.0, 99.0)}

    def fit(self, data) -> VRA:
        if self.low > self.high:
            raise OodbenchError(f"vra: 'low' ({self.low}) must not exceed 'high' ({self.high}).")
        h = head_features(data)
        axis = 0 if self.per_dim else None
        self.low_, self.high_ = np.percentile(h, [self.low, self.high], axis=axis)
        self.fitted_ = True
        return self

    def shape(self, h):
        return np.clip(h, self.low_, self.high_)


class _ASH(_Shaped):
    params = {"p": _percent(90.0, "percent of each sample's activations pruned")}
    search_space = {"p": (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)}
    reference = "Djurisic et al., Extremely Simple Activation Shaping for Out-of-distribution Detection, ICLR 2023"


@register_scorer
class ASHP(_ASH):
    """ASH-P: keep the top (100 - p)% of each sample's activations, zero the rest; energy. Higher = more ID."""

    name = "ash_p"

    def shape(self, h):
        return np.where(_top_mask(h, _kept(h.shape[1], self.p)), h, 0.0)


@register_scorer
class ASHB(_ASH):
    """ASH-B: the kept top (100 - p)% activations all become sum(h) / k, the rest 0; energy. Higher = more ID."""

    name = "ash_b"

    def shape(self, h):
        k = _kept(h.shape[1], self.p)
        return np.where(_top_mask(h, k), h.sum(1, keepdims=True) / k, 0.0)


@register_scorer
class ASHS(_ASH):
    """ASH-S: prune as ASH-P, then scale by exp(sum(h) / sum(kept h)); energy. Higher = more ID."""

    name = "ash_s"

    def shape(self, h):
        pruned = np.where(_top_mask(h, _kept(h.shape[1], self.p)), h, 0.0)
        return pruned * np.exp(h.sum(1, keepdims=True) / pruned.sum(1, keepdims=True))


@register_scorer
class SCALE(_Shaped):
    """SCALE: energy of W (h * exp(sum(h) / sum of the top (100 - p)% of h)) + b, no pruning.

    Higher = more ID.
    """

    name = "scale"
    reference = "Xu et al., Scaling for Training Time and Post-hoc Out-of-distribution Detection Enhancement, ICLR 2024"
    params = {
        "p": _percent(85.0, "percentile above which activations form the scale's denominator")
    }
    search_space = {"p": (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)}

    def shape(self, h):
        top = np.where(_top_mask(h, _kept(h.shape[1], self.p)), h, 0.0).sum(1, keepdims=True)
        return h * np.exp(h.sum(1, keepdims=True) / top)


@register_scorer
class DICE(_Shaped):
    """DICE: energy with W masked to the weights whose contribution W_cd * mean_train(h)_d is
    above the p-th percentile of all contributions. Higher = more ID."""

    name = "dice"
    fit_split = "train"
    reference = (
        "Sun & Li, DICE: Leveraging Sparsification for Out-of-Distribution Detection, ECCV 2022"
    )
    params = {"p": _percent(90.0, "sparsity: percent of weight contributions masked")}
    search_space = {"p": (10.0, 30.0, 50.0, 70.0, 90.0)}

    def fit(self, data) -> DICE:
        h = head_features(data)
        w, _ = head_arrays(data)
        contrib = h.mean(0, dtype=np.float64)[None, :] * w
        self.mask_ = contrib > np.percentile(contrib, self.p)
        self.fitted_ = True
        return self

    def weight(self, w):
        if w.shape != self.mask_.shape:
            raise OodbenchError(
                "dice was fitted with a different head: refit it on this head's train split."
            )
        return w * self.mask_

    def shape(self, h):
        return h


@register_scorer
class GradNorm(Scorer):
    """GradNorm in closed form: ||h||_1 * sum_c |C p_c - 1| / T, p = softmax(z / T).

    This is the L1 norm of the gradient w.r.t. the head weight W of the original code's loss
    sum_c -log softmax(z / T)_c (targets all ones, OpenOOD's convention too): dL/dW =
    outer((C p - 1) / T, h). pytorch-ood averages over classes instead: its norm is ours / C.
    Higher = more ID.
    """

    name = "gradnorm"
    needs = ("head", "features")
    relu_assumption = True
    reference = "Huang et al., On the Importance of Gradients for Detecting Distributional Shifts in the Wild, NeurIPS 2021"
    params = {"temperature": Param(1.0, float, low=1e-6, doc="softmax temperature T")}
    search_space = {"temperature": (0.5, 1.0, 2.0)}

    def score(self, data) -> np.ndarray:
        import torch
        h = head_features(data)
        w, b = head_arrays(data)
        n_cls, t = w.shape[0], self.temperature

        def gradnorm(r):
            x = np.asarray(h[r], np.float64)
            p = torch.softmax(torch.from_numpy(logits64(data, r) / t), dim=1).numpy()
            return np.abs(x).sum(1) * np.abs(n_cls * p - 1.0).sum(1) / t

        return rowwise(gradnorm, h.shape[0], chunk_rows(2 * w.shape[0] + h.shape[1]))
