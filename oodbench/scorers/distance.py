"""Feature-space scorers fitted on the ID train split: KNN, Mahalanobis, ViM."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import logsumexp

from ..errors import OodbenchError
from .base import Param, Scorer, feature_param
from .inputs import l2_normalize
from .registry import register_scorer


def _class_means(h: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means (C, D) of labelled rows; returns (means, class ids present)."""
    known = labels >= 0
    if not known.any():
        raise OodbenchError(f"{name} needs labelled ID train samples; the train split has none.")
    classes, inv, counts = np.unique(labels[known], return_inverse=True, return_counts=True)
    if counts.min() < 2:
        c = classes[counts.argmin()]
        raise OodbenchError(
            f"{name}: class {c} has {counts.min()} train sample(s); a covariance needs ≥ 2 per class. "
            "Use a larger train subset."
        )
    sums = np.zeros((classes.size, h.shape[1]), np.float64)
    np.add.at(sums, inv, h[known])
    return sums / counts[:, None], classes


def knn_kth_distance(queries: np.ndarray, bank: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Euclidean distance from each query row to its k-th nearest bank row (exact, chunked).

    Both inputs are expected L2-normalised, so d^2 = 2 - 2 <q, b>.
    """
    bank_t = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    out = np.empty(queries.shape[0], np.float64)
    for s in range(0, queries.shape[0], chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[s : s + chunk], dtype=np.float32))
        sim = q @ bank_t.T
        kth = torch.topk(sim, k, dim=1, largest=True, sorted=True).values[:, -1]
        out[s : s + chunk] = torch.sqrt(torch.clamp(2.0 - 2.0 * kth.double(), min=0.0)).numpy()
    return out


@register_scorer
class KNN(Scorer):
    """Negative distance to the k-th nearest ID train feature, all L2-normalised."""

    name = "knn"
    needs = ("features",)
    fit_split = "train"
    reference = "Sun et al., Out-of-Distribution Detection with Deep Nearest Neighbors, ICML 2022"
    params = {"k": Param(50, int, low=1, doc="neighbour rank"), "feature": feature_param()}
    search_space = {"k": (1, 10, 50, 100, 200)}

    def fit(self, data) -> KNN:
        bank = l2_normalize(data.features(self.feature))
        if bank.shape[0] < self.k:
            raise OodbenchError(
                f"The 'k' parameter of knn is {self.k} but the train bank has only {bank.shape[0]} samples: lower k."
            )
        self.bank_ = bank
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        return -knn_kth_distance(l2_normalize(data.features(self.feature)), self.bank_, self.k)


@register_scorer
class Mahalanobis(Scorer):
    """max_c -(h - mu_c)^T Sigma^-1 (h - mu_c), one shared covariance of class-centred features."""

    name = "mahalanobis"
    needs = ("features", "labels")
    fit_split = "train"
    reference = "Lee et al., A Simple Unified Framework for Detecting OoD Samples and Adversarial Attacks, NeurIPS 2018"
    params = {"feature": feature_param()}

    def fit(self, data) -> Mahalanobis:
        h = data.features(self.feature).astype(np.float64)
        means, _ = _class_means(h, data.labels, self.name)
        labels = data.labels
        known = labels >= 0
        _, inv = np.unique(labels[known], return_inverse=True)
        centred = h[known] - means[inv]
        cov = centred.T @ centred / centred.shape[0]
        self.precision_ = np.linalg.pinv(cov, hermitian=True)
        self.means_ = means
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        h = data.features(self.feature).astype(np.float64)
        # (h-mu)^T P (h-mu) = h^T P h - 2 h^T P mu + mu^T P mu, for all classes at once
        hp = h @ self.precision_
        quad_h = np.einsum("nd,nd->n", hp, h)
        cross = hp @ self.means_.T
        quad_mu = np.einsum("cd,cd->c", self.means_ @ self.precision_, self.means_)
        dist = quad_h[:, None] - 2.0 * cross + quad_mu[None, :]
        return -dist.min(1)


@register_scorer
class ViM(Scorer):
    """Virtual-logit matching: logsumexp(z) - alpha * ||(h - u) P_perp||.

    u = -pinv(W) b, P_perp spans the covariance eigenvectors beyond the top ``dim``, and
    alpha = mean max train logit / mean train residual norm.
    """

    name = "vim"
    needs = ("head", "features")
    fit_split = "train"
    reference = "Wang et al., ViM: Out-Of-Distribution with Virtual-logit Matching, CVPR 2022"
    params = {"dim": Param(256, int, low=1, optional=True, doc="principal subspace dimension (None: auto)")}
    search_space = {"dim": (16, 32, 64, 128, 256, 512)}

    def _dim(self, d: int) -> int:
        if self.dim is None:
            return 1000 if d >= 2048 else (512 if d >= 768 else d // 2)
        return self.dim

    def fit(self, data) -> ViM:
        head = data.require_head()
        h = data.head_features().astype(np.float64)
        dim = self._dim(h.shape[1])
        if dim >= h.shape[1]:
            raise OodbenchError(
                f"The 'dim' parameter of vim is {dim} but the feature has only {h.shape[1]} dimensions: "
                f"use --param vim.dim=N with N < {h.shape[1]}."
            )
        self.u_ = -np.linalg.pinv(head.weight.astype(np.float64)) @ head.bias.astype(np.float64)
        x = h - self.u_
        cov = x.T @ x / x.shape[0]
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]
        self.ns_ = np.ascontiguousarray(eigvec[:, order[dim:]])
        residual = np.linalg.norm(x @ self.ns_, axis=1)
        max_logit = head.logits(h).max(1)
        self.alpha_ = float(max_logit.mean() / max(residual.mean(), 1e-12))
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        h = data.head_features().astype(np.float64)
        energy = logsumexp(data.require_head().logits(h), axis=1)
        residual = np.linalg.norm((h - self.u_) @ self.ns_, axis=1)
        return energy - self.alpha_ * residual
