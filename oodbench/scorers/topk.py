"""Exact top-k inner-product search on the CPU: a bfloat16 candidate search, then an exact
float32 re-rank of the candidates, with a proof that no true top-k neighbour is missed.

Notation: q a query row, b a bank row (float32), q^ = bf16(q), b^ = bf16(b), r = the float32
inner product <q, b> as the re-rank computes it, s~ = the bf16 matmul's output for (q, b).

**Error bound.** |s~ - r| <= E(q), with (all norms computed in float64)

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
the search runs close to the bf16 matmul's speed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

U32 = 2.0**-24
BF16_PRECISION_BITS = 8
S_BUDGET = 256 * 2**20  # bytes of one (query chunk x bank) bf16 similarity block
RERANK_BUDGET = 64 * 2**20  # bytes of the gathered bank rows of one re-rank step
EXACT_BELOW = 2048  # banks smaller than this are searched exactly in float32 directly


def _gamma(d: int) -> float:
    return d * U32 / (1.0 - d * U32)


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    """float64 L2 norms of the rows of a float32/bf16 tensor, in chunks."""
    out = torch.empty(x.shape[0], dtype=torch.float64)
    step = max(1, (32 * 2**20) // max(1, 8 * x.shape[1]))
    for s in range(0, x.shape[0], step):
        out[s : s + step] = torch.linalg.vector_norm(x[s : s + step].double(), dim=1)
    return out


def _diff_norms(x: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """float64 norms of the rows of float(xb) - x (the bf16 rounding error), in chunks."""
    out = torch.empty(x.shape[0], dtype=torch.float64)
    step = max(1, (32 * 2**20) // max(1, 8 * x.shape[1]))
    for s in range(0, x.shape[0], step):
        out[s : s + step] = torch.linalg.vector_norm(
            xb[s : s + step].double() - x[s : s + step].double(), dim=1
        )
    return out


def _halfulp_bound(m: torch.Tensor) -> torch.Tensor:
    """An upper bound on half a bf16 ulp of any float32 value whose bf16 rounding has |.| <= m."""
    a = torch.clamp(m.double() * (1.0 + 2.0**-6), min=2.0**-120)
    return torch.exp2(torch.floor(torch.log2(a)) - BF16_PRECISION_BITS)


_BF16_OK: bool | None = None


def bf16_matmul_accumulates_in_fp32() -> bool:
    """Check once that a bf16 matmul keeps float32 accumulation (its output is within the
    bound used above of the exact result), on data that bf16 accumulation would fail."""
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


class InnerProductIndex:
    """Exact top-k inner products of queries against a fixed float32 bank (see module doc)."""

    def __init__(self, bank: np.ndarray, method: str = "auto"):
        if method not in ("auto", "bf16", "exact"):
            raise ValueError(f"method must be auto, bf16 or exact, got {method!r}")
        self.bank = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
        n, d = self.bank.shape
        use_bf16 = method == "bf16" or (method == "auto" and n >= EXACT_BELOW)
        self.method = "bf16" if use_bf16 and bf16_matmul_accumulates_in_fp32() else "exact"
        self.stats = {"queries": 0, "candidates": 0, "fallback_rows": 0}
        if self.method == "bf16":
            self.bank_bf = self.bank.to(torch.bfloat16)
            self.norm_max = float(_row_norms(self.bank).max())
            self.norm_hat_max = float(_row_norms(self.bank_bf).max())
            self.err_max = float(_diff_norms(self.bank, self.bank_bf).max())

    # -- exact float32 search (small banks, fallback rows, reference) --------------------------
    def _exact(self, q: torch.Tensor, k: int) -> torch.Tensor:
        n_bank = self.bank.shape[0]
        step = max(1, S_BUDGET // max(1, 4 * n_bank))
        out = torch.empty(q.shape[0], k, dtype=torch.float32)
        for s in range(0, q.shape[0], step):
            out[s : s + step] = torch.topk(q[s : s + step] @ self.bank.T, k, dim=1, sorted=True).values
        return out

    # -- bf16 candidate search + float32 re-rank ------------------------------------------------
    def _groups(self, k: int) -> int:
        n_bank = self.bank.shape[0]
        g = 32
        while g > 1 and n_bank // g < 4 * k:
            g //= 2
        return g

    def _search_chunk(self, q: torch.Tensor, k: int) -> torch.Tensor:
        n, d = q.shape
        n_bank = self.bank.shape[0]
        g = self._groups(k)
        width = n_bank // g  # main part: columns [0, g * width) in g strided slices
        main = g * width
        qb = q.to(torch.bfloat16)
        s = qb @ self.bank_bf.T  # (n, N) bf16
        if g > 1:
            view = torch.as_strided(s, (n, g, width), (s.stride(0), width, 1))
            gmax = view.amax(dim=1)
            if main < n_bank:
                gmax = torch.cat([gmax, s[:, main:]], dim=1)
        else:
            gmax = s
        gmax = gmax.float()
        lower = torch.topk(gmax, k, dim=1, sorted=False).values.amin(1).double()  # <= k-th s~
        rowmax = gmax.amax(1).double()
        nq, nqb, dq = _row_norms(q), _row_norms(qb), _diff_norms(q, qb)
        gam = _gamma(d)
        base = (dq * self.norm_hat_max + nq * self.err_max + gam * nqb * self.norm_hat_max
                + gam * nq * self.norm_max)
        m = torch.maximum(rowmax.abs(), lower.abs() + 2.0 * base + 2.0**-7)
        err = (base + _halfulp_bound(m)) * (1.0 + 1e-6) + 1e-30
        thr = (lower - 2.0 * err).float()
        # float32 rounding of thr: step it down by one float32 ulp so the test stays conservative
        thr = torch.nextafter(thr, torch.full_like(thr, -math.inf))
        # candidate groups, expanded to columns, filtered on s~
        gi, gc = torch.nonzero(gmax >= thr[:, None], as_tuple=True)
        is_main = gc < width
        mi, mc = gi[is_main], gc[is_main]
        cols = mc[:, None] + width * torch.arange(g)[None, :]  # (G, g)
        rows = mi[:, None].expand_as(cols)
        keep = s[rows, cols].float() >= thr[rows]
        ci, cj = rows[keep], cols[keep]
        if main < n_bank:
            ti, tc = gi[~is_main], gc[~is_main] - width + main
            keep_t = s[ti, tc].float() >= thr[ti]
            ci, cj = torch.cat([ci, ti[keep_t]]), torch.cat([cj, tc[keep_t]])
        return self._rerank(q, ci, cj, k)

    def _rerank(self, q: torch.Tensor, ci: torch.Tensor, cj: torch.Tensor, k: int) -> torch.Tensor:
        """Top-k exact float32 products of each query row over its candidates (ci, cj)."""
        n, d = q.shape
        order = torch.argsort(ci, stable=True)
        ci, cj = ci[order], cj[order]
        counts = torch.bincount(ci, minlength=n)
        self.stats["candidates"] += int(ci.numel())
        out = torch.empty(n, k, dtype=torch.float32)
        cap = max(8 * k, 4 * int(counts.float().median().item()) + k, 256)
        big = counts > cap
        if bool(big.any()):  # near-ties / duplicates: those rows are searched exhaustively
            rows_big = torch.nonzero(big).flatten()
            out[rows_big] = self._exact(q[rows_big], k)
            self.stats["fallback_rows"] += int(rows_big.numel())
        starts = torch.cumsum(counts, 0) - counts
        small_rows = torch.nonzero(~big).flatten()
        if small_rows.numel() == 0:
            return out
        c_max = int(counts[small_rows].max())
        step = max(1, RERANK_BUDGET // max(1, 4 * d * c_max))
        for s0 in range(0, small_rows.numel(), step):
            rr = small_rows[s0 : s0 + step]
            cnt = counts[rr]
            pos = torch.arange(c_max)[None, :]
            valid = pos < cnt[:, None]
            idx = (starts[rr][:, None] + pos).clamp(max=max(0, ci.numel() - 1))
            bank_idx = torch.where(valid, cj[idx], torch.zeros_like(idx))
            vals = torch.bmm(self.bank[bank_idx], q[rr][:, :, None]).squeeze(2)
            vals = torch.where(valid, vals, torch.full_like(vals, -math.inf))
            out[rr] = torch.topk(vals, k, dim=1, sorted=True).values
        return out

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(n, k) float64: the k largest inner products of each query row, descending."""
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
        for s in range(0, q_all.shape[0], step):
            out[s : s + step] = self._search_chunk(q_all[s : s + step], k).double().numpy()
        return out
