"""Throughput of `oodbench extract` against a plain `encode_image` loop (a benchmark, not a test).

Measures, on the same model, images, preprocessing and batch size:

  model_only     encode_image on preloaded random tensors already on the device (the ceiling)
  plain_loop     DataLoader(JPEG files) -> encode_image, nothing stored (what a user would write)
  extract_basic  oodbench's extractor: image_embeds + penultimate written to HDF5
  extract_all    + every block's CLS token (--layers all) + local patch embeddings (--local)
  extract_device extract_all with --decode device (JPEGs decoded on the device: nvJPEG on CUDA)
  extract_device_basic  extract_basic with --decode device

and prints/writes the ratios extract_*/plain_loop (goal: the extra features cost <= 10%).
Weights are randomly initialised (no download): throughput does not depend on their values.

    python benchmarks/extract_throughput.py --model oodbench-tiny --n 2000 --size 64          # CPU
    python benchmarks/extract_throughput.py --model ViT-B-16 --device cuda --precision fp16 \
        --n 4096 --batch-size 256 --workers 14 --out results.json                           # GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oodbench.data import build_source
from oodbench.extract import ExtractOptions, extract_dataset
from oodbench.models import load_model


def _jpeg(args) -> None:
    path, size, seed = args
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(0.005, 0.05, 3)
    ph = rng.uniform(0, 6.28, 3)
    img = np.stack([127 + 120 * np.sin(f[c] * (xx + yy * (c + 1)) + ph[c]) for c in range(3)], -1)
    img += rng.normal(0, 8, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def mixed_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """ImageNet-like image sizes (width, height): many share a few common sizes, the rest vary."""
    rng = np.random.default_rng(seed)
    common = [(500, 375), (500, 333), (375, 500), (500, 334), (500, 500)]
    out = []
    for _ in range(n):
        if rng.random() < 0.6:
            out.append(common[int(rng.integers(len(common)))])
        else:
            out.append((int(rng.integers(200, 1000)), int(rng.integers(200, 1000))))
    return out


def make_jpegs(root: Path, n: int, size: tuple[int, int] | None, seed: int = 0, procs: int | None = None) -> None:
    """n smooth synthetic JPEGs, root/x/<i>.jpg, written in parallel: all of one size, or of
    mixed ImageNet-like sizes (size None)."""
    from multiprocessing import Pool

    d = root / "x"
    d.mkdir(parents=True, exist_ok=True)
    sizes = [size] * n if size is not None else mixed_sizes(n, seed)
    jobs = [(d / f"{i:06d}.jpg", sizes[i], seed * 1_000_003 + i) for i in range(n)]
    with Pool(procs) as pool:
        pool.map(_jpeg, jobs, chunksize=64)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_only(bundle, device, amp, batch, image_size, iters=20) -> float:
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
        for _ in range(3):
            bundle.model.encode_image(x)
        sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            bundle.model.encode_image(x)
        sync(device)
    return batch * iters / (time.perf_counter() - t)


class _Files(torch.utils.data.Dataset):
    def __init__(self, source, preprocess):
        self.source, self.preprocess = source, preprocess

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return self.preprocess(self.source.load(i))


def plain_loop(bundle, source, device, amp, batch, workers) -> float:
    loader = torch.utils.data.DataLoader(_Files(source, bundle.preprocess), batch_size=batch, num_workers=workers,
                                         pin_memory=device.startswith("cuda"))
    n = 0
    t = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
        for x in loader:
            e = bundle.model.encode_image(x.to(device, non_blocking=True))
            e.float().cpu()
            n += len(x)
    sync(device)
    return n / (time.perf_counter() - t)


def run_extract(bundle, source, opts: ExtractOptions, out: Path) -> float:
    t = time.perf_counter()
    extract_dataset(bundle, source, out, opts, "bench")
    return len(source) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="oodbench-tiny")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, nargs=2, default=(500, 375), help="JPEG width height")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="take the best of this many runs of each")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    torch.manual_seed(0)
    bundle = load_model(a.model, None, device=a.device)
    opts = ExtractOptions(batch_size=a.batch_size, workers=a.workers, device=a.device, precision=a.precision)
    amp = opts.autocast_dtype()
    image_size = int(np.atleast_1d(bundle.model.visual.image_size)[0])
    res: dict = {"model": a.model, "device": a.device, "precision": str(amp), "batch_size": a.batch_size,
                 "workers": a.workers, "n_images": a.n, "jpeg_size": list(a.size), "torch": torch.__version__,
                 "cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads()}
    if a.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        make_jpegs(root / "jpg", a.n, tuple(a.size))
        res["jpeg_write_s"] = round(time.perf_counter() - t, 1)
        source = build_source({"source": "imagefolder", "root": str(root / "jpg"), "ood": True}, name="bench")
        best = {k: 0.0 for k in ("model_only", "plain_loop", "extract_basic", "extract_all", "extract_device",
                                "extract_device_basic")}
        for r in range(a.repeats):
            best["model_only"] = max(best["model_only"], model_only(bundle, a.device, amp, a.batch_size, image_size))
            best["plain_loop"] = max(best["plain_loop"], plain_loop(bundle, source, a.device, amp, a.batch_size, a.workers))
            best["extract_basic"] = max(best["extract_basic"], run_extract(bundle, source, opts, root / f"b{r}.h5"))
            full = ExtractOptions(**{**opts.__dict__, "layers": "all", "local": True})
            best["extract_all"] = max(best["extract_all"], run_extract(bundle, source, full, root / f"a{r}.h5"))
            dev = ExtractOptions(**{**full.__dict__, "decode": "device"})
            best["extract_device"] = max(best["extract_device"], run_extract(bundle, source, dev, root / f"d{r}.h5"))
            devb = ExtractOptions(**{**opts.__dict__, "decode": "device"})
            best["extract_device_basic"] = max(best["extract_device_basic"],
                                               run_extract(bundle, source, devb, root / f"db{r}.h5"))
        res["images_per_s"] = {k: round(v, 1) for k, v in best.items()}
        res["ratio_extract_basic_vs_plain"] = round(best["extract_basic"] / best["plain_loop"], 3)
        res["ratio_extract_all_vs_plain"] = round(best["extract_all"] / best["plain_loop"], 3)
        res["ratio_plain_vs_model_only"] = round(best["plain_loop"] / best["model_only"], 3)
        res["ratio_extract_device_vs_extract_all"] = round(best["extract_device"] / best["extract_all"], 3)
        res["ratio_extract_device_basic_vs_plain"] = round(best["extract_device_basic"] / best["plain_loop"], 3)
    print(json.dumps(res, indent=2))
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
