"""torchrun fine-tuning: two CPU ranks (gloo) with the same global batch train the weights one process does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from oodbench.finetune import FinetuneConfig, describe_checkpoint, finetune

LR, STEPS = 1e-4, 3


@pytest.mark.parametrize("recipe", ["ft", "flyp"])  # flyp: the contrastive loss over features gathered from all ranks
def test_two_ranks_equal_one_process(tmp_path, recipe):
    cfg = dict(steps=STEPS, batch_size=16, lr=LR, eval_every=STEPS, save_every=STEPS, device="cpu")
    one = finetune(FinetuneConfig(recipe, **cfg), tmp_path / "one")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + os.getpid() % 1000), "-m", "oodbench", "finetune", recipe, "--steps", str(STEPS),
           "--batch-size", "16", "--lr", str(LR), "--device", "cpu", "--out", str(tmp_path / "two")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    meta = describe_checkpoint(tmp_path / "two" / f"{recipe}.pt")
    assert meta["world_size"] == 2 and meta["identity"] == describe_checkpoint(one.path)["identity"]
    a = torch.load(one.path, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / f"{recipe}.pt", weights_only=True)["state_dict"]
    # The ranks' summed gradients equal one process's up to float32 regrouping (|rel. error| ~ 1e-6,
    # see test_accumulation_equals_one_global_batch_and_clipping). AdamW normalises each coordinate's
    # step: |step| <= lr x |m/sqrt(v)| <= lr x 1 at step 1 and <= lr x (1-b1)/sqrt(1-b2) ~ 3.2 lr later,
    # so coordinates whose gradient is ~0 (sign set by rounding) can differ by at most 2 x 3.2 lr per
    # step; every other coordinate moves by ~ lr x rel. error. Both bounds are checked.
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a if a[k].is_floating_point()])
    assert float(diffs.max()) <= STEPS * 2 * 3.2 * LR
    assert float(diffs.quantile(0.999)) <= STEPS * LR * 1e-3
    # AdamW is blind to a global gradient scale: the logged loss (the ranks' shares summed, the same
    # weights as their backward) checks that each rank weighs its half by 1/2 (rel. error ~ 16 u)
    la, lb = describe_checkpoint(one.path)["history"][-1]["loss"], meta["history"][-1]["loss"]
    assert abs(la - lb) <= 1e-5 * abs(la) + 1e-6  # history rounds losses to 6 decimals
    moved = torch.cat([(a[k] - v).abs().flatten() for k, v in _base().items() if k in a and v.is_floating_point()])
    assert float(moved.max()) > LR  # training did move the weights (the comparison is not vacuous)


def _base():
    from oodbench.models import load_model

    return load_model().model.state_dict()
