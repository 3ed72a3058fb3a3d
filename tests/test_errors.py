"""Bad input: each gets one clear error (or a warning and a record), never a wrong file."""

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from oodbench import api
from oodbench.config import load_catalogue
from oodbench.errors import OodbenchError
from oodbench.models import load_model
from oodbench.store import FeatureFile, Store

DIGITS_YAML = """
datasets:
  train: {source: digits, digits: [0, 1], split: train}
  test: {source: digits, digits: [0, 1], split: test}
  weird: {source: imagefolder, root: "%s", ood: true}
benchmarks:
  tiny:
    classes: [zero, one]
    templates: ["a photo of the digit {}."]
    model: {name: oodbench-tiny, pretrained: digits}
    id: {train: train, test: test}
    ood: {far: [weird]}
"""


def test_malformed_yaml(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("benchmarks:\n  x: [unclosed\n")
    with pytest.raises(OodbenchError, match="not valid YAML at line"):
        load_catalogue(p)


def test_unknown_key_is_named_with_suggestion(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text((DIGITS_YAML % tmp_path).replace("templates:", "templtes:"))
    with pytest.raises(OodbenchError, match="Unknown key .*'templtes'.*Did you mean 'templates'"):
        load_catalogue(p)


def test_unknown_dataset_reference(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text((DIGITS_YAML % tmp_path).replace("far: [weird]", "far: [wierd]"))
    with pytest.raises(OodbenchError, match="'wierd'.*Did you mean 'weird'"):
        load_catalogue(p)


def test_missing_dataset_path(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text(DIGITS_YAML % (tmp_path / "nowhere"))
    cat = load_catalogue(p)
    with pytest.raises(OodbenchError, match="nowhere"):
        cat.source("weird")


def test_unreadable_images_are_skipped_and_recorded(tmp_path):
    folder = tmp_path / "imgs" / "x"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"ok{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "empty.jpg").write_bytes(b"")
    p = tmp_path / "b.yaml"
    p.write_text(DIGITS_YAML % (tmp_path / "imgs"))
    store = tmp_path / "store"
    key = api.extract(benchmark="tiny", benchmarks=p, store=store, datasets=["weird"], device="cpu")
    f = FeatureFile(Store(store).features_path(key, "weird"))
    assert len(f) == 3
    assert sorted(f.load("skipped_ids")) == ["x/broken.png", "x/empty.jpg"]


def test_checkpoint_that_does_not_fit(tmp_path):
    sd = load_model().model.state_dict()
    sd.pop("visual.proj")
    sd.pop("ln_final.weight")
    sd["visual.extra_thing"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(OodbenchError, match=r"2 missing .*1 unexpected"):
        load_model(ckpt=path)


def test_open_clip_training_checkpoint_round_trip(tmp_path):
    bundle = load_model()
    sd = {"module." + k: v for k, v in bundle.model.state_dict().items()}
    path = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": sd, "epoch": 1}, path)
    again = load_model(ckpt=path)
    assert again.fingerprint == bundle.fingerprint


def test_pickled_objects_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    code = (
        "import os, torch\n"
        "class E:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'state_dict': E()}}, '{evil}')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(OodbenchError, match="--trust-pickle"):
        load_model(ckpt=evil)
    assert not marker.exists()


def test_ood_features_from_another_model_are_refused(digits_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(digits_store["store"], store)
    f = Store(store).features_path(digits_store["key"], "noise-uniform")
    with h5py.File(f, "a") as h:
        h.attrs["model_fingerprint"] = "0" * 64
    with pytest.raises(OodbenchError, match="extracted with model fingerprint 000000000000"):
        api.score(["msp"], store=store)
