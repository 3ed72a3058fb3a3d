"""Feature-space scorers fitted on the ID train split: KNN, NNGuide, Mahalanobis, RMDS, ViM,
Residual. ``h``: (N, D) features; all scores are higher = more in-distribution."""

from __future__ import annotations

import numpy as np

from ..console import info, warn
from ..errors import OodbenchError
from .base import Param, Scorer, feature_param
from .common import (
    GEMM_BLOCK_ROWS,
    centred_blocks,
    chunk_rows,
    chunks,
    class_gaussian,
    energy,
    features,
    head_arrays,
    head_features,
    lapack_single_thread,
    logit_blocks,
    logits,
    logits64,
    memo,
    pinv_hermitian,
    quad_forms,
    scatter,
    seeded_subset,
)
from .inputs import l2_normalize
from .registry import register_scorer
from .shaping import FIT_SPLIT_PARAM, SelectableFitSplit
from .topk import InnerProductIndex


def topk_similarities(
    queries: np.ndarray, bank: np.ndarray, k: int, index: InnerProductIndex | None = None
) -> np.ndarray:
    """(N, k) largest inner products of each query row with the bank rows, descending.

    Exact: large banks use a bfloat16 candidate search and an exact float32 re-rank that
    provably keeps every true top-k neighbour (:mod:`oodbench.scorers.topk`); small ones a
    float32 matmul. Chunked so that one (chunk, bank) block stays bounded. ``index``: a
    prebuilt :class:`~oodbench.scorers.topk.InnerProductIndex` of ``bank`` (reused across calls).
    """
    index = index if index is not None else InnerProductIndex(bank)
    return index.search(queries, k)


def knn_kth_distance(
    queries: np.ndarray, bank: np.ndarray, k: int, index: InnerProductIndex | None = None
) -> np.ndarray:
    """Euclidean distance from each query row to its k-th nearest bank row (exact, chunked).

    Both inputs are expected L2-normalised, so d^2 = 2 - 2 <q, b>.
    """
    kth = topk_similarities(queries, bank, k, index)[:, -1]
    return np.sqrt(np.clip(2.0 - 2.0 * kth, 0.0, None))


def _bank_params(default_fraction: float) -> dict[str, Param]:
    return {
        "bank_fraction": Param(
            default_fraction,
            float,
            low=1e-6,
            high=1.0,
            doc="fraction of the train split kept as bank",
        ),
        "seed": Param(0, int, low=0, doc="seed of the bank subset"),
    }


def _index_of(scorer) -> InnerProductIndex:
    """The search index of ``scorer.bank_``, built once per fitted bank and reused across splits."""
    cached = scorer.__dict__.get("_index")
    if cached is None or cached[0] is not scorer.bank_:
        cached = (scorer.bank_, InnerProductIndex(scorer.bank_))
        scorer.__dict__["_index"] = cached
    return cached[1]


@register_scorer
class KNN(Scorer):
    """Negative distance to the k-th nearest ID train feature, all L2-normalised: -||z - z_(k)||.

    ``bank_fraction`` < 1 keeps a seeded random subset of the train split as the bank (the
    paper's ImageNet setting: k=1000 on a 1% bank). Higher = more ID.
    """

    name = "knn"
    needs = ("features",)
    fit_split = "train"
    reference = "Sun et al., Out-of-Distribution Detection with Deep Nearest Neighbors, ICML 2022"
    params = {
        "k": Param(50, int, low=1, doc="neighbour rank"),
        "feature": feature_param(),
        **_bank_params(1.0),
    }
    search_space = {"k": (1, 10, 50, 100, 200, 500, 1000)}

    def fit(self, data) -> KNN:
        h = features(data, self.feature)
        keep = seeded_subset(h.shape[0], self.bank_fraction, self.k, self.seed)
        if keep is None and self.feature == "embeds":
            bank = h  # already L2-normalised rows (no second copy of a big train split)
        else:
            bank = l2_normalize(h if keep is None else h[keep])
        if bank.shape[0] < self.k:
            raise OodbenchError(
                f"The 'k' parameter of knn is {self.k} but the train bank has only {bank.shape[0]} samples: lower k."
            )
        self.bank_ = bank
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        return -knn_kth_distance(
            l2_normalize(features(data, self.feature)), self.bank_, self.k, _index_of(self)
        )


