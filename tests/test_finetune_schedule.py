"""Fine-tuning schedules: warm-up + cosine against a hand computation, gradient accumulation
equal to one global batch, gradient clipping, epochs, and the best-on-ID-val checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from oodbench.errors import OodbenchError
from oodbench.finetune import FinetuneConfig, describe_checkpoint, finetune
from oodbench.finetune.soup import val_evaluator
from oodbench.finetune.trainer import Trainer, _schedule, accumulate_step

FAST = {"pretrained": None, "steps": 3, "batch_size": 16, "eval_every": 3, "save_every": 3, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("two_torch_threads")


def test_warmup_cosine_matches_hand_computation():
    # wise-ft / FLYP cosine_lr: lr (s+1)/W for s < W, then lr/2 (1 + cos(pi (s-W)/(S-W))); S=10, W=2
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = _schedule(opt, 10, 0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    hand = [1.0, 2.0, 2.0, 1.9238795, 1.7071068, 1.3826834, 1.0, 0.6173166, 0.2928932, 0.0761205]
    assert lrs == pytest.approx(hand, abs=1e-7)


def _grads(t, recipe, named, x, y, accum, clip=None):
    for _, p in named:
        p.grad = None
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss = accumulate_step(t, recipe, None, x, y, accum, scaler, named, clip)
    return loss, [p.grad.detach().clone() for _, p in named]


def test_accumulation_equals_one_global_batch_and_clipping(tmp_path):
    cfg = FinetuneConfig("ft", **FAST, augment="none")
    t = Trainer(cfg, tmp_path)
    train, val = t.data()
    recipe = t.make_recipe(train, val)
    named = recipe.named_parameters()
    x, y = train.batch(torch.arange(16))
    t.model.train()
    l1, g1 = _grads(t, recipe, named, x, y, 1)
    l2, g2 = _grads(t, recipe, named, x, y, 2)
    l4, g4 = _grads(t, recipe, named, x, y, 4)
    # a weight's gradient is a float32 sum over the n = B x T (samples x tokens) per-token terms;
    # regrouping it (2 or 4 micro-batches) moves it by at most Higham's (n - 1) u sum|terms|, u = 2^-24;
    # we take sum|terms| ~ max|g| of that tensor (terms of one sign dominate). Measured: ~26 u.
    # A wrong accumulation (unweighted micro-batch means: x accum) is off by 100 %.
    patch = t.model.visual.conv1.kernel_size[0]
    n = 16 * ((32 // patch) ** 2 + 1)
    for g in (g2, g4):
        for a, b in zip(g1, g, strict=True):
            assert float((a - b).abs().max()) <= n * 2**-24 * float(a.abs().max())
    assert abs(l1 - l2) <= 16 * 2**-24 * l1 and abs(l1 - l4) <= 16 * 2**-24 * l1  # a mean of 16 losses
    # clipping bounds the global norm (what clip_grad_norm_ computes) by the threshold
    _, gc = _grads(t, recipe, named, x, y, 2, clip=1e-3)
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in gc))
    full = math.sqrt(sum(float(g.pow(2).sum()) for g in g1))
    assert full > 1e-2 and norm == pytest.approx(1e-3, rel=1e-4)


def test_epochs_and_keep_best(tmp_path):
    cfg = FinetuneConfig("ft", **{**FAST, "steps": 1}, epochs=1.5, shots=4, lr=3e-3)  # 20 images, batch 16: ceil(1.875) = 2 steps
    assert cfg.total_steps(20) == 1 + 1
    run = finetune(FinetuneConfig("ft", pretrained="auto", steps=4, batch_size=8, eval_every=1, save_every=4,
                                  device="cpu", lr=3e-4, warmup=0.0, keep_best=True), tmp_path)
    meta = describe_checkpoint(run.path)
    accs = [h["val_accuracy"] for h in meta["history"]]
    best = max(range(len(accs)), key=lambda i: accs[i])  # the first evaluation with the highest accuracy
    assert meta["best_step"] == meta["history"][best]["step"] and meta["final_step"] == 4
    assert meta["val_accuracy"] == pytest.approx(accs[best], abs=1e-6)
    state = torch.load(run.path, weights_only=True)["state_dict"]
    assert val_evaluator(meta)(state) == pytest.approx(accs[best], abs=1e-6)  # the exported weights are the best's
    assert meta["best_step"] < 4  # here ID val accuracy peaks (1.0) at step 2: the export is not the last step
    last = torch.load(tmp_path / "ft.state.pt", weights_only=True)
    k = "visual.conv1.weight"
    assert torch.equal(state[k], last["best"]["model"][k]) and not torch.equal(state[k], last["model"][k])
    ep = finetune(cfg, tmp_path / "ep")
    assert ep.step == 2 and describe_checkpoint(ep.path)["total_steps"] == 2


def test_a_finished_epoch_run_is_not_retrained_silently(tmp_path):
    """An --epochs run finishes at its own step count (not cfg.steps): rerunning it without resume
    is refused as already trained instead of training again over the finished checkpoint."""
    cfg = FinetuneConfig("ft", **{**FAST, "steps": 50}, epochs=1.5, shots=4, lr=3e-3)  # 2 steps, not 50
    first = finetune(cfg, tmp_path)
    assert first.step == 2 < cfg.steps
    before = first.path.read_bytes()
    with pytest.raises(OodbenchError, match="already trained"):
        finetune(cfg, tmp_path, resume=False)
    assert first.path.read_bytes() == before
