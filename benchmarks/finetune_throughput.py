"""Training throughput of `oodbench finetune` against a plain hand-written loop (a benchmark, not a test).

Both sides: the same model, batch size, DataLoader workers, precision (fp32 on the CPU), images,
loss (the ``ft`` recipe's: encode_image -> L2-normalise -> linear head -> cross-entropy), AdamW on
the image tower + head, eval preprocess (``augment none``). Ours is the real :func:`finetune`; a
global optimizer step hook timestamps every optimizer step, and img/s is taken over the steps after
the warm-up ones (the first steps pay worker start-up and allocation; model building, the zero-shot
head, evaluation and the checkpoint save lie outside the timed steps). The plain loop is
``DataLoader(dataset, shuffle, workers) -> forward -> backward -> AdamW.step``, timed the same way.

  digits_inmemory   tiny model, digits, oodbench's in-memory path (preprocessed once)
  digits_loader     tiny model, digits, oodbench's DataLoader path (max_in_memory 1)
  digits_plain      plain loop over the same digits images (DataLoader, same workers)
  vit_loader        ViT-B/16 (random weights, no download), JPEG folder, oodbench's DataLoader path
  vit_plain         plain loop over the same JPEGs

Runs are interleaved (ours, plain, ours, plain, ...) and medians of the repeats are reported. Then
peak RSS of a ViT-B/16 run (fresh process each) for two split sizes, and the per-entry memory of
the split's list representation (what a 1.28M-image ImageNet list costs).

    python benchmarks/finetune_throughput.py --out benchmarks/results/finetune_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook

_STAMPS: list[float] = []


def _hook(opt, args, kwargs) -> None:
    _STAMPS.append(time.perf_counter())


def rate(stamps: list[float], warmup: int, batch: int) -> float:
    """img/s over the steps after ``warmup`` (intervals between optimizer-step timestamps)."""
    s = stamps[warmup - 1:]
    return (len(s) - 1) * batch / (s[-1] - s[0])


# -- data ---------------------------------------------------------------------------------------
def make_jpegs(root: Path, n: int, n_classes: int = 2, seed: int = 0) -> None:
    """n smooth noisy synthetic JPEGs of ImageNet-like sizes, root/c<k>/<i>.jpg."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = int(rng.integers(224, 320)), int(rng.integers(224, 320))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        f, ph = rng.uniform(0.005, 0.05, 3), rng.uniform(0, 6.28, 3)
        img = np.stack([127 + 120 * np.sin(f[c] * (xx + yy * (c + 1)) + ph[c]) for c in range(3)], -1)
        img += rng.normal(0, 8, img.shape)
        d = root / f"c{i % n_classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=90)


def jpeg_catalogue(root: Path, yaml_path: Path) -> Path:
    """A benchmarks YAML whose ID train split is the JPEG folder (ViT-B-16, no pretrained tag)."""
    yaml_path.write_text(
        "datasets:\n"
        f"  jp-train: {{source: imagefolder, root: '{root}'}}\n"
        f"  jp-test: {{source: imagefolder, root: '{root}'}}\n"
        f"  jp-ood: {{source: imagefolder, root: '{root}', ood: true}}\n"
        "benchmarks:\n"
        "  jpegs:\n"
        "    model: {name: ViT-B-16}\n"
        "    classes: [c0, c1]\n"
        "    templates: ['a photo of a {}.']\n"
        "    id: {train: jp-train, test: jp-test}\n"
        "    ood: {far: [jp-ood]}\n")
    return yaml_path


# -- ours: the real finetune() ------------------------------------------------------------------
def ours(steps: int, batch: int, workers: int, max_in_memory: int, out: Path, **kw) -> list[float]:
    from oodbench.finetune import FinetuneConfig, finetune

    _STAMPS.clear()
    cfg = FinetuneConfig("ft", steps=steps, batch_size=batch, workers=workers, max_in_memory=max_in_memory,
                         augment="none", device="cpu", precision="fp32", eval_every=10**6, save_every=10**6,
                         warmup=0.0, **kw)
    finetune(cfg, out, overwrite=True)
    return list(_STAMPS)


