"""Scoring speed and memory at ImageNet scale, with exactness checks (a benchmark, not a test).

On a store written by ``benchmarks/make_imagenet_scale_store.py``:

1. **per scorer**, each in a fresh subprocess (so that peak memory is its own): the store's
   inputs are loaded through the engine's own loaders (timed as "load"), then
   :func:`oodbench.engine.score_benchmark` fits and scores that one method (fit cache off);
   fit and score seconds come from the engine's provenance, peak RSS from ``getrusage``;
2. **the whole sweep** through the real CLI, ``oodbench score ... -m all``, cold (no cached
   fits) and warm (fits cached next to the scores), wall time and peak RSS of the process;
   the warm scores must equal the cold ones bit for bit;
3. **exactness**: for each heavy scorer, a straightforward implementation (faiss for KNN,
   per-class loops for Mahalanobis/RMDS, OpenOOD's formulas for ViM/DICE/NNGuide, a per-sample
   loop for OpenMax...) on a seeded subsample of the test/OoD rows, compared with the sweep's
   scores;
4. the same for the OpenOOD-shaped configuration (``--head linear``: a 1000-class fc on the
   768-d penultimate feature; KNN/Mahalanobis/RMDS on penultimate) for the ratios against the
   OpenOOD / pytorch-ood timings quoted in issue 8;
5. optionally (``--full-store``) the sweep on the 1.28M-row train bank.

Writes ``benchmarks/RESULTS.md`` (and a JSON next to it).

    python benchmarks/make_imagenet_scale_store.py --out /tmp/oodbench-imagenet-synth
    python benchmarks/score_speed.py --store /tmp/oodbench-imagenet-synth
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BENCH = "imagenet-synth"
THREADS = 2

# OpenOOD postprocessors / pytorch-ood 0.4 on arrays of these shapes, 2 cores (issue 8)
OPENOOD_S = {"msp": 8, "energy": 6, "gen": 7, "react": 6, "she": 10, "nnguide": 9, "fdbd": 10,
             "vim": 22, "dice": 80, "knn": 98, "mahalanobis": 460, "rmds": 460}
PYTORCH_OOD_S = {"vim": 3.4, "she": 2.5, "knn": 151}
GOALS = {"mahalanobis": ("openood", 50.0), "rmds": ("openood", 50.0), "dice": ("openood", 10.0),
         "knn": ("openood", 1.7), "vim": ("pytorch_ood", 1.0)}
OPENOOD_PARAMS = ["knn.feature=penultimate", "mahalanobis.feature=penultimate", "rmds.feature=penultimate"]
HEAVY = ["knn", "mahalanobis", "rmds", "vim", "residual", "dice", "nnguide", "openmax", "glmcm",
         "react", "she", "fdbd", "gen", "msp", "energy"]


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def open_store(store: Path):
    """(meta, Store, Benchmark) of a store written by make_imagenet_scale_store.py."""
    from oodbench.config import load_catalogue
    from oodbench.store import Store

    return meta_of(store), Store(store), load_catalogue(store / f"{BENCH}.yaml").benchmark(BENCH)


def store_shapes(store: Path) -> dict:
    """Class count, feature widths and text-bank sizes of a synthetic store, read from it."""
    from oodbench import engine

    meta, st, bench = open_store(store)
    view = engine.load_model_view(st, meta["model_key"], bench)
    text = {k: b.embeds.shape for k, b in view.text.items()}
    lin = view.linear
    return {"classes": text["classes"][1] if "classes" in text else None,
            "embed_dim": text["classes"][2] if "classes" in text else None,
            "penultimate_dim": (int(lin.weight.shape[1]) if lin is not None else None),
            "negatives": text.get("negatives", (0, 0))[1], "outliers": text.get("outliers", (0, 0))[1]}


def failures(res: dict) -> list[str]:
    """Everything that did not run or did not check out: the report says so at its top and the
    run exits non-zero, so a partial result never reads as a complete one."""
    out = []
    for phase in ("per_scorer", "openood"):
        out += [f"{phase} {m}: {r['error']}" for m, r in res.get(phase, {}).items() if "error" in r]
    for k, r in res.get("sweep", {}).items():
        if isinstance(r, dict) and r.get("rc", 0) != 0:
            out.append(f"sweep {k}: exit status {r['rc']}: {' '.join((r.get('tail') or '').splitlines()[-1:])}")
    sw = res.get("sweep", {})
    if sw.get("warm_equal") is False:
        out.append("sweep: warm scores differ from cold scores")
    if res.get("openood_check_rc", 0) != 0:
        out.append(f"OpenOOD-shape check sweep: exit status {res['openood_check_rc']}")
    for m, pairs in res.get("pytorch_ood_pairs", {}).items():
        out += [f"pytorch-ood pair {m}: {x['error']}" for x in pairs if "error" in x]
    for key in ("checks", "checks_openood"):
        out += [f"{key} {c['method']}: scores differ from the reference (max rel {c['max_rel_diff']:.1e})"
                for c in res.get(key, []) if not c["ok"]]
    return out


def code_version() -> str:
    """The git commit the run used (and whether the tree had uncommitted changes)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{rev}{' with uncommitted changes' if dirty else ''}"


def gemm_rates() -> str:
    """This machine's matrix-multiply speed now (torch, 2 threads, 4096^3): a shared VM's
    varies by 1.5x between hours, and every timing here scales with it."""
    import torch

    torch.set_num_threads(THREADS)
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(4096, 4096).to(dtype), torch.randn(4096, 4096).to(dtype)
        a @ b
        best = min(_timed(torch.matmul, a, b) for _ in range(5))
        out.append(f"{str(dtype).split('.')[-1]} {2 * 4096**3 / best / 1e9:.0f}")
    return ", ".join(out) + " GFLOP/s"


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
              "OPENBLAS_NUM_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1"})
    return e


def meta_of(store: Path) -> dict:
    return json.loads((store / "synth.json").read_text())


