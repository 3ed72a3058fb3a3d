"""Fine-tuning data: few-shot draws, the seeded batch stream, rrc, and the DataLoader path equal
to the in-memory path (same batches, same weights, resume mid-epoch)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from oodbench.config import load_catalogue
from oodbench.errors import OodbenchError
from oodbench.finetune import FinetuneConfig, describe_checkpoint, finetune
from oodbench.finetune.data import (
    EpochStream,
    TrainTransform,
    few_shot_rows,
    load_split,
    train_batches,
)
from oodbench.models import load_model
from oodbench.models.tiny import TINY_MODEL

FAST = {"pretrained": None, "steps": 3, "batch_size": 8, "eval_every": 3, "save_every": 3, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def digits():
    return load_catalogue().source("digits-id-train")


def test_few_shot_draw_is_golden_and_stratified(digits):
    ids, labels = digits.ids(), np.asarray(digits.labels())
    rows = few_shot_rows(ids, labels, 2, 0)
    # golden: the same on every machine and numpy/torch version (sha256 of "seed:id")
    assert rows == [7, 149, 187, 224, 311, 327, 340, 416, 431, 443]
    assert few_shot_rows(ids, labels, 1, 1) == [52, 88, 149, 286, 431]
    # the rule, re-implemented: per class, the K ids of smallest sha256("seed:id")
    for k, seed in ((4, 3), (16, 0)):
        got = few_shot_rows(ids, labels, k, seed)
        want = sorted(r for c in range(5) for r in sorted(np.flatnonzero(labels == c),
                      key=lambda r: hashlib.sha256(f"{seed}:{ids[r]}".encode()).digest())[:k])
        assert got == want
        assert np.bincount(labels[got]).tolist() == [k] * 5
    assert few_shot_rows(ids, labels, 2, 1) != rows
    with pytest.raises(OodbenchError, match="class 0 has only 89"):
        few_shot_rows(ids, labels, 90, 0)


def test_epoch_stream_covers_each_epoch_once():
    st = EpochStream(10, 4, seed=0)
    seen = torch.cat([st.batch(s) for s in range(5)])  # 20 positions = 2 epochs, batch 2 straddles them
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])
    assert torch.equal(EpochStream(10, 4, seed=0).batch(3), st.batch(3))  # a pure function of (seed, step)
    assert not torch.equal(EpochStream(10, 4, seed=1).batch(0), st.batch(0))


def test_rrc_crop_ranges_and_determinism(digits):
    pre = load_model(TINY_MODEL, pretrained=None).preprocess
    tf = TrainTransform(pre, "rrc", seed=0, scale=(0.5, 1.0))
    assert tf.size == 32 and tf.mean == (0.48145466, 0.4578275, 0.40821073)
    for s in range(200):
        g = torch.Generator().manual_seed(s)
        i, j, h, w = tf.rrc_params(64, 48, g)
        assert 0 <= i <= 48 - h and 0 <= j <= 64 - w
        assert 0.5 * 64 * 48 * 0.95 <= h * w <= 64 * 48  # rounding of the side lengths: a few %
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    img = digits.load(0)
    a, b, c = tf(img, 3, 1), tf(img, 3, 1), tf(img, 3, 2)
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    flips = [tf.rrc_params(8, 8, torch.Generator().manual_seed(s)) for s in range(50)]
    assert len(set(flips)) > 5


@pytest.mark.parametrize("augment", ["none", "rrc"])
def test_dataloader_batches_equal_in_memory(augment):
    cat = load_catalogue()
    pre = load_model(TINY_MODEL, pretrained=None).preprocess
    mem = load_split(cat, "digits-id-train", pre, shots=4, seed=0, keep_raw=augment == "rrc")
    big = load_split(cat, "digits-id-train", pre, shots=4, seed=0, max_in_memory=5, keep_raw=augment == "rrc")
    assert not mem.streaming and big.streaming and big.rows == mem.rows
    st, tf = EpochStream(len(mem), 6, 0), TrainTransform(pre, augment, 0)
    a = list(train_batches(mem, st, tf, 2, 6))
    b = list(train_batches(big, st, tf, 2, 6, workers=2))
    assert [s for s, _, _ in a] == [s for s, _, _ in b] == [2, 3, 4, 5]
    for (_, xa, ya), (_, xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_dataloader_path_trains_the_same_weights_and_resumes_mid_epoch(tmp_path):
    # 2 shots x 5 classes = 10 images, batch 4: 2.5 steps per epoch, so step 3 is mid-epoch 2
    cfg = dict(FAST, steps=5, batch_size=4, shots=2, save_every=1, eval_every=5)
    mem = finetune(FinetuneConfig("ft", **cfg), tmp_path / "mem")
    big = finetune(FinetuneConfig("ft", **cfg, max_in_memory=4, workers=2), tmp_path / "big")
    a = torch.load(mem.path, weights_only=True)["state_dict"]
    b = torch.load(big.path, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    part = finetune(FinetuneConfig("ft", **cfg, max_in_memory=4, workers=2), tmp_path / "res", stop_after=3)
    assert part.step == 3
    done = finetune(FinetuneConfig("ft", **cfg, max_in_memory=4, workers=1), tmp_path / "res")
    assert done.resumed_from == 3
    c = torch.load(done.path, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], c[k]) for k in a)
    meta = describe_checkpoint(mem.path)
    assert meta["config"]["shots"] == 2 and meta["train_images"] == 10 and meta["config"]["augment"] == "shift"


def test_augment_option_is_recorded_and_changes_training(tmp_path):
    runs = {a: finetune(FinetuneConfig("ft", **FAST, augment=a, name=a), tmp_path) for a in ("none", "rrc")}
    assert describe_checkpoint(runs["rrc"].path)["config"]["augment"] == "rrc"
    a = torch.load(runs["none"].path, weights_only=True)["state_dict"]
    b = torch.load(runs["rrc"].path, weights_only=True)["state_dict"]
    k = "visual.conv1.weight"
    assert not torch.equal(a[k], b[k])
    with pytest.raises(OodbenchError, match="augmentation"):
        FinetuneConfig("ft", augment="crop")
