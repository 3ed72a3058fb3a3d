#!/usr/bin/env bash
# The GPU checks of issue 3, as one script for a lent GPU machine (see benchmarks/RESULTS.md).
# Needs: .whl (open_clip_torch, ftfy, wcwidth wheels) and .gpucache (the cached tiny model) carried.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD OODBENCH_CACHE=$PWD/.gpucache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)" | tee -a $OUT/gpu.txt
nproc | tee -a $OUT/gpu.txt
# 1. CUDA extraction (fp16 autocast) agrees with CPU fp32 on the digits world
python3 -m oodbench extract -b digits --store /tmp/st_cpu --device cpu --layers all --local > /dev/null 2>&1
python3 -m oodbench extract -b digits --store /tmp/st_gpu --device cuda --layers all --local > /dev/null 2>&1
python3 - <<'PY' | tee $OUT/cuda_vs_cpu.txt
from oodbench.store import Store, FeatureFile
import numpy as np
from oodbench import api
a, b = Store("/tmp/st_cpu"), Store("/tmp/st_gpu")
(ka,), (kb,) = a.model_keys(), b.model_keys()
for d in ("digits-id-test", "noise-uniform"):
    fa, fb = FeatureFile(a.features_path(ka, d)), FeatureFile(b.features_path(kb, d))
    for k in ("image_embeds", "penultimate", "layers/cls", "local_embeds"):
        x, y = fa.load(k).astype(np.float32), fb.load(k).astype(np.float32)
        rel = np.abs(x - y).max() / np.abs(x).max()
        print(f"{d:16s} {k:14s} max|cpu-gpu|/max|cpu| = {rel:.2e}")
ra = {r.method: r for r in api.score(["mcm", "knn"], store="/tmp/st_cpu")}
rb = {r.method: r for r in api.score(["mcm", "knn"], store="/tmp/st_gpu")}
from oodbench.metrics import auroc
for m in ra:
    for o in ra[m].ood_scores:
        print(m, o, "AUROC cpu %.4f gpu %.4f" % (auroc(ra[m].id_scores, ra[m].ood_scores[o]), auroc(rb[m].id_scores, rb[m].ood_scores[o])))
PY
# 2. ViT-B/16 fp16 throughput: JPEG files -> extract (basic / all features / --decode device) vs plain loop
#    vs model only
python3 benchmarks/extract_throughput.py --model ViT-B-16 --device cuda --precision fp16 --n 8192 \
    --batch-size 256 --workers 14 --repeats 2 --out $OUT/vitb16_fp16.json 2>&1 | grep -v "━"
# 3. --decode device on CUDA (nvJPEG) against the Pillow path: same ids and skips, features close
python3 - <<'PY' | tee $OUT/decode_device_cuda.txt
import tempfile, numpy as np
from pathlib import Path
from benchmarks.extract_throughput import make_jpegs
from oodbench.data import build_source
from oodbench.extract import ExtractOptions, extract_dataset
from oodbench.models import load_model
from oodbench.store import FeatureFile
bundle = load_model("ViT-B-16", None, device="cuda")
with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp); make_jpegs(root / "jpg", 512, (500, 375))
    (root / "jpg" / "x" / "empty.jpg").write_bytes(b"")
    src = build_source({"source": "imagefolder", "root": str(root / "jpg"), "ood": True}, name="b")
    f = {}
    for dec in ("pil", "device"):
        o = ExtractOptions(batch_size=128, workers=8, device="cuda", precision="fp16", decode=dec)
        f[dec] = FeatureFile(extract_dataset(bundle, src, root / f"{dec}.h5", o, "b"))
    a, b = f["pil"].load("image_embeds"), f["device"].load("image_embeds")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print("ids equal", list(f["pil"].load("ids")) == list(f["device"].load("ids")),
          "skipped", list(f["device"].load("skipped_ids")), "min cos %.5f mean cos %.5f" % (cos.min(), cos.mean()))
PY
