"""Does the bfloat16 candidate search of ``oodbench.scorers.topk`` pay on this CPU?

Times ``InnerProductIndex(bank, "bf16").search`` against the plain float32 search
(``method="exact"``) and a bare bf16 vs float32 matmul, on unit vectors shaped like a KNN bank
(CLIP ViT-B embeddings). Small by default (a few seconds); not a test.

    python benchmarks/bf16_search_speed.py [--bank 100000] [--queries 2000] [--dim 512] [--k 50]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from oodbench.scorers.topk import InnerProductIndex, bf16_pays


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bank", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(a.bank, a.dim)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    q = bank[rng.integers(0, a.bank, a.queries)] + 0.1 * rng.normal(size=(a.queries, a.dim)).astype(np.float32)
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    print(f"cpu: {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
          f"amx_bf16 {'amx_bf16' in flags}, avx512_bf16 {'avx512_bf16' in flags}")
    qb, bb = torch.from_numpy(q).bfloat16(), torch.from_numpy(bank).bfloat16()
    qf, bf = torch.from_numpy(q), torch.from_numpy(bank)
    t_mm_bf = _best(lambda: qb @ bb.T, a.repeat)
    t_mm_f = _best(lambda: qf @ bf.T, a.repeat)
    print(f"matmul ({a.queries} x {a.dim}) @ ({a.dim} x {a.bank}): bf16 {t_mm_bf:.3f} s, float32 {t_mm_f:.3f} s, "
          f"ratio {t_mm_f / t_mm_bf:.2f}x")
    for method in ("bf16", "exact"):
        index = InnerProductIndex(bank, method)
        t = _best(lambda index=index: index.search(q, a.k), a.repeat)
        print(f"search method={method:5s} (ran {index.method}): {t:.3f} s")
    print(f"bf16_pays() on this machine: {bf16_pays()}")


if __name__ == "__main__":
    main()
