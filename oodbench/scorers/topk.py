"""Exact top-k inner-product search on the CPU: a bfloat16 candidate search, then an exact
float32 re-rank of the candidates, with a proof that no true top-k neighbour is missed.

Notation: q a query row, b a bank row (float32), q^ = bf16(q), b^ = bf16(b), r = the float32
inner product <q, b> as the re-rank computes it, s~ = the bf16 matmul's output for (q, b).

**Error bound.** |s~ - r| <= E(q), with (every norm an upper bound, see :func:`_norm_upper`)

    E(q) = ||q^ - q|| max_b ||b^|| + ||q|| max_b ||b^ - b||       (rounding the inputs; Cauchy-Schwarz)
         + gamma_D ||q^|| max_b ||b^||                            (float32 accumulation of exact products)
         + gamma_D ||q|| max_b ||b||                              (the float32 re-rank itself)
         + h(q)                                                   (rounding the output to bf16)

where gamma_D = D u / (1 - D u), u = 2^-24, and h(q) bounds half a bf16 ulp of every output
that can matter (from the row's largest output and the threshold below). The bound only
assumes that the matmul accumulates in float32 (true for oneDNN/AMX, AVX512-BF16 and
PyTorch's fallback kernels); :class:`InnerProductIndex` checks that assumption once on the
running machine and falls back to the exact float32 search if it fails.

**Why the k-th value is exact.** Let L be any value such that at least k bank rows have
s~ >= L (we take the k-th largest of a set of per-group maxima of s~, which is <= the k-th
largest s~). Those k rows have r >= s~ - E >= L - E, so the true k-th largest r, r_k, is
>= L - E. Any row with r >= r_k therefore has s~ >= r - E >= L - 2E. So the candidate set
{b : s~ >= L - 2E} contains every row whose r is >= r_k (ties included); re-ranking the
candidates with the exact float32 product returns exactly the top-k values (and the k-th)
of the exhaustive float32 search.

The bf16 pass costs ~1/4 of a float32 matmul on AMX hardware; the per-element work after it
is one vectorised max over groups of columns (the candidate groups are then expanded), so
the search runs close to the bf16 matmul's speed there. Without AMX (AMD EPYC, AVX512-BF16)
that work costs more than the matmul saves: ``method="auto"`` then searches in float32
(:func:`bf16_pays`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only; the compute paths import torch on first use
    import torch

U32 = 2.0**-24
BF16_PRECISION_BITS = 8
S_BUDGET = 256 * 2**20  # bytes of one (query chunk x bank) bf16 similarity block
RERANK_BUDGET = 64 * 2**20  # bytes of the gathered bank rows of one re-rank step
EXACT_BELOW = 2048  # banks smaller than this are searched exactly in float32 directly


def _gamma(d: int) -> float:
    return d * U32 / (1.0 - d * U32)


def _norm_upper(x: torch.Tensor) -> torch.Tensor:
    """float64 upper bounds on the L2 norms of the rows of a float32 tensor, computed in
    float32 (~4x faster than widening to float64). Without underflow, the float32 sum of D
    squares errs by at most gamma_{D+1} of the true sum in any summation order and the square
    root by one more rounding, so the float32 norm times (1 + gamma_{D+2}) bounds the true one.
    Squares and partial sums below float32's smallest normal (2^-126) may be lost or rounded:
    at most 2^-126 each, so 2 D 2^-126 is added to the squared bound. A norm that overflows
    float32 becomes inf: the bound then admits every candidate, and the search falls back to
    the exhaustive one for that row."""
    import torch
    d = x.shape[1]
    n = torch.linalg.vector_norm(x, dim=1).double() * (1.0 + _gamma(d + 2))
    return torch.sqrt(n * n + 2.0 * d * 2.0**-126)


def _row_norms(x: torch.Tensor, minus: torch.Tensor | None = None) -> torch.Tensor:
    """Upper bounds on the L2 norms of the rows of a float32/bf16 tensor, or of
    float(x) - ``minus`` (for x = bf16(minus): the bf16 rounding error; the float32 difference
    of a float32 value and its bf16 rounding is exact), in chunks."""
    import torch
    out = torch.empty(x.shape[0], dtype=torch.float64)
    step = max(1, (32 * 2**20) // max(1, 4 * x.shape[1]))
    for s in range(0, x.shape[0], step):
        v = x[s : s + step].float()
        out[s : s + step] = _norm_upper(v if minus is None else v - minus[s : s + step])
    return out


def _halfulp_bound(m: torch.Tensor) -> torch.Tensor:
    """An upper bound on half a bf16 ulp of any float32 value whose bf16 rounding has |.| <= m."""
    import torch
    a = torch.clamp(m.double() * (1.0 + 2.0**-6), min=2.0**-120)
    return torch.exp2(torch.floor(torch.log2(a)) - BF16_PRECISION_BITS)


_BF16_OK: bool | None = None


def bf16_matmul_accumulates_in_fp32() -> bool:
    """Check once that a bf16 matmul keeps float32 accumulation (its output is within the
    bound used above of the exact result), on data that bf16 accumulation would fail."""
    import torch
    global _BF16_OK
    if _BF16_OK is None:
        try:
            g = torch.Generator().manual_seed(0)
            d = 4096
            a = torch.ones(8, d) + 2.0**-6 * torch.randint(0, 4, (8, d), generator=g).float()
            b = torch.ones(64, d)
            ab, bb = a.bfloat16(), b.bfloat16()
            exact = ab.double() @ bb.double().T  # products and sums exact in float64
            got = (ab @ bb.T).double()
            bound = _gamma(d) * exact.abs() + 2.0**-8 * exact.abs() * 1.01
            _BF16_OK = bool(((got - exact).abs() <= bound).all())
        except RuntimeError:  # no bf16 matmul on this build
            _BF16_OK = False
    return _BF16_OK


_BF16_PAYS: bool | None = None


def _has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_bf16" in f.read()
    except OSError:  # not Linux: no AMX known
        return False


def bf16_pays() -> bool:
    """Whether ``method="auto"`` takes the bf16 candidate search on this CPU: only where the CPU
    has AMX (``amx_bf16`` in /proc/cpuinfo; the path was designed for it) and torch's bf16
    matmul accumulates in float32.

    Decided from the CPU alone, never from a timing, so two runs on one machine always take the
    same path (same float32 re-rank rounding). A faster bf16 matmul alone would not justify it:
    on an AMD EPYC with AVX512-BF16 (no AMX) the bf16 matmul is 2.5x faster than float32 yet the
    whole bf16 search was slower, 3.77 s vs 3.27 s (group maxima and re-rank cost more than the
    matmul saves; ``benchmarks/bf16_search_speed.py``). Both paths return the exact float32
    top-k values, so the choice changes speed only (and float32 rounding of the re-rank, ~1 ulp).
    """
    global _BF16_PAYS
    if _BF16_PAYS is None:
        _BF16_PAYS = bool(_has_amx() and bf16_matmul_accumulates_in_fp32())
    return _BF16_PAYS


def _group_max(x: torch.Tensor, g: int) -> tuple[int, int, torch.Tensor]:
    """(w, main, (n, w + tail) maxima): group c < w holds columns c, c + w, ..., c + (g-1) w of
    ``x``; columns from ``main = g w`` on are single-column groups w, w + 1, ..."""
    import torch
    n, cols = x.shape
    w = cols // g
    main = g * w
    if g == 1:
        return cols, cols, x
    out = torch.as_strided(x, (n, g, w), (x.stride(0), w, 1)).amax(dim=1)
    if main < cols:
        out = torch.cat([out, x[:, main:]], dim=1)
    return w, main, out


def _expand(table: torch.Tensor, thr: torch.Tensor, gi: torch.Tensor, gc: torch.Tensor, w: int, main: int,
            g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns of ``table`` in the candidate groups (gi, gc) (see :func:`_group_max`) whose
    value is >= thr[row], as (rows, cols), in the order of the groups."""
    import torch
    if g == 1:
        return gi, gc
    t = torch.arange(g)
    if main == table.shape[1]:  # no tail columns
        cols = gc[:, None] + w * t[None, :]
        keep = table[gi[:, None], cols].float() >= thr[gi][:, None]
        return gi[:, None].expand_as(cols)[keep], cols[keep]
    is_main = gc < w
    cols = torch.where(is_main[:, None], gc[:, None] + w * t[None, :], (gc - w + main)[:, None])
    rows = gi[:, None].expand_as(cols)
    keep = table[rows, cols].float() >= thr[gi][:, None]
    keep &= is_main[:, None] | (t[None, :] == 0)
    return rows[keep], cols[keep]