@register_scorer
class NNGuide(Scorer):
    """Nearest-neighbour guidance: E(x) * mean of the top-k <h^(x), E(x_j) h^(x_j)> over a bank.

    E = logsumexp of the head's logits, h^ = L2-normalised head features; the bank is a seeded
    ``bank_fraction`` subset of the train split (at least k samples), or ``bank_size`` rows when
    given. A bank of only k rows makes the top-k the whole bank (the score collapses to
    E(x) <h^(x), mean bank>): warned; ``bank_size`` < k is refused. Higher = more ID.
    """

    name = "nnguide"
    needs = ("head", "features")
    fit_split = "train"
    reference = (
        "Park et al., Nearest Neighbor Guidance for Out-of-Distribution Detection, ICCV 2023"
    )
    params = {
        "k": Param(100, int, low=1, doc="number of neighbours"),
        **_bank_params(0.01),
        "bank_size": Param(
            None, int, low=1, optional=True, doc="bank rows (a seeded subset; overrides bank_fraction)"
        ),
    }
    search_space = {"k": (1, 10, 50, 100, 200), "bank_fraction": (0.01, 0.05, 0.1, 1.0)}

    def fit(self, data) -> NNGuide:
        h = head_features(data)
        if h.shape[0] < self.k:
            raise OodbenchError(
                f"The 'k' parameter of nnguide is {self.k} but the train split has only {h.shape[0]} samples: lower k."
            )
        if self.bank_size is not None and self.bank_size < self.k:
            raise OodbenchError(
                f"nnguide: bank_size={self.bank_size} is below k={self.k}: give bank_size > k (or lower k)."
            )
        fraction = self.bank_fraction if self.bank_size is None else min(1.0, self.bank_size / h.shape[0])
        keep = seeded_subset(h.shape[0], fraction, self.k, self.seed)
        size = h.shape[0] if keep is None else keep.size
        if size <= self.k:
            warn(
                f"nnguide: the bank has {size} rows for k={self.k}: the top-k is the whole bank and the score "
                f"degenerates to E(x) times the similarity to the bank mean; raise bank_fraction/bank_size or lower k."
            )
        h = h if keep is None else h[keep]
        w, b = head_arrays(data)
        e = energy(h.astype(np.float64) @ w.T + b)
        self.bank_ = (l2_normalize(h.astype(np.float64)) * e[:, None]).astype(np.float32)
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        h = head_features(data).astype(np.float64)
        w, b = head_arrays(data)
        e = np.concatenate(
            [energy(logits64(data, r)) for r in chunks(h.shape[0], chunk_rows(w.shape[0]))]
        )
        guidance = topk_similarities(l2_normalize(h), self.bank_, self.k, _index_of(self)).mean(1)
        return e * guidance