# ---------------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> None:
    """One method in this process: load the inputs, then fit + score through the engine."""
    import torch

    torch.set_num_threads(THREADS)
    os.environ["OODBENCH_FIT_CACHE"] = "0"
    from oodbench import engine
    from oodbench.scorers import get_scorer

    store = Path(args.store)
    meta, st, bench = open_store(store)
    methods = [args.worker]
    overrides = engine.parse_overrides(list(args.param or []), methods)
    scorer = get_scorer(args.worker)
    t0 = time.perf_counter()
    view = engine.load_model_view(st, meta["model_key"], bench)
    head = engine.make_head(view, args.head)
    splits = {"train": bench.id_train, "val": bench.id_val, "test": bench.id_test, **{d: d for d in bench.ood}}
    kinds = {"train": "train", "val": "val", "test": "test"}
    cache: dict[str, object] = {}
    logits_s = 0.0
    for s, d in splits.items():
        x = engine.load_inputs(st, view, d, head, kinds.get(s, "ood"))
        needs_fit_split = s in ("train", "val") and scorer.fit_split == s
        if s in ("train", "val") and not needs_fit_split:
            cache[d] = x
            continue
        # what every scorer of a sweep shares: the head's features, labels, ids, and the
        # eval splits' logits (the engine computes the test logits before any method)
        _ = x.features(head.input), x.labels, x.ids
        if s not in ("train",):
            t = time.perf_counter()
            _ = x.logits
            logits_s += time.perf_counter() - t
        cache[d] = x
    load_s = time.perf_counter() - t0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the engine loads its own view of the model (a new object), then its inputs: hand it the
    # preloaded ones, so that the timed call is fit + score only (not a second load)
    real_view, real_load = engine.load_model_view, engine.load_inputs
    engine.load_model_view = lambda store_, key, bench_: view if key == meta["model_key"] else real_view(store_, key, bench_)
    engine.load_inputs = lambda store_, view_, d, h, s: cache[d] if view_ is view else real_load(store_, view_, d, h, s)
    kw = {}
    if "reference" in scorer.needs and meta.get("reference_key"):
        kw["reference_key"] = meta["reference_key"]
    t1 = time.perf_counter()
    recs = engine.score_benchmark(st, meta["model_key"], bench, methods, overrides, head=args.head, **kw)
    wall = time.perf_counter() - t1
    prov = recs[0].provenance
    out = {"method": args.worker, "head": args.head, "params": args.param or [], "load_s": load_s,
           "eval_logits_s": logits_s,
           "fit_s": prov.get("fit_seconds", 0.0), "score_s": prov.get("score_seconds"),
           "engine_s": prov.get("seconds"), "wall_s": wall, "rss_loaded_mb": rss_loaded,
           "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "loadavg": loadavg()}
    Path(args.json).write_text(json.dumps(out))


def ptood_worker(args: argparse.Namespace) -> None:
    """pytorch-ood's own detector on the same arrays as our OpenOOD-shape run (linear head on
    the penultimate feature), in this process: fit_features + predict_features on the five
    eval splits, loading excluded (as the issue's quoted pytorch-ood numbers)."""
    import torch
    from pytorch_ood import detector

    torch.set_num_threads(THREADS)
    from oodbench import engine
    from oodbench.scorers import get_scorer

    store = Path(args.store)
    meta, st, bench = open_store(store)
    view = engine.load_model_view(st, meta["model_key"], bench)
    head = engine.make_head(view, "linear")
    t0 = time.perf_counter()
    arrays = {}
    for d, kind in [(bench.id_train, "train"), (bench.id_test, "test")] + [(o, "ood") for o in bench.ood]:
        x = engine.load_inputs(st, view, d, head, kind)
        arrays[d] = (torch.from_numpy(np.ascontiguousarray(x.features(head.input), np.float32)),
                     torch.from_numpy(np.asarray(x.labels, np.int64)))
    load_s = time.perf_counter() - t0
    w = torch.from_numpy(head.weight.astype(np.float32))
    b = torch.from_numpy(head.bias.astype(np.float32))
    z, y = arrays.pop(bench.id_train)
    t1 = time.perf_counter()
    if args.ptood == "vim":
        det = detector.ViM(None, d=get_scorer("vim")().dim, w=w, b=b)
    elif args.ptood == "she":
        fc = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            fc.weight.copy_(w)
            fc.bias.copy_(b)
        det = detector.SHE(None, fc)
    else:
        raise SystemExit(f"no pytorch-ood baseline for {args.ptood}")
    det.fit_features(z, y)
    fit_s = time.perf_counter() - t1
    for x, _ in arrays.values():
        det.predict_features(x)
    total = time.perf_counter() - t1
    out = {"method": args.ptood, "load_s": load_s, "fit_s": fit_s, "score_s": total - fit_s,
           "fit_score_s": total, "loadavg": loadavg()}
    Path(args.json).write_text(json.dumps(out))


def run_ptood(store: Path, method: str, tmp: Path) -> dict:
    js = tmp / f"ptood-{method}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--store", str(store), "--ptood", method,
           "--json", str(js)]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"method": method, "error": " | ".join(tail)}
    return json.loads(js.read_text())


def run_pairs(store: Path, method: str, tmp: Path, n: int) -> list[dict]:
    """``n`` back-to-back pairs (ours with the linear head, then pytorch-ood; the other way
    round in pairs 2, 4, ...) of fresh processes on the same arrays. Both halves of a pair run
    seconds apart, so they see the same machine speed; the ratio is taken per pair (pytorch-ood
    fit+predict / ours fit+score+eval logits, which its predict computes). A shared VM's speed
    drifts by 1.5x over minutes: ratios of phases run minutes apart measure the drift."""
    out = []
    for i in range(n):
        first_ours = i % 2 == 0
        runs = {}
        for who in (("ours", "ptood") if first_ours else ("ptood", "ours")):
            runs[who] = (run_worker(store, method, "linear", [], tmp, 1) if who == "ours"
                         else run_ptood(store, method, tmp))
        o, p = runs["ours"], runs["ptood"]
        if "error" in o or "error" in p:
            out.append({"error": o.get("error") or p.get("error")})
            continue
        ours = o["fit_score_s"] + o["eval_logits_s"]
        out.append({"order": "ours first" if first_ours else "pytorch-ood first",
                    "ours_fit_s": o["fit_s"], "ours_score_s": o["score_s"], "ours_eval_logits_s": o["eval_logits_s"],
                    "ours_s": ours, "ptood_fit_s": p["fit_s"], "ptood_predict_s": p["score_s"],
                    "ptood_s": p["fit_score_s"], "ratio": p["fit_score_s"] / ours, "loadavg": p["loadavg"]})
    return out


