"""Small numeric helpers shared by the scorer families: finiteness checks, chunking, energy,
class means and covariances computed without materialising big intermediate matrices."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ..errors import OodbenchError

if TYPE_CHECKING:  # annotations only; the compute paths import torch on first use
    import torch

CHUNK_BYTES = 256 * 2**20
"""Budget for one chunk's largest temporary (e.g. a queries x bank similarity block)."""


LOGITS_KEEP_BYTES = 1 << 30
"""A split's logits are kept (``data.logits``) when they fit in this; bigger ones (a 1.28M-row
train split: 5 GB) are recomputed by row blocks where needed."""


def check_finite(x: np.ndarray, ids=None, what: str = "features") -> np.ndarray:
    """Return ``x`` unchanged, or raise naming the samples (rows) that hold NaN or inf.

    ``ids``: per-row sample ids (an array, or a callable returning one) used in the message.
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        return x
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x[:, None]
    bad = ~np.isfinite(flat).all(1)
    if bad.any():
        rows = np.flatnonzero(bad)
        ids = ids() if callable(ids) else ids
        names = (
            [str(ids[i]) for i in rows[:5]] if ids is not None else [f"row {i}" for i in rows[:5]]
        )
        more = f" (and {rows.size - 5} more)" if rows.size > 5 else ""
        raise OodbenchError(
            f"The {what} of {rows.size} sample(s) contain NaN or inf: {', '.join(names)}{more}. "
            "Re-extract them (fp16 overflow?) or drop them from the split."
        )
    return x


def features(data, space: str) -> np.ndarray:
    """(N, D) float32 features of a named space, checked finite (once per split and space)."""
    x = data.features(space)
    return memo(data, ("finite", space, id(x)), lambda: check_finite(x, lambda: data.ids, f"{space!r} features"))


def head_features(data) -> np.ndarray:
    """(N, D) features the head reads, checked finite."""
    return features(data, data.require_head().input)


def logits(data) -> np.ndarray:
    """(N, C) float32 logits of the head (cached by ``data``), from finite features."""
    head_features(data)
    return data.logits


def logit_blocks(data, budget: int = CHUNK_BYTES // 4, keep: bool = True) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, float32 logits of those rows), the same values as ``logits(data)[rows]``.

    Uses the cached logits when ``data`` already holds them; otherwise computes them by row
    blocks so that a big split (a 1.28M-row train split has 5 GB of logits) is never
    materialised whole. ``keep=False``: never compute and keep them whole for later scorers
    (a caller that needs one pass, e.g. a row reduction); the blocks then go through one
    reused buffer, valid until the next block is asked for.
    """
    cached = "logits" in getattr(data, "__dict__", {})
    if not cached and keep and hasattr(type(data), "logits"):
        # small enough: compute them once and keep them on ``data`` for every later scorer
        n_rows = len(head_features(data))
        cached = n_rows * data.require_head().num_classes * 4 <= LOGITS_KEEP_BYTES
    if cached:
        z = data.logits
        for rows in chunks(z.shape[0], chunk_rows(z.shape[1], 4, budget)):
            yield rows, z[rows]
        return
    h = head_features(data)
    head = data.require_head()
    step = chunk_rows(head.num_classes, 4, budget)
    reuse = not keep and h.dtype == np.float32
    buf = np.empty((min(step, h.shape[0]), head.num_classes), np.float32) if reuse else None
    for rows in chunks(h.shape[0], step):
        if buf is not None:
            yield rows, head.logits(h[rows], out=buf[: rows.stop - rows.start])
        else:
            yield rows, head.logits(h[rows]).astype(np.float32, copy=False)


