"""Extraction faults and scale-out: kill -9 and resume, torchrun shards, ResNet towers."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from oodbench.extract import ResNetFeatures, feature_net, parse_layers
from oodbench.store import FeatureFile, Store

DATASET = "digits-5to9"
KEYS = ("image_embeds", "penultimate", "labels", "ids", "layers/cls")


def _extract_cmd(store, *extra):
    return [sys.executable, "-m", "oodbench", "extract", "-b", "digits", "--dataset", DATASET,
            "--store", str(store), "--device", "cpu", "--layers", "all", *extra]


def _file(store):
    st = Store(store)
    (key,) = st.model_keys()
    return FeatureFile(st.features_path(key, DATASET))


def _assert_same(out, reference):
    for k in KEYS:
        a, b = out.load(k), reference.load(k)
        if a.dtype.kind == "O":
            assert list(a) == list(b), k
        else:
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, _cache):
    store = tmp_path_factory.mktemp("ref")
    subprocess.run(_extract_cmd(store), check=True, capture_output=True)
    return _file(store)


def test_kill_9_then_resume_equals_uninterrupted(tmp_path, reference):
    """SIGKILL an extract at random points while it writes, then rerun: same file as a clean run."""
    rng = random.Random(0)
    store = tmp_path / "store"
    killed_mid_write = 0
    for _ in range(3):
        proc = subprocess.Popen(_extract_cmd(store, "--batch-size", "8"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and not list(store.glob("*/features/*.partial")) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_write += 1
        proc.wait()
    assert killed_mid_write >= 1  # at least one run was really interrupted while writing
    subprocess.run(_extract_cmd(store, "--batch-size", "8"), check=True, capture_output=True)
    _assert_same(_file(store), reference)


def test_torchrun_two_ranks_equal_one_process(tmp_path, reference):
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), "-m", "oodbench", "extract", "-b", "digits", "--dataset", DATASET,
           "--store", str(store), "--device", "cpu", "--layers", "all"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    out = _file(store)
    assert out.attrs["merged_from_shards"] == 2
    ids = list(out.load("ids"))
    assert len(ids) == len(set(ids)) == len(reference)
    _assert_same(out, reference)
    assert out.attrs["sample_fingerprint"] == reference.attrs["sample_fingerprint"]
    assert not list((Store(store).root).glob("*/features/*shard*"))


NO_IMAGES = """
version: 1
datasets:
  train: {source: digits, digits: [0, 1], split: train}
  test: {source: digits, digits: [0, 1], split: test}
  gone: {source: imglist, list: imgs.txt, root: "${data_root}/imgs", ood: true}
benchmarks:
  tiny:
    classes: [zero, one]
    templates: ["a photo of the digit {}."]
    model: {name: oodbench-tiny, pretrained: digits}
    id: {train: train, test: test}
    ood: {far: [gone]}
"""


def test_torchrun_dataset_with_no_readable_image_is_an_error_on_every_rank(tmp_path):
    """Each rank's shard is empty: the ranks agree (all_reduce), exit non-zero, none hangs, no file."""
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "data" / "imgs" / "b.png").write_bytes(b"not a png")
    (tmp_path / "imgs.txt").write_text("".join(f"{n} -1\n" for n in ["a.png", "b.png", "c.png", "d.png"]))
    (tmp_path / "b.yaml").write_text(NO_IMAGES)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(30500 + os.getpid() % 1000), "-m", "oodbench", "extract", "--benchmarks", str(tmp_path / "b.yaml"),
           "-b", "tiny", "--dataset", "gone", "--data-root", str(tmp_path / "data"), "--store", str(store),
           "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode != 0
    flat = "".join(res.stderr.split())  # the console wraps long lines
    assert flat.count("error:Dataset'gone':noneofits4imagescouldberead(3missing,1undecodable)") == 2, \
        res.stderr[-2000:]
    workers = res.stderr.split("failed (exitcode: 1)")[0]  # after it: torchrun's own ChildFailedError report
    assert "Traceback" not in workers and "ChildFailedError" in res.stderr
    assert not [f for f in store.rglob("features/*") if not f.name.endswith(".lock")]


def test_resnet_tower_features():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("RN50").eval()
    net = feature_net(model.visual, "all", False)
    assert isinstance(net, ResNetFeatures)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = net(x)
        ref = model.encode_image(x)
    np.testing.assert_allclose(out["image_embeds"].numpy(), ref.numpy(), atol=1e-4)
    layout = net.layout(np.float32)
    assert {k: v[0] for k, v in layout.items()} == {k: tuple(v.shape[1:]) for k, v in out.items()}
    assert layout["penultimate"][0] == (2048,) and layout["layers/stage0"][0] == (256,)


def test_parse_layers():
    assert parse_layers("all", 3) == [0, 1, 2]
    assert parse_layers("0,-1", 12) == [0, 11]
    with pytest.raises(Exception, match="blocks 0..2"):
        parse_layers("5", 3)