def pair_summary(pairs: list[dict]) -> dict | None:
    """Median, min and max of the per-pair ratios (pytorch-ood seconds / ours)."""
    r = sorted(x["ratio"] for x in pairs if "ratio" in x)
    if not r:
        return None
    return {"median": float(np.median(r)), "min": r[0], "max": r[-1], "n": len(r),
            "ours_median_s": float(np.median([x["ours_s"] for x in pairs if "ratio" in x])),
            "ptood_median_s": float(np.median([x["ptood_s"] for x in pairs if "ratio" in x]))}


def run_worker(store: Path, method: str, head: str, params: list[str], tmp: Path, repeat: int) -> dict:
    best = None
    for i in range(repeat):
        js = tmp / f"{method}-{head}-{i}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--store", str(store), "--worker", method,
               "--head", head, "--json", str(js)] + [a for p in params for a in ("--param", p)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"method": method, "error": " | ".join(tail)}
        r = json.loads(js.read_text())
        r["process_s"] = time.perf_counter() - t0
        r["fit_score_s"] = r["fit_s"] + r["score_s"]
        if best is None or r["fit_score_s"] < best["fit_score_s"]:
            best = {**r, "rss_peak_mb": max(r["rss_peak_mb"], (best or r)["rss_peak_mb"])}
    return best


# ---------------------------------------------------------------------------------- sweep


def run_sweep(store: Path, methods: str, head: str, params: list[str], cold: bool) -> dict:
    meta = meta_of(store)
    from oodbench import fitcache
    from oodbench.store import Store

    scores = Store(store).scores_path(meta["model_key"], BENCH)
    if cold:
        shutil.rmtree(fitcache.cache_dir(scores), ignore_errors=True)
    cmd = [sys.executable, "-m", "oodbench", "score", "-b", BENCH, "--benchmarks", str(store / f"{BENCH}.yaml"),
           "--store", str(store), "-m", methods, "--model-key", meta["model_key"], "--head", head]
    from oodbench.scorers import get_scorer

    if meta.get("reference_key") and (
        methods == "all" or any("reference" in get_scorer(m).needs for m in methods.split(","))
    ):
        cmd += ["--reference", meta["reference_key"]]
    for p in params:
        cmd += ["--param", p]
    la0 = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**env(), "COLUMNS": "200"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    buf, scored_s = b"", None
    while True:  # the moment the engine reports "scores written" = end of the scoring phase
        block = os.read(proc.stdout.fileno(), 65536)
        if not block:
            break
        buf += block
        if scored_s is None and b"scores written" in buf:
            scored_s = time.perf_counter() - t0
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = buf.decode(errors="replace")
    rc = os.waitstatus_to_exitcode(status)
    from oodbench.results import load_records

    # this run's records: one per method, the label carrying this run's --param overrides
    want = {}
    for p in params:
        name, rest = p.split(".", 1)
        want.setdefault(name, []).append(rest)
    recs = {}
    if rc == 0:
        for r in load_records(scores):
            label = r.method if r.method not in want else f"{r.method}({', '.join(sorted(want[r.method]))})"
            if r.label == label and r.head == head and (methods == "all" or r.method in methods.split(",")):
                recs[r.method] = r
    return {"cmd": " ".join(cmd), "rc": rc, "wall_s": wall, "scored_s": scored_s,
            "rss_peak_mb": usage.ru_maxrss / 1024,
            "loadavg_before": la0, "loadavg_after": loadavg(), "records": recs,
            "tail": "\n".join(out.strip().splitlines()[-5:]) if rc else ""}


# ---------------------------------------------------------------------------------- checks