def _products_by_index(q: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(n, m) float32 <q_i, bank[labels[i, j]]>, -inf where labels is -1 (exact float32 dots).

    faiss's ``fvec_inner_products_by_idx`` (no copy of the bank, OpenMP) when faiss is
    installed; else blocked gathers and a batched product in torch.
    """
    import torch
    n, m = labels.shape
    d = q.shape[1]
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None and hasattr(faiss, "fvec_inner_products_by_idx"):
        qn = np.ascontiguousarray(q.numpy(), dtype=np.float32)
        bn = bank.numpy()
        ln = np.ascontiguousarray(labels.numpy())
        ip = np.empty((n, m), np.float32)
        faiss.fvec_inner_products_by_idx(
            faiss.swig_ptr(ip), faiss.swig_ptr(qn), faiss.swig_ptr(bn), faiss.swig_ptr(ln), d, n, m
        )
        return torch.from_numpy(ip)
    out = torch.empty(n, m, dtype=torch.float32)
    step = max(1, RERANK_BUDGET // max(1, 4 * d * m))
    for s in range(0, n, step):
        lab = labels[s : s + step]
        valid = lab >= 0
        rows = bank[torch.where(valid, lab, torch.zeros_like(lab))]
        vals = torch.bmm(rows, q[s : s + step, :, None]).squeeze(2)
        out[s : s + step] = torch.where(valid, vals, torch.full_like(vals, -math.inf))
    return out


class InnerProductIndex:
    """Exact top-k inner products of queries against a fixed float32 bank (see module doc)."""

    def __init__(self, bank: np.ndarray, method: str = "auto"):
        import torch
        if method not in ("auto", "bf16", "exact"):
            raise ValueError(f"method must be auto, bf16 or exact, got {method!r}")
        self.bank = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
        n, d = self.bank.shape
        # auto: bf16 only for banks big enough and where a bf16 matmul is measurably faster
        use_bf16 = method == "bf16" or (method == "auto" and n >= EXACT_BELOW and bf16_pays())
        self.method = "bf16" if use_bf16 and bf16_matmul_accumulates_in_fp32() else "exact"
        self.stats = {"queries": 0, "candidates": 0, "fallback_rows": 0}
        self._buf: torch.Tensor | None = None  # reused (query chunk x bank) bf16 output
        if self.method == "bf16":
            self.bank_bf = self.bank.to(torch.bfloat16)
            self.norm_max = float(_row_norms(self.bank).max())
            self.norm_hat_max = float(_row_norms(self.bank_bf).max())
            self.err_max = float(_row_norms(self.bank_bf, minus=self.bank).max())

    # -- exact float32 search (small banks, fallback rows, reference) --------------------------
    def _exact(self, q: torch.Tensor, k: int) -> torch.Tensor:
        import torch
        n_bank = self.bank.shape[0]
        step = max(1, S_BUDGET // max(1, 4 * n_bank))
        out = torch.empty(q.shape[0], k, dtype=torch.float32)
        for s in range(0, q.shape[0], step):
            out[s : s + step] = torch.topk(q[s : s + step] @ self.bank.T, k, dim=1, sorted=True).values
        return out

    # -- bf16 candidate search + float32 re-rank ------------------------------------------------
    def _groups(self, k: int) -> tuple[int, int]:
        """Group sizes of the two max-reduction levels (8 x 4 = 32 columns per top group),
        smaller for small banks so that at least 4k top groups remain."""
        n_bank = self.bank.shape[0]
        g1 = 32
        while g1 > 1 and n_bank // g1 < 4 * k:
            g1 //= 2
        g2 = 1  # a second level (e.g. 8 x 4) gathers less but runs more small ops: slower here
        return g1, g2

    def _search_chunk(self, q: torch.Tensor, qb: torch.Tensor, norms, k: int, buf: torch.Tensor) -> torch.Tensor:
        import torch
        n, d = q.shape
        g1, g2 = self._groups(k)
        s = buf[:n]
        torch.matmul(qb, self.bank_bf.T, out=s)  # (n, N) bf16, into a reused buffer
        # two levels of group maxima; a group is a set of columns g apart (strided slices:
        # an elementwise max of g contiguous slices, fully vectorised); tail columns are
        # single-column groups
        w1, main1, gmax1 = _group_max(s, g1)
        w2, main2, gmax2 = _group_max(gmax1, g2)
        top = gmax2.float()
        lower = torch.topk(top, k, dim=1, sorted=False).values.amin(1).double()  # <= k-th s~
        rowmax = top.amax(1).double()
        nq, nqb, dq = norms
        gam = _gamma(d)
        base = (dq * self.norm_hat_max + nq * self.err_max + gam * nqb * self.norm_hat_max
                + gam * nq * self.norm_max)
        m = torch.maximum(rowmax.abs(), lower.abs() + 2.0 * base + 2.0**-7)
        err = (base + _halfulp_bound(m)) * (1.0 + 1e-6) + 1e-30
        thr = (lower - 2.0 * err).float()
        # float32 rounding of thr: step it down by one float32 ulp so the test stays conservative
        thr = torch.nextafter(thr, torch.full_like(thr, -math.inf))
        # candidate top groups -> level-1 groups -> columns, each filtered on s~ >= thr
        # (row-major throughout, so the candidates stay sorted by query row)
        gi, gc = torch.nonzero(top >= thr[:, None], as_tuple=True)
        gi, gc = _expand(gmax1, thr, gi, gc, w2, main2, g2)
        ci, cj = _expand(s, thr, gi, gc, w1, main1, g1)
        return self._rerank(q, ci, cj, k)

    def _rerank(self, q: torch.Tensor, ci: torch.Tensor, cj: torch.Tensor, k: int) -> torch.Tensor:
        """Top-k exact float32 products of each query row over its candidates (ci sorted)."""
        import torch
        n, d = q.shape
        counts = torch.bincount(ci, minlength=n)
        self.stats["candidates"] += int(ci.numel())
        out = torch.empty(n, k, dtype=torch.float32)
        cap = min(max(16 * k, 4096), self.bank.shape[0])
        big = counts > cap
        if bool(big.any()):  # near-ties / duplicates: those rows are searched exhaustively
            rows_big = torch.nonzero(big).flatten()
            out[rows_big] = self._exact(q[rows_big], k)
            self.stats["fallback_rows"] += int(rows_big.numel())
            sel = ~big[ci]
            ci, cj = ci[sel], cj[sel]
            counts = torch.where(big, torch.zeros_like(counts), counts)
        small = torch.nonzero(~big).flatten()
        if small.numel() == 0:
            return out
        starts = torch.cumsum(counts, 0) - counts
        c_max = int(counts.max())
        pos = torch.arange(ci.numel()) - starts[ci]
        labels = torch.full((n, c_max), -1, dtype=torch.int64)
        labels[ci, pos] = cj
        ip = _products_by_index(q, self.bank, labels)  # (n, c_max), -inf where labels == -1
        out[small] = torch.topk(ip[small], k, dim=1, sorted=True).values
        return out

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(n, k) float64: the k largest inner products of each query row, descending."""
        import torch
        q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        n_bank = self.bank.shape[0]
        if k > n_bank:
            raise ValueError(f"k={k} > bank size {n_bank}")
        out = np.empty((q_all.shape[0], k), np.float64)
        self.stats["queries"] += int(q_all.shape[0])
        if self.method == "exact":
            out[:] = self._exact(q_all, k).double().numpy()
            return out
        step = max(1, S_BUDGET // max(1, 2 * n_bank))
        if self._buf is None or self._buf.shape[0] < min(step, q_all.shape[0]):
            self._buf = torch.empty(min(step, q_all.shape[0]), n_bank, dtype=torch.bfloat16)
        qb_all = q_all.to(torch.bfloat16)
        norms = (_row_norms(q_all), _row_norms(qb_all), _row_norms(qb_all, minus=q_all))
        for s in range(0, q_all.shape[0], step):
            part = tuple(x[s : s + step] for x in norms)
            out[s : s + step] = self._search_chunk(
                q_all[s : s + step], qb_all[s : s + step], part, k, self._buf
            ).double().numpy()
        return out
