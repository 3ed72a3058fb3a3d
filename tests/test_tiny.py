"""The offline world's tiny CLIP: training runs, saves a plain state dict, loads strictly."""

import json

import torch

from oodbench.models import load_model
from oodbench.models.tiny import TINY_MODEL, _shift, build_untrained, train_tiny


def test_short_training_saves_a_loadable_state_dict(tmp_path):
    path = train_tiny(steps=5, batch_size=16, out=tmp_path / "tiny.pt")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["steps"] == 5 and 0.0 <= meta["zero_shot_val_accuracy_0to9"] <= 1.0
    sd = torch.load(path, weights_only=True)
    model, _, _ = build_untrained()
    model.load_state_dict(sd, strict=True)
    bundle = load_model(TINY_MODEL, None, ckpt=path)
    assert bundle.label == "tiny" and len(bundle.fingerprint) == 64


def test_training_is_seeded(tmp_path):
    a = torch.load(train_tiny(steps=3, batch_size=8, out=tmp_path / "a.pt"), weights_only=True)
    b = torch.load(train_tiny(steps=3, batch_size=8, out=tmp_path / "b.pt"), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shift_moves_pixels():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 2, 2] = 1.0
    y = _shift(x, 2, torch.Generator().manual_seed(3))
    assert y.shape == x.shape and y.sum() <= 1.0
