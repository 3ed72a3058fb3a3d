"""ImageNet shift-set catalogue entries (issue 18): the 200-class subsets, the list and folder
layouts with placeholder images, and the masking of the logits to a subset."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from oodbench.config import load_catalogue
from oodbench.engine import head_outcomes
from oodbench.metrics import predictions_correct

REPO = Path(__file__).resolve().parents[1]
IMGLISTS = next((p for p in (Path(os.environ.get("OODBENCH_IMGLISTS", "/nonexistent")),
                             REPO.parent / "shared" / "data" / "imglists", Path("/work/shared/data/imglists"))
                 if p.is_dir()), None)
R_LIST = "openood_v1.5_imagenet_test_imagenet_r.txt"
needs_lists = pytest.mark.skipif(IMGLISTS is None, reason="the shared real image lists are not here")


def _pairs(name: str) -> list[tuple[str, int]]:
    rows = [ln.split() for ln in (IMGLISTS / name).read_text().splitlines() if ln.strip()]
    return [(p, int(lab)) for p, lab in rows]


def _placeholder(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (120, 60, 30)).save(path)


def test_named_subsets_are_wiseft_lists():
    bench = load_catalogue().benchmark("imagenet-shift")
    r, a = bench.shift["imagenet-r"].classes, bench.shift["imagenet-a"].classes
    assert len(r) == len(set(r)) == 200 and len(a) == len(set(a)) == 200
    assert r == sorted(r) and a == sorted(a) and max(r + a) < 1000
    # spot checks against WiSE-FT's CLASS_SUBLISTs (first, last, a middle entry)
    assert (r[0], r[100], r[-1]) == (1, 355, 988) and (a[0], a[100], a[-1]) == (6, 496, 988)
    assert bench.shift["imagenet-sketch"].classes is None
    fs = load_catalogue().benchmark("imagenet-openood-v1.5-fs").shift
    assert list(fs) == ["openood-imagenet-v2", "openood-imagenet-r", "openood-imagenet-c"]
    assert fs["openood-imagenet-r"].classes == r and fs["openood-imagenet-r"].labels == "benchmark"


@needs_lists
def test_openood_imagenet_r_list_covers_exactly_the_wiseft_subset():
    labels = {lab for _, lab in _pairs(R_LIST)}
    assert sorted(labels) == load_catalogue().benchmark("imagenet-shift").shift["imagenet-r"].classes


@needs_lists
def test_layouts_with_placeholder_images_and_subset_masking(tmp_path):
    """OpenOOD's list layout and the imagenet-r/ folder tree, both with placeholder images for
    the real ImageNet-R file names: the same image gets the same ImageNet-1k class either way."""
    cat = load_catalogue()
    pairs = _pairs(R_LIST)
    one_per_class = list({lab: (p, lab) for p, lab in pairs}.values())  # one image of each class
    lists = tmp_path / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    (lists / "test_imagenet_r.txt").write_text("".join(f"{p} {lab}\n" for p, lab in one_per_class))
    for p, _ in one_per_class:
        _placeholder(tmp_path / "images_largescale" / p)  # OpenOOD: images_largescale/imagenet_r/<wnid>/..
        _placeholder(tmp_path / "imagenet-r" / Path(p).relative_to("imagenet_r"))  # the authors' tree
    listed = cat.source("openood-imagenet-r", data_root=tmp_path)
    folder = cat.source("imagenet-r", data_root=tmp_path)
    assert len(listed.ids()) == len(folder.ids()) == 200
    assert np.asarray(listed.load(0)).shape == (4, 4, 3)
    by_file = dict(zip(listed.ids(), listed.labels(), strict=True))
    sub = cat.benchmark("imagenet-shift").shift["imagenet-r"]
    # folder labels are positions in the sorted subset folders; mapped through the subset they
    # are the list's ImageNet-1k labels
    for rel, j in zip(folder.ids(), folder.labels(), strict=True):
        assert sub.classes[j] == by_file[f"imagenet_r/{rel}"]
    # masking: random 1000-class logits; the argmax over the subset (WiSE-FT) vs over all classes
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 1000))
    sets = {"listed": (listed.labels(), cat.benchmark("imagenet-openood-v1.5-fs").shift["openood-imagenet-r"]),
            "folder": (folder.labels(), sub)}
    for name, (labels, spec) in sets.items():
        x = SimpleNamespace(logits=logits, labels=labels)
        run = SimpleNamespace(test=x, shift={name: x}, benchmark=SimpleNamespace(shift={name: spec}),
                              head=SimpleNamespace(name="zeroshot"))
        correct, conf = head_outcomes(run)[name]
        truth = np.asarray([by_file[f] for f in listed.ids()]) if name == "listed" else \
            np.asarray([by_file[f"imagenet_r/{r}"] for r in folder.ids()])
        masked = logits[:, sub.classes]
        expected = np.asarray(sub.classes)[masked.argmax(1)] == truth
        np.testing.assert_array_equal(correct == 1, expected)
        np.testing.assert_array_equal(correct == 1, predictions_correct(logits, truth, np.asarray(sub.classes)))
        p = np.exp(masked - masked.max(1, keepdims=True))
        np.testing.assert_allclose(conf, (p / p.sum(1, keepdims=True)).max(1), rtol=1e-12)
    assert expected.sum() > (logits.argmax(1) == truth).sum()  # the mask matters on random logits
