"""Where the time of `--decode device` goes (a benchmark for a GPU machine, not a test).

Per image, on the same JPEG files (500x375 by default): Pillow decode + open_clip preprocessing
(one CPU thread), torchvision's decode_jpeg on the CPU, decode_jpeg on the device (one batched
call), the same from several threads at once (does it scale, i.e. is the GIL released and the
decoder not serialised?), and the tensor preprocessing on the device. Then whole extractions,
Pillow workers vs --decode device, at a few worker counts (where the crossover lies).

    python benchmarks/decode_profile.py --device cuda --out decode_profile.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from extract_throughput import make_jpegs, sync
from PIL import Image

from oodbench.data import build_source
from oodbench.decode import TensorPreprocess
from oodbench.extract import ExtractOptions, extract_dataset
from oodbench.models import load_model


def per_image_ms(fn, n: int, device: str, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return round(1000 * best / n, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n-extract", type=int, default=4096)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4, 14])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    bundle = load_model(a.model, None, device=a.device)
    tp = TensorPreprocess.from_transform(bundle.preprocess)
    res: dict = {"device": a.device, "torch": torch.__version__, "batch": a.batch}
    if a.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    for sizes in ("uniform", "mixed"):
        res[sizes] = profile(a, bundle, tp, sizes)
        print(json.dumps(res, indent=2), flush=True)
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


def profile(a, bundle, tp, sizes: str) -> dict:
    from torchvision.io import ImageReadMode, decode_jpeg

    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_jpegs(root / "jpg", max(a.n_extract, a.batch), (500, 375) if sizes == "uniform" else None)
        files = sorted((root / "jpg" / "x").glob("*.jpg"))
        payloads = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files[: a.batch]]
        b = len(payloads)

        def pil():
            for f in files[:b]:
                with Image.open(f) as im:
                    bundle.preprocess(im.convert("RGB"))

        def cpu_decode():
            for p in payloads:
                decode_jpeg(p, mode=ImageReadMode.RGB)

        def dev_decode():
            return decode_jpeg(payloads, mode=ImageReadMode.RGB, device=a.device)

        decoded = dev_decode()

        def dev_tp():
            tp.batch(decoded)

        def dev_tp_one_by_one():
            for x in decoded:
                tp(x)

        def threads(k):
            chunks = [payloads[i::k] for i in range(k)]

            def go():
                with ThreadPoolExecutor(k) as ex:
                    list(ex.map(lambda c: decode_jpeg(c, mode=ImageReadMode.RGB, device=a.device), chunks))
            return go

        ms = {"pil_decode_preprocess_1thread": per_image_ms(pil, b, "cpu", 2),
              "cpu_decode_jpeg_1thread": per_image_ms(cpu_decode, b, "cpu", 2),
              "device_decode_jpeg_batched": per_image_ms(dev_decode, b, a.device),
              "device_tensor_preprocess_batched": per_image_ms(dev_tp, b, a.device),
              "device_tensor_preprocess_one_by_one": per_image_ms(dev_tp_one_by_one, b, a.device),
              "distinct_sizes_in_batch": len({tuple(x.shape) for x in decoded})}
        for k in (2, 4, 8):
            ms[f"device_decode_jpeg_{k}_threads"] = per_image_ms(threads(k), b, a.device)
        x = torch.randn(b, 3, tp.crop, tp.crop, device=a.device)
        amp = torch.float16 if a.device.startswith("cuda") else None
        with torch.no_grad(), torch.autocast(a.device.split(":")[0], dtype=amp or torch.float32,
                                             enabled=amp is not None):
            ms["model_forward"] = per_image_ms(lambda: bundle.model.encode_image(x), b, a.device)
        res["ms_per_image"] = ms
        print(sizes, json.dumps(ms), flush=True)
        src = build_source({"source": "imagefolder", "root": str(root / "jpg"), "ood": True}, name="p")
        rates: dict = {}
        for w in a.workers:
            for dec in ("pil", "device"):
                o = ExtractOptions(batch_size=a.batch, workers=w, device=a.device, decode=dec)
                t = time.perf_counter()
                extract_dataset(bundle, src, root / f"{dec}{w}.h5", o, "p")
                rates[f"{dec}_workers{w}"] = round(len(src) / (time.perf_counter() - t), 1)
                print(sizes, dec, w, rates[f"{dec}_workers{w}"], flush=True)
        res["extract_images_per_s"] = rates
    return res


if __name__ == "__main__":
    main()