def _shared_precision(data, space: str, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K, D) and the pseudo-inverse of the shared class-centred covariance."""
    means, _, within, n_known = class_gaussian(data, space, who)
    return means, pinv_hermitian(within / n_known)


@register_scorer
class Mahalanobis(Scorer):
    """max_c -(h - mu_c)^T Sigma^-1 (h - mu_c), one shared covariance of class-centred train features.

    No input noise (the original's input perturbation needs a forward pass); pseudo-inverse
    precision. Higher = more ID.
    """

    name = "mahalanobis"
    needs = ("features", "labels")
    fit_split = "train"
    reference = "Lee et al., A Simple Unified Framework for Detecting OoD Samples and Adversarial Attacks, NeurIPS 2018"
    params = {"feature": feature_param()}

    def fit(self, data) -> Mahalanobis:
        self.means_, self.precision_ = _shared_precision(data, self.feature, self.name)
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        h = features(data, self.feature)
        out = np.empty(h.shape[0], np.float64)
        for rows, dist in quad_forms(h, self.means_, self.precision_):
            out[rows] = -dist.min(1)
        return out


@register_scorer
class RMDS(Scorer):
    """Relative Mahalanobis: max_c [-MD_c(h) + MD_0(h)].

    MD_c uses the class means and the shared class-centred covariance (as Mahalanobis),
    MD_0 one background Gaussian (mean and covariance of all train features). Higher = more ID.
    """

    name = "rmds"
    needs = ("features", "labels")
    fit_split = "train"
    reference = "Ren et al., A Simple Fix to Mahalanobis Distance for Improving Near-OOD Detection, arXiv 2021"
    params = {"feature": feature_param()}

    def fit(self, data) -> RMDS:
        means, slot, within, n_known = class_gaussian(data, self.feature, self.name)
        self.means_, self.precision_ = means, pinv_hermitian(within / n_known)
        # the background Gaussian of all labelled rows: its scatter is the within-class scatter
        # plus the between-class scatter (one pass over the train split, not two)
        counts = np.bincount(slot[slot >= 0], minlength=means.shape[0]).astype(np.float64)
        self.mean0_ = counts @ means / n_known
        dev = means - self.mean0_
        cov0 = (within + (dev.T * counts) @ dev) / n_known
        self.precision0_ = pinv_hermitian(cov0)
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        h = features(data, self.feature)
        out = np.empty(h.shape[0], np.float64)
        for rows, dist in quad_forms(h, self.means_, self.precision_):
            out[rows] = -dist.min(1)
        for rows, dist0 in quad_forms(h, self.mean0_[None], self.precision0_):
            out[rows] += dist0[:, 0]
        return out


def fold_ok(u: np.ndarray, mean_sq: float) -> bool:
    """Whether the origin ``u`` may be folded into float32 products of the raw rows h instead
    of centring every row first: ||u|| at most half the RMS of ||h - u|| (``mean_sq`` is the
    mean of ||h - u||^2).

    A float32 product of h errs by ~eps * ||h|| * ||other||, of h - u by ~eps * ||h - u|| *
    ||other||; with ||u|| <= RMS / 2 that is at most 1.5x (2.25x for squares) for a row of
    typical norm, the same order as the centred path, and it saves a pass over the rows."""
    return bool(4.0 * float(np.dot(u, u)) <= mean_sq)


def centred_scatter(h: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sum of (h_i - u)(h_i - u)^T in float64, from float32 products by row blocks.

    The origin is folded in: H^T H - u s^T - s u^T + N u u^T, with H^T H by blocks (numpy's
    symmetric product) and the column sums s by a float32 GEMV per block, both accumulated in
    float64 (no centring pass over the rows). Where :func:`fold_ok` says the fold would lose
    float32 precision (||u|| large against the spread), the rows are centred first
    (:func:`scatter`): decided on the first block's rows, and checked again on all rows at the
    end (a second pass only when the first block misjudged the split). For ViM / Residual,
    whose eigen-subspaces only need float32 precision."""
    n, d = h.shape
    u = np.asarray(u, np.float64)
    hh, s = np.zeros((d, d), np.float64), np.zeros(d, np.float64)
    ones = np.ones(min(GEMM_BLOCK_ROWS, n), np.float32)

    def mean_sq(hh, s, m):  # mean ||h - u||^2 from the running sums of m rows
        return (float(np.trace(hh)) - 2.0 * float(u @ s) + m * float(u @ u)) / max(m, 1)

    for rows, rows_t in centred_blocks(h):  # no centre: the float32 rows themselves
        x = rows_t.numpy()
        hh += x.T @ x
        s += ones[: x.shape[0]] @ x
        if rows.start == 0 and not fold_ok(u, mean_sq(hh, s, rows.stop)):
            return scatter(h, center=u, dtype=np.float32)
    if not fold_ok(u, mean_sq(hh, s, n)):
        return scatter(h, center=u, dtype=np.float32)
    us = np.outer(u, s)
    return hh - us - us.T + n * np.outer(u, u)


def centred_eigh(h: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the (uncentred) covariance of h - u (:func:`centred_scatter`;
    its eigenvalues sum to the mean of ||h - u||^2)."""
    cov = centred_scatter(h, u) / h.shape[0]  # only eigen-subspaces are used
    with lapack_single_thread():
        return np.linalg.eigh(cov)


def residual_space(h: np.ndarray, u: np.ndarray, dim: int, eig=None) -> np.ndarray:
    """(D, D - dim) eigenvectors of the (uncentred) covariance of h - u beyond the top ``dim``.

    ``eig``: its (eigenvalues, eigenvectors) if already computed (see :func:`centred_eigh`)."""
    eigval, eigvec = eig if eig is not None else centred_eigh(h, u)
    order = np.argsort(eigval)[::-1]
    return np.ascontiguousarray(eigvec[:, order[dim:]])


def _head_eigh(data, h: np.ndarray, u: np.ndarray):
    """:func:`centred_eigh` of the head features, shared by ViM and Residual on one split."""
    key = ("centred_eigh", data.require_head().input, u.tobytes())
    return memo(data, key, lambda: centred_eigh(h, u))


def residual_norm(h: np.ndarray, u: np.ndarray, ns: np.ndarray, fold: bool = False) -> np.ndarray:
    """||(h - u) P_perp|| per row, ``ns`` (D, R) an orthonormal basis of the residual space.

    The projection is a float32 GEMM (error ~1e-7 of ||h - u|| centred, of ||h|| folded).
    ``fold`` (only where :func:`fold_ok` holds, so ||h|| <= 1.5 ||h - u|| for a typical row):
    (h - u) ns computed as h ns - (u ns), u ns in float64, with no centring pass; otherwise the
    rows are centred to float32 precision first (:func:`centred_blocks`). The norm is taken
    from the projection onto ``ns`` itself, never as ||v||^2 - ||v P||^2 with the principal
    space: that difference cancels when the residual is a small part of the feature, and in
    float32 it would."""
    import torch
    basis = torch.from_numpy(np.ascontiguousarray(ns, dtype=np.float32))
    out = np.empty(h.shape[0], np.float64)
    proj = torch.empty((min(GEMM_BLOCK_ROWS, h.shape[0]), basis.shape[1]), dtype=torch.float32)
    u = np.asarray(u, np.float64)
    shift = torch.from_numpy((u @ np.asarray(ns, np.float64)).astype(np.float32)) if fold else None
    for rows, v in centred_blocks(h, center=None if fold else u):
        p = torch.mm(v, basis, out=proj[: v.shape[0]])
        if shift is not None:
            p.sub_(shift)
        out[rows] = torch.linalg.vector_norm(p, dim=1).double().numpy()
    return out


def _origin(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch
    w, b = head_arrays(data)
    if b.any():
        wt, bt = torch.from_numpy(w), torch.from_numpy(b)
        # -pinv(W) b is the minimum-norm least-squares solution of W u = -b. Where W has full
        # rank (to a strict 1e-10 condition cutoff) that solution is unique, and a QR least-squares
        # solve (LAPACK gelsy) gives it ~4x faster than the SVD inside pinv (1000 x 768: 0.07 s
        # vs 0.27 s, equal to 1e-14). Otherwise: pinv with numpy's cutoff (rtol 1e-15).
        sol = torch.linalg.lstsq(wt, bt[:, None], rcond=1e-10, driver="gelsy")
        if int(sol.rank) == min(w.shape):
            u = -sol.solution[:, 0].numpy()
        else:
            u = -(torch.linalg.pinv(wt, rtol=1e-15) @ bt).numpy()
    else:
        u = np.zeros(w.shape[1])  # zero-shot heads have b = 0
    return w, b, u


def _fit_residual_space(scorer, data, h: np.ndarray, dim: int) -> None:
    """ViM's and Residual's shared fit: origin ``u_``, residual basis ``ns_`` beyond the top
    ``dim`` eigenvectors, and ``fold_`` (whether :func:`residual_norm` may fold u in)."""
    _, _, scorer.u_ = _origin(data)
    eig = _head_eigh(data, h, scorer.u_)
    scorer.ns_ = residual_space(h, scorer.u_, dim, eig)
    scorer.fold_ = fold_ok(scorer.u_, float(eig[0].sum()))  # eigenvalues sum to mean ||h - u||^2


def _residual(scorer, h: np.ndarray) -> np.ndarray:
    return residual_norm(h, scorer.u_, scorer.ns_, fold=scorer.fold_)


@register_scorer
class ViM(Scorer):
    """Virtual-logit matching: logsumexp(z) - alpha * ||(h - u) P_perp||. Higher = more ID.

    u = -pinv(W) b, P_perp spans the covariance eigenvectors beyond the top ``dim``, and
    alpha = mean max train logit / mean train residual norm.
    """

    name = "vim"
    needs = ("head", "features")
    fit_split = "train"
    reference = "Wang et al., ViM: Out-Of-Distribution with Virtual-logit Matching, CVPR 2022"
    params = {
        "dim": Param(
            256, int, low=1, optional=True, doc="principal subspace dimension (None: auto)"
        )
    }
    search_space = {"dim": (16, 32, 64, 128, 256, 512)}

    def _dim(self, d: int) -> int:
        if self.dim is None:
            return 1000 if d >= 1500 else (512 if d >= 768 else d // 2)
        return self.dim

    def fit(self, data) -> ViM:
        h = head_features(data)
        dim = self._dim(h.shape[1])
        if dim >= h.shape[1]:
            raise OodbenchError(
                f"The 'dim' parameter of vim is {dim} but the feature has only {h.shape[1]} dimensions: "
                f"use --param vim.dim=N with N < {h.shape[1]}."
            )
        _fit_residual_space(self, data, h, dim)
        residual = _residual(self, h)
        # the head's logits (float32, as every logit score reads them), by row blocks; kept
        # logits are reused, but ViM alone needs one pass: none are kept for it (in `-m all`
        # OpenMax, which keeps them, fits before ViM)
        max_logit = np.empty(h.shape[0], np.float64)
        for r, z in logit_blocks(data, keep=False):
            max_logit[r] = z.max(1)
        self.alpha_ = float(max_logit.mean() / max(residual.mean(), 1e-12))
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        h = head_features(data)
        z = logits(data)  # the head's logits: the energy term is the Energy score itself
        e = np.concatenate(
            [energy(z[r]) for r in chunks(z.shape[0], chunk_rows(z.shape[1]))]
        )
        return e - self.alpha_ * _residual(self, h)


@register_scorer
class Residual(SelectableFitSplit):
    """Negative residual norm: -||(h - u) P_perp||, u = -pinv(W) b, P_perp beyond the top ``dim``.

    When ``dim`` ≥ D the principal dimension is capped at D // 2 (``dim_`` records it). The
    subspace is fitted on ID train (``fit_split=val``: ID val, as OpenOOD). Higher = more ID.
    """

    name = "residual"
    needs = ("head", "features")
    reference = "Wang et al., ViM: Out-Of-Distribution with Virtual-logit Matching, CVPR 2022 (Residual baseline)"
    params = {
        "dim": Param(
            512, int, low=1, doc="principal subspace dimension (capped at D // 2 when ≥ D)"
        ),
        "fit_split": FIT_SPLIT_PARAM,
    }
    search_space = {"dim": (16, 32, 64, 128, 256, 512)}

    def fit(self, data) -> Residual:
        h = head_features(data)
        d = h.shape[1]
        self.dim_ = self.dim if self.dim < d else d // 2
        if self.dim_ != self.dim:
            info(f"residual: dim={self.dim} ≥ feature dimension {d}, using dim={self.dim_}")
        _fit_residual_space(self, data, h, self.dim_)
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        return -_residual(self, head_features(data))