def reference_checks(store: Path, head_name: str, records: dict, params: list[str], n_id: int = 400,
                     n_ood: int = 100, seed: int = 0) -> list[dict]:
    """Straightforward implementations of the heavy scorers on a subsample, vs the sweep's scores.

    KNN's reference is faiss's flat index (OpenOOD's KNN) where faiss is installed
    (``pip install -e .[faiss]``), else a float64 brute force over the whole bank."""
    try:
        import faiss
    except ImportError:
        faiss = None
    import torch
    from scipy.special import logsumexp, softmax

    from oodbench import engine
    from oodbench.scorers import make_scorer
    from oodbench.scorers.common import seeded_subset
    from oodbench.scorers.inputs import l2_normalize

    torch.set_num_threads(THREADS)
    if faiss is not None:
        faiss.omp_set_num_threads(THREADS)
    meta, st, bench = open_store(store)
    view = engine.load_model_view(st, meta["model_key"], bench)
    head = engine.make_head(view, head_name)
    train = engine.load_inputs(st, view, bench.id_train, head, "train")
    rng = np.random.default_rng(seed)
    splits = {bench.id_test: engine.load_inputs(st, view, bench.id_test, head, "test")}
    evals = {bench.id_test: np.sort(rng.choice(len(splits[bench.id_test]), n_id, replace=False))}
    for d in bench.ood:
        splits[d] = engine.load_inputs(st, view, d, head, "ood")
        evals[d] = np.sort(rng.choice(len(splits[d]), n_ood, replace=False))
    overrides = engine.parse_overrides(params, list(records))
    w = head.weight.astype(np.float64)
    b = head.bias.astype(np.float64)
    y = train.labels

    def sub(space):
        return {d: splits[d].features(space)[evals[d]].astype(np.float64) for d in splits}

    def engine_scores(method):
        r = records[method]
        return {d: (r.id_scores if d == bench.id_test else r.ood_scores[d])[evals[d]] for d in splits}

    def feature_of(method):
        return overrides.get(method, {}).get("feature", "embeds")

    results = []

    def compare(method, ref: dict, what: str, rtol=1e-5):
        got = engine_scores(method)
        a = np.concatenate([got[d] for d in splits])
        e = np.concatenate([ref[d] for d in splits])
        scale = max(1e-12, float(np.abs(e).max()))
        abs_diff = float(np.abs(a - e).max())
        ok = bool(np.allclose(a, e, rtol=rtol, atol=rtol * scale))
        results.append({"method": method, "reference": what, "n": int(a.size), "max_abs_diff": abs_diff,
                        "max_rel_diff": abs_diff / scale, "ok": ok})

    def train_feats(space):
        return train.features(space).astype(np.float64)

    hf = head.input
    for m in [m for m in HEAVY if m in records and records[m].head == head_name]:
        t0 = time.perf_counter()
        if m == "knn":
            k = 50
            space = feature_of(m)
            bank = l2_normalize(train.features(space)).astype(np.float32)
            ref = {}
            if faiss is not None:
                index = faiss.IndexFlatL2(bank.shape[1])
                index.add(bank)
                for d, x in sub(space).items():
                    dist, _ = index.search(l2_normalize(x.astype(np.float32)), k)
                    ref[d] = -np.sqrt(np.clip(dist[:, -1].astype(np.float64), 0, None))
                compare(m, ref, "faiss IndexFlatL2 (OpenOOD's KNN), k=50", rtol=2e-4)
            else:
                b64 = torch.from_numpy(bank.astype(np.float64))
                for d, x in sub(space).items():
                    q = torch.from_numpy(l2_normalize(x.astype(np.float32)).astype(np.float64))
                    dist = torch.cdist(q, b64) if len(q) else torch.empty((0, k), dtype=torch.float64)
                    ref[d] = -torch.topk(dist, k, dim=1, largest=False).values[:, -1].numpy()
                compare(m, ref, "float64 brute force over the bank (faiss not installed), k=50", rtol=2e-4)
        elif m in ("mahalanobis", "rmds"):
            space = feature_of(m)
            h = train_feats(space)
            classes = np.unique(y[y >= 0])
            mu = np.stack([h[y == c].mean(0) for c in classes])
            cov = sum(((h[y == c] - mu[i]).T @ (h[y == c] - mu[i]) for i, c in enumerate(classes)))
            prec = np.linalg.pinv(cov / (y >= 0).sum(), hermitian=True)
            if m == "rmds":
                mu0 = h.mean(0)
                prec0 = np.linalg.pinv(np.cov(h.T, bias=True), hermitian=True)
            xs = sub(space)
            x = np.concatenate(list(xs.values()))
            best = np.full(x.shape[0], -np.inf)
            for i in range(len(classes)):  # one class at a time: (x - mu_c)^T P (x - mu_c)
                diff = x - mu[i]
                best = np.maximum(best, -((diff @ prec) * diff).sum(1))
            if m == "rmds":
                diff0 = x - mu0
                best = best + ((diff0 @ prec0) * diff0).sum(1)
            bounds = np.cumsum([0] + [len(v) for v in xs.values()])
            ref = {d: best[bounds[j] : bounds[j + 1]] for j, d in enumerate(xs)}
            compare(m, ref, "per-class loop, pinv of the shared covariance", rtol=1e-6)
        elif m in ("vim", "residual"):
            dim = int(overrides.get(m, {}).get("dim", 256 if m == "vim" else 512))
            h = train_feats(hf)
            if m == "residual" and dim >= h.shape[1]:
                dim = h.shape[1] // 2  # Residual's documented cap
            u = -np.linalg.pinv(w) @ b if b.any() else np.zeros(w.shape[1])
            cov = (h - u).T @ (h - u) / h.shape[0]
            ev, evec = np.linalg.eig(cov)  # OpenOOD uses eig on the covariance
            ns = np.ascontiguousarray(np.real(evec[:, np.argsort(np.real(ev))[::-1][dim:]]))
            alpha = (h @ w.T + b).max(1).mean() / np.linalg.norm((h - u) @ ns, axis=1).mean()
            ref = {}
            for d, x in sub(hf).items():
                vlogit = np.linalg.norm((x - u) @ ns, axis=1)
                ref[d] = logsumexp(x @ w.T + b, axis=1) - alpha * vlogit if m == "vim" else -vlogit
            compare(m, ref, "OpenOOD's ViM (np.linalg.eig of the covariance)", rtol=1e-5)
        elif m == "dice":
            h = train_feats(hf)
            contrib = h.mean(0)[None, :] * w
            wm = w * (contrib > np.percentile(contrib, 90))
            ref = {d: logsumexp(x @ wm.T + b, axis=1) for d, x in sub(hf).items()}
            compare(m, ref, "OpenOOD's DICE (masked fc, logsumexp)", rtol=1e-6)
        elif m == "nnguide":
            h = train_feats(hf)
            keep = seeded_subset(h.shape[0], 0.01, 100, 0)
            hb = h if keep is None else h[keep]
            bank = l2_normalize(hb) * logsumexp(hb @ w.T + b, axis=1)[:, None]
            ref = {}
            for d, x in sub(hf).items():
                sims = np.sort(l2_normalize(x) @ bank.T, axis=1)[:, ::-1][:, :100]
                ref[d] = logsumexp(x @ w.T + b, axis=1) * sims.mean(1)
            compare(m, ref, "full sort of the guided bank similarities", rtol=1e-5)
        elif m == "openmax":
            om = make_scorer("openmax").fit(train)  # Weibull parameters (checked in the unit tests)
            z_train = np.concatenate([train.features(hf)[r] @ head.weight.T + head.bias
                                      for r in np.array_split(np.arange(len(train)), 64)])
            pred = z_train.argmax(1)
            mav_ok = all(np.allclose(om.mavs_[c], z_train[(pred == c) & (y == c)].astype(np.float64).mean(0),
                                     rtol=1e-5, atol=1e-5) for c in np.unique(y))
            ref = {}
            for d in splits:
                z = splits[d].logits[evals[d]].astype(np.float64)
                out = []
                for x in z:
                    top = np.argsort(-x, kind="stable")[:3]
                    omega = np.zeros_like(x)
                    for rank, c in enumerate(top):
                        shape, scale, shift = om.weibull_[c]
                        if np.isnan(shape):
                            continue
                        dd = np.linalg.norm(x - om.mavs_[c]) + shift
                        omega[c] = -np.expm1(-((dd / scale) ** shape)) * (3 - rank) / 3
                    full = np.append(x * (1 - omega), (x * omega).sum())
                    out.append(1 - softmax(full)[-1])
                ref[d] = np.array(out)
            compare(m, ref, f"per-sample loop (MAVs by class loop {'equal' if mav_ok else 'DIFFER'})", rtol=1e-6)
            results[-1]["ok"] = results[-1]["ok"] and mav_ok
        elif m == "glmcm":
            bank = view.text["classes"]
            t = l2_normalize(bank.embeds[0].astype(np.float32)).astype(np.float64)
            ref = {}
            for d in splits:
                x = splits[d].features("embeds")[evals[d]].astype(np.float64)
                loc = splits[d].loaders["local_embeds"]()[evals[d]].astype(np.float32)
                glob = softmax(x @ t.T, axis=1).max(1)
                sims = l2_normalize(loc).astype(np.float64) @ t.T
                ref[d] = glob + softmax(sims, axis=2).max(axis=(1, 2))
            compare(m, ref, "float64 softmax over every patch", rtol=1e-5)
        elif m == "react":
            h = train_feats(hf)
            tau = np.percentile(train.features(hf), 90)
            ref = {d: logsumexp(np.minimum(x, tau) @ w.T + b, axis=1) for d, x in sub(hf).items()}
            compare(m, ref, "clip at the 90th percentile, logsumexp", rtol=1e-6)
        elif m == "she":
            # predictions: argmax of the head's float32 logits, as every logit score reads them
            h = train_feats(hf)
            pred = train.logits.argmax(1)
            pat = np.zeros_like(w)
            for c in np.unique(y):
                sel = (pred == c) & (y == c)
                if sel.any():
                    pat[c] = h[sel].mean(0)
            ref = {d: np.einsum("nd,nd->n", x, pat[splits[d].logits[evals[d]].argmax(1)])
                   for d, x in sub(hf).items()}
            compare(m, ref, "class loop over correctly classified train rows", rtol=1e-5)
        elif m == "fdbd":
            mean = train_feats(hf).mean(0)
            ref = {}
            for d, x in sub(hf).items():
                z = x @ w.T + b
                p = z.argmax(1)
                num = np.abs(z[np.arange(len(p)), p][:, None] - z)
                den = np.linalg.norm(w[p][:, None, :] - w[None], axis=2)
                den[np.arange(len(p)), p] = 1.0
                ref[d] = (num / np.maximum(den, 1e-12)).sum(1) / np.linalg.norm(x - mean, axis=1)
            compare(m, ref, "explicit decision-boundary distances", rtol=1e-5)
        elif m in ("msp", "energy", "gen"):
            ref = {}
            for d, x in sub(hf).items():
                z = x @ w.T + b
                p = softmax(z, axis=1)
                if m == "msp":
                    ref[d] = p.max(1)
                elif m == "energy":
                    ref[d] = logsumexp(z, axis=1)
                else:
                    top = np.sort(p, axis=1)[:, -100:]
                    ref[d] = -(top**0.1 * (1 - top) ** 0.1).sum(1)
            compare(m, ref, "float64 from the features", rtol=2e-5)
        results[-1]["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def knn_stats(store: Path, n_queries: int = 4096) -> str:
    """How much the bf16 pass prunes: candidates per query, exhaustive fallback rows, time."""
    import torch

    from oodbench import engine
    from oodbench.scorers.inputs import l2_normalize
    from oodbench.scorers.topk import InnerProductIndex

    torch.set_num_threads(THREADS)
    meta, st, bench = open_store(store)
    view = engine.load_model_view(st, meta["model_key"], bench)
    head = engine.make_head(view, "zeroshot")
    lines = ["| feature | bank | queries | candidates / query (k = 50) | exhaustive rows | s per 1,000 queries |",
             "|---|---:|---:|---:|---:|---:|"]
    for space in ("embeds", "penultimate"):
        train = engine.load_inputs(st, view, bench.id_train, head, "train")
        bank = l2_normalize(train.features(space))
        qs = []
        for d in [bench.id_test, *bench.ood]:
            x = engine.load_inputs(st, view, d, head, "ood")
            qs.append(l2_normalize(x.features(space))[: n_queries // (1 + len(bench.ood))])
        q = np.concatenate(qs)
        index = InnerProductIndex(bank, "bf16")  # the bf16 pass itself (auto may pick float32 on this CPU)
        index.search(q[:256], 50)  # warm-up
        index.stats = {"queries": 0, "candidates": 0, "fallback_rows": 0}
        t0 = time.perf_counter()
        index.search(q, 50)
        dt = time.perf_counter() - t0
        lines.append(f"| {space} ({bank.shape[1]}-d) | {bank.shape[0]:,} | {q.shape[0]:,} | "
                     f"{index.stats['candidates'] / q.shape[0]:.0f} | {index.stats['fallback_rows']} | "
                     f"{1000 * dt / q.shape[0]:.2f} |")
        del bank, index, train
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- report


def fmt_s(x) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def write_report(res: dict, out: Path) -> None:
    L = []
    m = res["machine"]
    L += ["# Scoring speed at ImageNet scale", "",
          f"Generated by `benchmarks/score_speed.py` on {res['date']}.", "",
          f"- machine: {m['cpu']}, {m['cores']} cores visible, torch threads {THREADS}, "
          f"{m['mem_gb']:.0f} GiB RAM; Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}",
          f"- load average at start / end: {res['load_start']} / {res['load_end']} "
          "(the machine is shared: timings are best-of-repeats of isolated runs)",
          f"- matrix-multiply speed at start / end (torch, 2 threads, 4096³): "
          f"{res.get('gemm_start', 'not measured')} / {res.get('gemm_end', 'not measured')} "
          "(issue 8 quotes float32 ≈ 320, bfloat16 ≈ 1,280 for this machine: timings scale with it)",
          f"- command: `{res['command']}`; code: {res.get('code', 'not recorded')}",
          f"- store: {res['store_desc']}", ""]
    bad = failures(res)
    if bad:
        L += [f"**Incomplete: {len(bad)} problem(s); the numbers below are not a full result.**", ""]
        L += [f"- {b}" for b in bad] + [""]
    sw = res.get("sweep", {})
    if sw:
        L += ["## Whole sweep (`oodbench score -m all`, the real CLI)", "",
              "Wall: the whole command, start to exit (imports, loading, fits, scores, saving, then "
              "the printed metrics table); scored: until the engine reports the scores written.", "",
              "| run | wall | scored | peak RSS | load avg before → after |", "|---|---:|---:|---:|---|"]
        rows = [(n, sw.get(n)) for n in ("cold", "warm")]
        rows.append(("full", sw.get("full")))
        for name, r in rows:
            if not r:
                continue
            label = {"cold": "cold (fits computed)", "warm": "warm (fits from the cache)",
                     "full": "cold, **1.28M-row train bank**"}[name]
            if r.get("rc", 0) != 0:
                label += f" — **failed** (exit status {r['rc']})"
            scored = f"{r['scored_s']:.1f} s" if r.get("scored_s") else "-"
            L.append(f"| {label} | {r['wall_s']:.1f} s | {scored} | {r['rss_peak_mb'] / 1024:.2f} GB | "
                     f"{r['loadavg_before']} → {r['loadavg_after']} |")
        L += ["", f"Command: `{sw['cold']['cmd']}`", "",
              "Warm scores identical to cold scores (every method, every split): "
              + ("**not compared** (a sweep failed)." if sw.get("warm_equal") is None else f"**{sw.get('warm_equal')}**."), ""]
    per = res.get("per_scorer", {})
    if per:
        L += ["## Per scorer (zero-shot head on the 512-d embeddings: the default of `-m all`)", "",
              "Each scorer alone in a fresh process; inputs loaded first through the engine's loaders "
              "(features, labels, ids, eval-split logits: shared by a sweep); fit + score through "
              "`engine.score_benchmark` with the fit cache off. Sweep column: the same method's "
              "seconds inside the cold CLI sweep (includes its share of lazy loading).", "",
              "| scorer | fit s | score s (5 splits, 90k rows) | fit+score s | in sweep s | peak RSS GB | RSS after load GB |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        cold = sw.get("cold", {})
        in_sweep = ({m: rec.provenance.get("seconds") for m, rec in cold["records"].items()}
                    if "records" in cold else cold.get("seconds_per_method", {}))
        for name, r in sorted(per.items()):
            if "error" in r:
                L.append(f"| {name} | error: {r['error'][:120]} | | | | | |")
                continue
            L.append(f"| {name} | {fmt_s(r['fit_s'])} | {fmt_s(r['score_s'])} | {fmt_s(r['fit_score_s'])} | "
                     f"{fmt_s(in_sweep.get(name))} | {r['rss_peak_mb'] / 1024:.2f} | "
                     f"{r['rss_loaded_mb'] / 1024:.2f} |")
        L.append("")
    oo = res.get("openood", {})
    if oo:
        L += ["## OpenOOD shapes: ratios to the timings quoted in issue 8", "",
              "`--head linear` (a 1000 × 768 fc on the 768-d penultimate feature, as OpenOOD's ImageNet "
              f"fc) and `{' '.join('--param ' + p for p in OPENOOD_PARAMS)}`: the arrays of the quoted "
              "runs. OpenOOD: whole process, ~5 s of it loading; pytorch-ood: fit + predict, loading "
              "excluded. Ours: fit + score, loading excluded (add the load column for whole-process).", "",
              "pytorch-ood for ViM and SHE: measured here, in interleaved pairs with ours "
              "(`pytorch_ood.detector` 0.4 `fit_features` + `predict_features` on the same arrays, "
              "loading excluded; the quoted 3.4 s / 2.5 s came from another run of the machine): "
              "the column gives the medians of the pairs' seconds and the median of the per-pair "
              "ratios, ours counted *with* the eval splits' logits, which its predict computes and "
              "our engine shares between scorers (see the next table); the first column is ours "
              "without them, best of the repeats.", "",
              "| scorer | ours fit+score s | ours load s | OpenOOD s | × faster | pytorch-ood s | × faster | goal | met |",
              "|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for name in OPENOOD_S:
            r = oo.get(name)
            if not r or "error" in r:
                L.append(f"| {name} | {r.get('error', 'not run') if r else 'not run'} | | | | | | | |")
                continue
            t = r["fit_score_s"]
            ro = OPENOOD_S[name] / t
            pt = PYTORCH_OOD_S.get(name)
            rp = pt / t if pt else None
            summ = pair_summary(res.get("pytorch_ood_pairs", {}).get(name, []))
            pt_s = f"{pt} (quoted)" if pt else "-"
            if summ:  # the interleaved same-machine pairs decide (ours with the eval logits)
                rp = summ["median"]
                pt_s = (f"{summ['ptood_median_s']:.2f} vs ours {summ['ours_median_s']:.2f} "
                        f"(medians of {summ['n']} pairs)")
            goal = GOALS.get(name)
            if goal:
                base, need = goal
                have = ro if base == "openood" else rp
                goal_s = f"≥ {need:g}× {'OpenOOD' if base == 'openood' else 'pytorch-ood'}"
                met = "yes" if have is not None and have >= need else "**no**"
            else:
                goal_s = "≥ 1× the fastest"
                met = "yes" if t <= OPENOOD_S[name] and (rp is None or rp >= 1.0) else "**no**"
            L.append(f"| {name} | {fmt_s(t)} | {fmt_s(r['load_s'])} | {OPENOOD_S[name]} | {ro:.1f}× | "
                     f"{pt_s} | {f'{rp:.2f}×' if rp else '-'} | {goal_s} | {met} |")
        L.append("")
    pp = res.get("pytorch_ood_pairs")
    if pp:
        L += ["## pytorch-ood 0.4 against ours, interleaved pairs on this machine in this run", "",
              "Same arrays as the OpenOOD-shape rows (linear 1000 × 768 head on the penultimate "
              "feature), 2 torch threads, each run a fresh process. A pair is ours and pytorch-ood "
              "back to back (who goes first alternates), so both see the same machine speed; the "
              "ratio is pytorch-ood's fit + predict over ours. Ours: fit + score plus the time to "
              "compute the five eval splits' logits (its predict computes them; a sweep shares "
              "them between scorers, so they are not in our per-scorer column above).", "",
              "| scorer | pair | first | pytorch-ood fit s | predict s (5 splits) | fit+predict s | "
              "ours fit s | score s | eval logits s | ours total s | × faster |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, pairs in pp.items():
            for i, x in enumerate(pairs, 1):
                if "ratio" not in x:
                    L.append(f"| {name} | {i} | error: {x['error'][:120]} | | | | | | | | |")
                    continue
                L.append(f"| {name} | {i} | {x['order'].split()[0]} | {fmt_s(x['ptood_fit_s'])} | "
                         f"{fmt_s(x['ptood_predict_s'])} | {fmt_s(x['ptood_s'])} | {fmt_s(x['ours_fit_s'])} | "
                         f"{fmt_s(x['ours_score_s'])} | {fmt_s(x['ours_eval_logits_s'])} | {fmt_s(x['ours_s'])} | "
                         f"{x['ratio']:.2f}× |")
            sm = pair_summary(pairs)
            if sm:
                L.append(f"| **{name}** | median of {sm['n']} | | | | {fmt_s(sm['ptood_median_s'])} | | | | "
                         f"{fmt_s(sm['ours_median_s'])} | **{sm['median']:.2f}×** (range {sm['min']:.2f}–{sm['max']:.2f}) |")
        L.append("")
    for key, title in (("checks", "default configuration"), ("checks_openood", "OpenOOD shapes")):
        ch = res.get(key)
        if ch:
            L += [f"## Exactness: heavy scorers vs straightforward implementations ({title})", "",
                  f"Seeded subsample: {res['check_rows']}. Fits on the full train split.", "",
                  "| scorer | reference implementation | rows | max abs diff | max rel diff | equal |",
                  "|---|---|---:|---:|---:|---|"]
            for c in ch:
                L.append(f"| {c['method']} | {c['reference']} | {c['n']} | {c['max_abs_diff']:.2e} | "
                         f"{c['max_rel_diff']:.2e} | {'yes' if c['ok'] else '**NO**'} |")
            L.append("")
    if res.get("knn_stats"):
        L += ["## KNN: bfloat16 candidate search + exact float32 re-rank", "",
              "Test and OoD queries against the train bank (`oodbench.scorers.topk`): the bf16 "
              "matmul's output, with a proven error bound, keeps only the bank rows that can be in "
              "the top k; those are re-ranked with exact float32 products. Rows with too many "
              "candidates (near-ties) are searched exhaustively in float32.", "", res["knn_stats"], ""]
    if res.get("notes"):
        L += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    out.write_text("\n".join(L))


# ---------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=Path("/tmp/oodbench-imagenet-synth"))
    ap.add_argument("--full-store", type=Path, default=None, help="a store made with --full (1.28M train rows)")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--repeat", type=int, default=1, help="isolated runs per scorer (best time kept)")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: per,sweep,openood,check,knnstats,gemm")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--pairs", type=int, default=6,
                    help="interleaved ours/pytorch-ood pairs for ViM and SHE (ratio per pair, median reported)")
    ap.add_argument("--full-from", type=Path, default=None,
                    help="take the 1.28M-row sweep from this earlier RESULTS.json instead of re-running it")
    ap.add_argument("--report-from", type=Path, default=None,
                    help="re-render the report (--out) from an earlier RESULTS.json, running nothing")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--head", default="zeroshot", help=argparse.SUPPRESS)
    ap.add_argument("--param", action="append", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--ptood", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.ptood:
        ptood_worker(args)
        return
    if args.report_from:
        write_report(json.loads(args.report_from.read_text()), args.out)
        print(f"wrote {args.out}")
        return
    import tempfile

    import torch

    torch.set_num_threads(THREADS)
    from oodbench.scorers import get_scorer, scorer_names

    skip = set(filter(None, args.skip.split(",")))
    if args.methods != "all":
        unknown = [m for m in args.methods.split(",") if m not in scorer_names()]
        if unknown:
            raise SystemExit(f"unknown scorer(s) {', '.join(unknown)}: choose from {', '.join(scorer_names())}")
    meta = meta_of(args.store)
    shapes = store_shapes(args.store)
    res: dict = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": np.__version__,
                    "mem_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30},
        "code": code_version(),
        "load_start": loadavg(),
        "gemm_start": gemm_rates() if "gemm" not in skip else "not measured (--skip gemm)",
        "store_desc": (f"`{args.store}`: train {meta['train']:,}, val {meta['val']:,}, test {meta['test']:,}, "
                       f"4 OoD × {meta['ood']:,}; {shapes['classes']} classes; penultimate {shapes['penultimate_dim']}, "
                       f"embeddings {shapes['embed_dim']}; GL-MCM patches {meta['local_patches']}"),
        "check_rows": "400 ID test rows + 100 rows of each OoD set",
        "notes": [],
    }
    methods = scorer_names() if args.methods == "all" else args.methods.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="oodbench-speed-"))
    if "per" not in skip:
        res["per_scorer"] = {}
        for name in methods:
            r = run_worker(args.store, name, "zeroshot", [], tmp, args.repeat)
            res["per_scorer"][name] = r
            print(f"[per] {name:14s} " + (f"fit {r['fit_s']:.2f}s score {r['score_s']:.2f}s peak {r['rss_peak_mb']:.0f} MB "
                                          f"(load {r['load_s']:.1f}s, avg {r['loadavg']})" if "error" not in r else r["error"]),
                  flush=True)
    if "sweep" not in skip:
        cold = run_sweep(args.store, args.methods, "zeroshot", [], cold=True)
        print(f"[sweep] cold {cold['wall_s']:.1f}s (scored {cold['scored_s']}) peak {cold['rss_peak_mb']:.0f} MB rc={cold['rc']} {cold['tail']}", flush=True)
        warm = run_sweep(args.store, args.methods, "zeroshot", [], cold=False)
        print(f"[sweep] warm {warm['wall_s']:.1f}s peak {warm['rss_peak_mb']:.0f} MB rc={warm['rc']}", flush=True)
        same = None if cold["rc"] or warm["rc"] or not cold["records"] else all(
            np.array_equal(cold["records"][m].id_scores, warm["records"][m].id_scores)
            and all(np.array_equal(cold["records"][m].ood_scores[d], warm["records"][m].ood_scores[d])
                    for d in cold["records"][m].ood_scores)
            for m in cold["records"])
        hits = sum(1 for r in warm["records"].values() if r.provenance.get("fit_cache") == "hit")
        res["sweep"] = {"cold": cold, "warm": warm, "warm_equal": same}
        misses = sorted(m for m, r in warm["records"].items()
                        if get_scorer(m).fit_split and r.provenance.get("fit_cache") != "hit")
        res["notes"].append(f"warm run: {hits} fits restored from the cache; refitted: {', '.join(misses) or 'none'} "
                            "(a KNN bank is the train split itself, bigger than the cache's 128 MB limit: "
                            "rebuilding it is a normalisation)")
        if "check" not in skip and cold["records"]:
            res["checks"] = reference_checks(args.store, "zeroshot", warm["records"], [])
            for c in res["checks"]:
                print(f"[check] {c['method']:12s} ok={c['ok']} max_rel={c['max_rel_diff']:.1e}", flush=True)
    if "openood" not in skip:
        res["openood"] = {}
        for name in OPENOOD_S:
            r = run_worker(args.store, name, "linear", [p for p in OPENOOD_PARAMS if p.startswith(name + ".")],
                           tmp, args.repeat)
            res["openood"][name] = r
            print(f"[openood] {name:12s} " + (f"fit+score {r['fit_score_s']:.2f}s" if "error" not in r else r["error"]), flush=True)
        res["pytorch_ood_pairs"] = {}
        for name in ("vim", "she"):
            pairs = run_pairs(args.store, name, tmp, args.pairs)
            res["pytorch_ood_pairs"][name] = pairs
            for x in pairs:
                print(f"[pytorch-ood pair] {name:5s} " + (
                    f"ours {x['ours_s']:.2f}s pytorch-ood {x['ptood_s']:.2f}s ratio {x['ratio']:.2f} ({x['order']})"
                    if "ratio" in x else x["error"]), flush=True)
        if "check" not in skip:
            sweep = run_sweep(args.store, ",".join(OPENOOD_S), "linear", OPENOOD_PARAMS, cold=False)
            res["openood_check_rc"] = sweep["rc"]
            if sweep["records"]:
                res["checks_openood"] = reference_checks(args.store, "linear", sweep["records"], OPENOOD_PARAMS)
                for c in res["checks_openood"]:
                    print(f"[check-openood] {c['method']:12s} ok={c['ok']} max_rel={c['max_rel_diff']:.1e}", flush=True)
    if "knnstats" not in skip:
        res["knn_stats"] = knn_stats(args.store)
        print(res["knn_stats"], flush=True)
    sw = res.get("sweep", {})
    if sw.get("cold", {}).get("scored_s"):
        c = sw["cold"]
        res["notes"].append(f"the cold CLI run spent {c['scored_s']:.0f} s until the scores were written and {c['wall_s'] - c['scored_s']:.0f} s "
                            "after that: the metrics table it prints (one sort per (method, OoD set) pair "
                            "in `metrics.evaluate`) and exit")
    res["notes"].append(f"GL-MCM reads {meta['local_patches']} patches per image in this store; a ViT-B/16 "
                        "has 196: its time grows linearly with the patch count")
    res["notes"].append("NegLabel / CSP / EOE read synthetic text banks written by the generator "
                        f"({shapes['negatives']:,} candidates per negative bank, {shapes['outliers']:,} outlier labels)")
    if args.full_store:
        full = run_sweep(args.full_store, args.methods, "zeroshot", [], cold=True)
        res.setdefault("sweep", {})["full"] = full
        fm = meta_of(args.full_store)
        per = {m: r.provenance.get("seconds") for m, r in full["records"].items()}
        top = sorted(per.items(), key=lambda kv: -(kv[1] or 0))[:6]
        res["notes"].append(f"1.28M-row train bank ({fm['train']:,} rows): `-m all` cold in {full['wall_s']:.0f} s, "
                            f"peak RSS {full['rss_peak_mb'] / 1024:.2f} GB; slowest: "
                            + ", ".join(f"{m} {s:.1f} s" for m, s in top))
        print(f"[full] {full['wall_s']:.1f}s peak {full['rss_peak_mb']:.0f} MB rc={full['rc']} {full['tail']}", flush=True)
    elif args.full_from:
        old = json.loads(args.full_from.read_text())
        full = old.get("sweep", {}).get("full")
        if full:
            res.setdefault("sweep", {})["full"] = {**full, "from": f"{args.full_from.name} of {old['date']}"}
            res["notes"] += [n + f" (run of {old['date']})" for n in old.get("notes", []) if n.startswith("1.28M")]
    res["load_end"] = loadavg()
    res["gemm_end"] = gemm_rates() if "gemm" not in skip else "not measured (--skip gemm)"
    write_report(res, args.out)
    dump = {k: v for k, v in res.items() if k != "sweep"}
    dump["sweep"] = {k: ({kk: vv for kk, vv in v.items() if kk != "records"} if isinstance(v, dict) else v)
                     for k, v in res.get("sweep", {}).items()}
    for k in ("cold", "warm", "full"):
        if k in dump["sweep"] and k in res.get("sweep", {}):
            dump["sweep"][k]["seconds_per_method"] = {m: r.provenance.get("seconds")
                                                      for m, r in res["sweep"][k]["records"].items()}
    args.out.with_suffix(".json").write_text(json.dumps(dump, indent=1, default=str))
    print(f"wrote {args.out}")
    bad = failures(res)
    if bad:
        print(f"incomplete: {len(bad)} problem(s):\n  " + "\n  ".join(bad), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
