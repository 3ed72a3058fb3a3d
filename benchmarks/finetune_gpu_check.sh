#!/usr/bin/env bash
# The GPU checks of issue 6 (fine-tuning), as one script for a lent GPU machine.
# Needs: .whl (open_clip_torch, ftfy, wcwidth wheels) and .gpucache (the cached tiny model) carried.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD OODBENCH_CACHE=$PWD/.gpucache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python3 benchmarks/finetune_gpu_check.py --out /tmp/ft_gpu 2>&1 | grep -v "━" | tee $OUT/check.txt
cp /tmp/ft_gpu/gpu_check.json $OUT/ 2>/dev/null
# the whole digits study on the GPU (training and extraction on CUDA), timed
( time python3 benchmarks/study_digits.py --out /tmp/study_gpu --store /tmp/store_gpu --device cuda --threads 16 ) 2>&1 \
    | grep -v "━" | tail -40 | tee $OUT/study_gpu.txt
cp /tmp/study_gpu/study_summary.md /tmp/study_gpu/acc_vs_auroc_digits_near.png $OUT/ 2>/dev/null
