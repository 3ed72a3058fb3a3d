#!/usr/bin/env bash
# The GPU checks of issue 3, as one script for a lent GPU machine (see benchmarks/RESULTS.md).
# Needs: .whl (open_clip_torch, ftfy, wcwidth wheels) and .gpucache (the cached tiny model) carried.
# A dry run on a CPU machine (checks the script, not the GPU): DEV=cpu PREC=fp32 N=64 N3=32 BS=16 W=2 SKIP1=1 PY=.venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DEV=${DEV:-cuda}; N=${N:-8192}; N3=${N3:-512}; PY=${PY:-python3}
PREC=${PREC:-fp16}; BS=${BS:-256}; W=${W:-14}
if [ "$DEV" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD OODBENCH_CACHE=$PWD/.gpucache
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 DEV N3 PREC
$PY -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)" | tee -a $OUT/gpu.txt
nproc | tee -a $OUT/gpu.txt
# 1. CUDA extraction (fp16 autocast) agrees with CPU fp32 on the digits world
if [ -z "${SKIP1:-}" ]; then
$PY -m oodbench extract -b digits --store /tmp/st_cpu --device cpu --layers all --local > /dev/null 2>&1
$PY -m oodbench extract -b digits --store /tmp/st_gpu --device cuda --layers all --local > /dev/null 2>&1
$PY - <<'PY' | tee $OUT/cuda_vs_cpu.txt
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
fi
# 2. ViT-B/16 fp16 throughput: JPEG files -> extract (basic / all features / --decode device) vs plain loop
#    vs model only
$PY benchmarks/extract_throughput.py --model ViT-B-16 --device $DEV --precision $PREC --n $N \
    --batch-size $BS --workers $W --repeats 2 --out $OUT/vitb16_fp16.json 2>&1 | grep -v "━"
# 3. --decode device on CUDA (nvJPEG) against the Pillow path: same ids and skips, features close
$PY - <<'PY' | tee $OUT/decode_device_cuda.txt
import os, tempfile, numpy as np
from pathlib import Path
from benchmarks.extract_throughput import make_jpegs
from oodbench.data import build_source
from oodbench.extract import ExtractOptions, extract_dataset
from oodbench.models import load_model
from oodbench.store import FeatureFile
dev, n = os.environ["DEV"], int(os.environ["N3"])
bundle = load_model("ViT-B-16", None, device=dev)
with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp); make_jpegs(root / "jpg", n, (500, 375))
    (root / "jpg" / "x" / "empty.jpg").write_bytes(b"")
    src = build_source({"source": "imagefolder", "root": str(root / "jpg"), "ood": True}, name="b")
    f = {}
    for dec in ("pil", "device"):
        o = ExtractOptions(batch_size=128, workers=8, device=dev, precision=os.environ["PREC"], decode=dec)
        f[dec] = FeatureFile(extract_dataset(bundle, src, root / f"{dec}.h5", o, "b"))
    a, b = f["pil"].load("image_embeds"), f["device"].load("image_embeds")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print("ids equal", list(f["pil"].load("ids")) == list(f["device"].load("ids")),
          "skipped", list(f["device"].load("skipped_ids")), "min cos %.5f mean cos %.5f" % (cos.min(), cos.mean()))
PY