def logits64(data, rows: slice) -> np.ndarray:
    """float64 logits h W^T + b of ``rows`` of the head features.

    The whole split's are computed once and kept on ``data`` (shared by fDBD, NCI, GradNorm,
    ViM and NNGuide) when they fit in ``LOGITS_KEEP_BYTES // 2``; else computed per call."""
    import torch
    h = head_features(data)
    w, b = head_arrays(data)
    if h.shape[0] * w.shape[0] * 8 > LOGITS_KEEP_BYTES // 2:
        return np.asarray(h[rows], np.float64) @ w.T + b

    def compute():
        wt, bt = torch.from_numpy(w), torch.from_numpy(b)
        out = torch.empty((h.shape[0], w.shape[0]), dtype=torch.float64)
        for r in chunks(h.shape[0], chunk_rows(w.shape[0] + h.shape[1], budget=CHUNK_BYTES // 4)):
            x = torch.from_numpy(np.ascontiguousarray(h[r], dtype=np.float64))
            torch.addmm(bt, x, wt.T, out=out[r])
        return out.numpy()

    head = data.require_head()
    return memo(data, ("logits64", head.name, head.input, id(head.weight)), compute)[rows]


def predictions(data, keep: bool = True) -> np.ndarray:
    """(N,) argmax of the head's logits, computed by row blocks (see :func:`logit_blocks`;
    ``keep=False`` for a caller that needs no other pass over them)."""
    out = np.empty(len(head_features(data)), np.int64)
    for rows, z in logit_blocks(data, keep=keep):
        out[rows] = z.argmax(1)
    return out


def head_arrays(data) -> tuple[np.ndarray, np.ndarray]:
    """The head's (W (C, D), b (C,)) as float64, checked finite."""
    head = data.require_head()
    w = check_finite(head.weight.astype(np.float64), what="head weights")
    b = check_finite(np.asarray(head.bias, np.float64)[None], what="head bias")[0]
    return w, b


ROW_BLOCK_BYTES = CHUNK_BYTES
"""Default budget of a row block's largest temporary (see ``ELEMENTWISE_BYTES``)."""

ELEMENTWISE_BYTES = 32 * 2**20
"""Budget of row blocks that only run elementwise passes (exp, softmax, logsumexp): blocks
this size stay in cache and reuse allocator memory (~2x faster than 256 MB blocks); code with
a matmul per block keeps the bigger default."""


def chunk_rows(width: int, itemsize: int = 8, budget: int | None = None) -> int:
    """How many query rows fit in ``budget`` bytes (default ``ROW_BLOCK_BYTES``) when each row
    needs ``width`` items."""
    budget = ROW_BLOCK_BYTES if budget is None else budget
    return max(1, int(budget // max(1, width * itemsize)))


def chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def rowwise(fn: Callable[[slice], np.ndarray], n: int, size: int) -> np.ndarray:
    """Concatenate ``fn(rows)`` over row chunks of ``size`` (a float64 vector of length n)."""
    out = np.empty(n, np.float64)
    for rows in chunks(n, size):
        out[rows] = fn(rows)
    return out


def as_float64_tensor(z) -> torch.Tensor:
    """A float64 torch view (float64 numpy input) or copy of ``z``."""
    import torch
    if isinstance(z, torch.Tensor):
        return z.double()
    return torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64))


def energy(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """T * logsumexp(z / T) along the last axis (negative free energy; higher = more ID).

    Max-shifted (torch's vectorised kernel: ~10x scipy's on (n, 1000) logits), returned as
    float64. float32 logits with T = 1 are reduced in float32: logsumexp = max + log(sum of
    exp(z - max)), the max is exact and the sum's relative error (~1e-7 per term, summed in
    vector lanes) becomes an absolute error of ~1e-6 on the energy, 1e-7 of its size for
    CLIP logits; this halves the time of a float64 pass. Anything else runs in float64."""
    import torch
    if temperature == 1.0 and getattr(z, "dtype", None) in (np.float32, torch.float32):
        x = z if isinstance(z, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(z))
        return torch.logsumexp(x, dim=-1).double().numpy()
    x = as_float64_tensor(z)
    if temperature != 1.0:
        x = x / temperature
    return (temperature * torch.logsumexp(x, dim=-1)).numpy()


def max_softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """max_c softmax(z / T)_c along the last axis, float64: exp(max - logsumexp)."""
    import torch
    x = as_float64_tensor(z)
    if temperature != 1.0:
        x = x / temperature
    return torch.exp(x.amax(-1) - torch.logsumexp(x, dim=-1)).numpy()


def log_softmax64(z: np.ndarray, temperature: float = 1.0) -> torch.Tensor:
    """float64 log-softmax of z / T along the last axis, as a torch tensor."""
    import torch
    x = as_float64_tensor(z)
    if temperature != 1.0:
        x = x / temperature
    return torch.log_softmax(x, dim=-1)


def known_labels(labels: np.ndarray, who: str) -> np.ndarray:
    known = np.asarray(labels) >= 0
    if not known.any():
        raise OodbenchError(f"{who} needs labelled ID samples to fit; the fit split has none.")
    return known


def class_means(
    h: np.ndarray, labels: np.ndarray, who: str, min_count: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class means of the rows of ``h`` whose label is ≥ 0 (rows labelled -1 are ignored).

    Accumulated in float64 over row chunks (no copy of ``h``). Returns (means (K, D), classes
    (K,) present, slot (N,) = row's index into ``classes`` or -1). Raises when a class has
    fewer than ``min_count`` rows.
    """
    labels = np.asarray(labels)
    known = known_labels(labels, who)
    classes, counts = np.unique(labels[known], return_counts=True)
    if counts.min() < min_count:
        c = classes[counts.argmin()]
        raise OodbenchError(
            f"{who}: class {c} has {counts.min()} fit sample(s); it needs ≥ {min_count} per class. "
            "Use a larger train subset."
        )
    slot = np.full(labels.shape[0], -1)
    slot[known] = np.searchsorted(classes, labels[known])
    sums = np.zeros((classes.size, h.shape[1]), np.float64)
    for rows in chunks(h.shape[0], chunk_rows(h.shape[1], budget=CHUNK_BYTES // 4)):
        sel = slot[rows] >= 0
        n = int(sel.sum())
        onehot = sp.csr_matrix(
            (np.ones(n), (slot[rows][sel], np.arange(n))), shape=(classes.size, n)
        )
        sums += onehot @ np.asarray(h[rows][sel], np.float64)
    return sums / counts[:, None], classes, slot


GEMM_BLOCK_ROWS = 8192
"""Rows per float32 GEMM block whose result is accumulated in float64 (:func:`scatter`)."""


_TORCH = {np.float32: "float32", np.float64: "float64"}  # names: torch is imported on first use


def _centre_parts(c: np.ndarray | None, dtype: type) -> list[torch.Tensor]:
    """The centre ``c`` (float64) as the tensors to subtract in turn: itself for float64; for
    float32 hi = fl32(c) then lo = fl32(c - hi) (see :func:`centred_blocks`)."""
    import torch
    if c is None:
        return []
    c = np.ascontiguousarray(c, np.float64)
    if dtype == np.float64:
        return [torch.from_numpy(c)]
    hi = c.astype(np.float32)
    return [torch.from_numpy(hi), torch.from_numpy((c - hi).astype(np.float32))]


def centred_blocks(
    h: np.ndarray,
    center: np.ndarray | None = None,
    means: np.ndarray | None = None,
    slot: np.ndarray | None = None,
    block: int = GEMM_BLOCK_ROWS,
    dtype: type = np.float32,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (rows, tensor of those rows of ``h`` centred, in ``dtype``).

    ``center`` (D,) is subtracted from every row; with ``means`` (K, D) and ``slot`` (N,), row i
    is centred on ``means[slot[i]]`` and rows with slot -1 are dropped from the block.

    float64: the rows are widened and the centre subtracted exactly as given. float32: the
    float64 centre c is split as hi + lo (both float32) and x - c computed as (x - hi) - lo:
    each subtraction errs by at most 2^-24 of its result, so the centred value is correct to
    ~2^-23 of itself however large c is (as a float64 subtraction rounded once would be), at
    float32 speed.

    With a centre and without ``slot`` the yielded tensor is a buffer reused by the next step:
    use it before asking for the next block. Without a centre or means it is the rows
    themselves (float32: a view of ``h`` where ``h`` is float32 and contiguous): read only."""
    import torch
    c_parts, m_parts = _centre_parts(center, dtype), _centre_parts(means, dtype)
    # without class means the rows are centred into one reused buffer (no fresh block per step)
    buf = torch.empty((min(block, h.shape[0]), h.shape[1]), dtype=getattr(torch, _TORCH[dtype])) if slot is None and c_parts else None
    for rows in chunks(h.shape[0], block):
        x = torch.from_numpy(np.ascontiguousarray(h[rows], dtype=np.float32))
        if buf is not None:
            out = buf[: x.shape[0]]
            torch.sub(x, c_parts[0], out=out)  # float64: x widened exactly by promotion
            for part in c_parts[1:]:
                out.sub_(part)
            yield rows, out
            continue
        if dtype == np.float64:
            x = x.double()
        for part in c_parts:
            x = x - part
        if slot is not None:
            sel = slot[rows] >= 0
            k = torch.from_numpy(slot[rows][sel])
            x = x[torch.from_numpy(sel)]
            for part in m_parts:
                x = x - part[k]
        yield rows, x


def scatter(
    h: np.ndarray,
    center: np.ndarray | None = None,
    means: np.ndarray | None = None,
    slot: np.ndarray | None = None,
    dtype: type = np.float64,
) -> np.ndarray:
    """Sum of outer products (h_i - c_i)(h_i - c_i)^T, returned in float64 (D, D).

    ``center`` (D,) is subtracted from every row; with ``means`` (K, D) and ``slot`` (N,), row i
    is centred on ``means[slot[i]]`` and rows with slot -1 are skipped.

    ``dtype`` is the precision of the products, by blocks of 8,192 rows summed in float64:

    * float64 (default): for precision matrices (Mahalanobis, RMDS), whose inversion
      multiplies any error by the covariance's condition number;
    * float32: the precision of scikit-learn's / pytorch-ood's float32 covariances (relative
      error ~1e-7 per block, not growing with N; rows centred to float32 precision by
      :func:`centred_blocks`), ~2x faster; enough where only an eigen-subspace is used (ViM,
      Residual: the subspace beyond the top ``dim`` eigenvalues moves by error / eigengap).
    """
    d = h.shape[1]
    out = np.zeros((d, d), np.float64)
    for _, x in centred_blocks(h, center, means, slot, dtype=dtype):
        xn = x.numpy()
        out += xn.T @ xn  # numpy's x^T x: ~1.4x torch's on this (D x 8192 x D) shape
    return out


def lapack_single_thread():
    """Context: single-threaded BLAS under LAPACK calls on small (D, D) matrices (eigh, pinv,
    svd): with torch's OpenMP pool also alive, a multithreaded LAPACK on 2 cores runs ~10x slower."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def pinv_hermitian(a: np.ndarray) -> np.ndarray:
    with lapack_single_thread():
        return np.linalg.pinv(a, hermitian=True)


def memo(data, key: tuple, compute: Callable[[], object]):
    """``compute()``, remembered on ``data`` (an Inputs: one split of one sweep) under ``key``,
    so that scorers fitted on the same split share statistics (class means, scatters)."""
    extra = getattr(data, "extra", None)
    if not isinstance(extra, dict):
        return compute()
    store = extra.setdefault("_memo", {})
    if key not in store:
        store[key] = compute()
    return store[key]


def class_gaussian(data, space: str, who: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(class means (K, D), slot (N,), within-class scatter (D, D), labelled count) of the
    ``space`` features of ``data`` (classes with < 2 rows refused), shared by Mahalanobis and
    RMDS fits on the same split."""

    def compute():
        h = features(data, space)
        means, _, slot = class_means(h, data.labels, who, min_count=2)
        return means, slot, scatter(h, means=means, slot=slot), int((slot >= 0).sum())

    return memo(data, ("class_gaussian", space), compute)


def quad_forms(
    h: np.ndarray, means: np.ndarray, precision: np.ndarray
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, (n, K) squared Mahalanobis distances (h - mu_k)^T P (h - mu_k)) by chunks.

    Closed form h^T P h - 2 h^T P mu + mu^T P mu, never forming (N, K, D); float64 (torch GEMMs).
    """
    import torch
    mp = torch.from_numpy(np.ascontiguousarray(means @ precision, dtype=np.float64))
    quad_mu = torch.einsum("kd,kd->k", mp, torch.from_numpy(np.ascontiguousarray(means, np.float64)))
    prec = torch.from_numpy(np.ascontiguousarray(precision, dtype=np.float64))
    size = chunk_rows(2 * h.shape[1] + 2 * means.shape[0], budget=CHUNK_BYTES // 2)
    for rows in chunks(h.shape[0], size):
        x = torch.from_numpy(np.ascontiguousarray(h[rows], dtype=np.float64))
        xp = x @ prec
        out = torch.addmm(quad_mu[None, :], x, mp.T, alpha=-2.0)
        out += torch.einsum("nd,nd->n", xp, x)[:, None]
        yield rows, out.numpy()


def seeded_subset(n: int, fraction: float, minimum: int, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of round(fraction * n) rows (at least ``minimum``),
    or None for all rows."""
    size = min(n, max(minimum, int(round(fraction * n))))
    if size >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