# -- plain: a hand-written loop -----------------------------------------------------------------
class _Images(torch.utils.data.Dataset):
    def __init__(self, src, preprocess) -> None:
        self.src, self.pre, self.labels = src, preprocess, src.labels()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.pre(self.src.load(i)), int(self.labels[i])


def plain(steps: int, batch: int, workers: int, model_name: str, pretrained, src, n_classes: int,
          lr: float = 1e-4) -> list[float]:
    from oodbench.models import load_model

    torch.manual_seed(0)
    b = load_model(model_name, pretrained, device="cpu", seed=0)
    model = b.model.train()
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("visual."))
    dim = model.encode_image(torch.zeros(1, *b.preprocess(src.load(0)).shape)).shape[1]
    head = torch.nn.Linear(dim, n_classes)
    params = [p for n, p in model.named_parameters() if n.startswith("visual.")] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    extra = {"prefetch_factor": 4, "persistent_workers": True} if workers > 0 else {}
    loader = torch.utils.data.DataLoader(_Images(src, b.preprocess), batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, generator=torch.Generator().manual_seed(0), **extra)
    _STAMPS.clear()
    done = 0
    while done < steps:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(head(F.normalize(model.encode_image(x).float(), dim=-1)), y)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return list(_STAMPS)


def plain_inmemory(steps: int, batch: int, src, preprocess_model: str, pretrained, n_classes: int) -> list[float]:
    """The plain loop over preprocessed tensors held in memory (the digits in-memory reference)."""
    from oodbench.models import load_model

    torch.manual_seed(0)
    b = load_model(preprocess_model, pretrained, device="cpu", seed=0)
    model = b.model.train()
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("visual."))
    xs = torch.stack([b.preprocess(src.load(i)) for i in range(len(src))])
    ys = torch.as_tensor(src.labels())
    head = torch.nn.Linear(model.encode_image(xs[:1]).shape[1], n_classes)
    params = [p for n, p in model.named_parameters() if n.startswith("visual.")] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    _STAMPS.clear()
    for _ in range(steps):
        idx = torch.randint(0, len(ys), (batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(F.normalize(model.encode_image(xs[idx]).float(), dim=-1)), ys[idx])
        loss.backward()
        opt.step()
    return list(_STAMPS)


# -- memory -------------------------------------------------------------------------------------
def rss_child(args) -> None:
    """(in a fresh process) one ViT-B/16 DataLoader run; prints peak RSS of this process and of its
    (joined) workers."""
    register_optimizer_step_post_hook(_hook)
    ours(args.rss_steps, args.vit_batch, args.workers, 1, Path(args.rss_child) / "runs",
         benchmark="jpegs", model="ViT-B-16", pretrained=None, benchmarks=str(Path(args.rss_child) / "b.yaml"))
    print(json.dumps({"main_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def list_cost(n: int = 1_281_167) -> dict:
    """Bytes per entry of an ImageNet-train-like split as oodbench holds it: the source's list of
    relative paths + (N,) int64 labels, the ImageSet's row list and (N,) int64 label tensor."""
    import tracemalloc

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    paths = [f"n{1440764 + i % 1000:08d}/n{1440764 + i % 1000:08d}_{i:05d}.JPEG" for i in range(n)]
    labels = np.arange(n, dtype=np.int64) % 1000
    after_src = tracemalloc.get_traced_memory()[0]
    rows = list(range(n))
    t = torch.as_tensor(labels).clone()  # ImageSet.labels: its own (N,) int64 tensor
    after_set = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    src_b = (after_src - base) / n
    set_b = (after_set - after_src) / n + t.element_size()  # torch storage is not traced by tracemalloc
    del paths, rows
    return {"entries": n, "example_path": "n01440764/n01440764_10026.JPEG",
            "source_bytes_per_entry": round(src_b, 1), "imageset_bytes_per_entry": round(set_b, 1),
            "total_mb_for_entries": round((src_b + set_b) * n / 2**20, 1)}


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/finetune_throughput_cpu.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--digits-batch", type=int, default=64)
    ap.add_argument("--digits-steps", type=int, default=60)
    ap.add_argument("--digits-warmup", type=int, default=5)
    ap.add_argument("--vit-batch", type=int, default=8)
    ap.add_argument("--vit-steps", type=int, default=7)  # 2 warm-up + 5 timed
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--n-jpegs", type=int, default=200)
    ap.add_argument("--rss-sizes", default="200,2000")
    ap.add_argument("--rss-steps", type=int, default=3)
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args)
    register_optimizer_step_post_hook(_hook)
    from oodbench.config import load_catalogue

    info = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "rss_child"}}
    print(info, flush=True)
    W = args.warmup
    res: dict[str, list[float]] = {k: [] for k in ("digits_inmemory", "digits_loader", "digits_plain",
                                                   "digits_plain_inmemory", "vit_loader", "vit_plain")}
    cat = load_catalogue()
    dsrc = cat.source(cat.benchmark("digits").id_train)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "jpegs"
        make_jpegs(root, args.n_jpegs)
        yaml_path = jpeg_catalogue(root, tmp / "b.yaml")
        jsrc = load_catalogue(yaml_path).source("jp-train")
        for r in range(args.repeats):
            DB, DS, DW = args.digits_batch, args.digits_steps, args.digits_warmup
            res["digits_inmemory"].append(rate(ours(DS, DB, args.workers, 50_000, tmp / "r"), DW, DB))
            res["digits_plain_inmemory"].append(rate(plain_inmemory(DS, DB, dsrc, "oodbench-tiny", "digits", 5), DW, DB))
            res["digits_loader"].append(rate(ours(DS, DB, args.workers, 1, tmp / "r"), DW, DB))
            res["digits_plain"].append(rate(plain(DS, DB, args.workers, "oodbench-tiny", "digits", dsrc, 5), DW, DB))
            VB, VS = args.vit_batch, args.vit_steps
            res["vit_loader"].append(rate(ours(VS, VB, args.workers, 1, tmp / "r", benchmark="jpegs", model="ViT-B-16",
                                               pretrained=None, benchmarks=str(yaml_path)), W, VB))
            res["vit_plain"].append(rate(plain(VS, VB, args.workers, "ViT-B-16", None, jsrc, 2), W, VB))
            print(r, {k: round(v[-1], 2) for k, v in res.items()}, flush=True)
        med = {k: statistics.median(v) for k, v in res.items()}
        ratios = {"digits_inmemory_vs_plain_inmemory": med["digits_inmemory"] / med["digits_plain_inmemory"],
                  "digits_loader_vs_plain": med["digits_loader"] / med["digits_plain"],
                  "digits_inmemory_vs_plain": med["digits_inmemory"] / med["digits_plain"],
                  "vit_loader_vs_plain": med["vit_loader"] / med["vit_plain"]}
        rss = {}
        for n in [int(s) for s in args.rss_sizes.split(",")]:
            d = tmp / f"rss{n}"
            make_jpegs(d / "jpegs", n)
            jpeg_catalogue(d / "jpegs", d / "b.yaml")
            p = subprocess.run([sys.executable, __file__, "--rss-child", str(d), "--vit-batch", str(args.vit_batch),
                                "--workers", str(args.workers), "--rss-steps", str(args.rss_steps)],
                               capture_output=True, text=True, check=True)
            rss[str(n)] = json.loads(p.stdout.strip().splitlines()[-1])
            print("rss", n, rss[str(n)], flush=True)
    info.update({"img_per_s_runs": res, "img_per_s_median": med, "ratios": ratios, "peak_rss_vit_loader": rss,
                 "split_list_memory": list_cost(), "goal": "ours >= 0.90 x plain"})
    print(json.dumps({k: info[k] for k in ("img_per_s_median", "ratios", "peak_rss_vit_loader", "split_list_memory")},
                     indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
