"""How much does NegLabel's group permutation move its results? (README, CLIP-native section)

The reference draws the permutation with ``torch.randperm`` on CUDA; oodbench on torch's CPU
generator, which gives another permutation for the same seed. This measures the spread of
NegLabel's AUROC / FPR@95 over group seeds (each seed = another permutation) on the offline
digits world, with the published negative-label corpus. Not a test; ~2-4 min on 2 cores.

    python benchmarks/neglabel_grouping_effect.py [--store DIR] [--seeds 10]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from oodbench import api
from oodbench.metrics import evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None)
    ap.add_argument("--seeds", type=int, default=10)
    a = ap.parse_args()
    store = a.store or tempfile.mkdtemp(prefix="oodbench-grouping-")
    api.extract(benchmark="digits", store=store, negatives="neglabel", device="cpu")
    rows = []
    for seed in range(a.seeds):
        (rec,) = api.score(["neglabel"], store=store, params=[f"neglabel.seed={seed}"])
        res = {k: evaluate(rec.id_scores, v) for k, v in rec.ood_scores.items()}
        rows.append((seed, {k: (r["auroc"], r["fpr95"]) for k, r in res.items()}, rec.id_scores))
    base = rows[0][2]
    print(f"NegLabel (ngroup=100) on digits, {a.seeds} group seeds")
    for name in rows[0][1]:
        au = np.array([r[1][name][0] for r in rows]) * 100
        fp = np.array([r[1][name][1] for r in rows]) * 100
        print(f"  {name:18s} AUROC {au.mean():.3f} (min {au.min():.3f}, max {au.max():.3f}, sd {au.std():.3f})  "
              f"FPR@95 {fp.mean():.2f} (min {fp.min():.2f}, max {fp.max():.2f})")
    rel = max(float(np.max(np.abs(r[2] - base) / np.abs(base))) for r in rows[1:])
    print(f"  largest relative change of a per-sample ID score vs seed 0: {rel:.2e}")


if __name__ == "__main__":
    main()
