"""The shipped catalogue reads the data trees as upstream lays them out (OpenOOD v1.5's download
script, MCM's README), with the expected row counts of the upstream lists.

Trees are built in a temp dir with placeholder images at the upstream paths; the real OpenOOD
lists (the shared data folder) are used when present.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oodbench.config import load_catalogue
from oodbench.errors import OodbenchError

REPO = Path(__file__).resolve().parents[1]
IMGLISTS = next((p for p in (REPO.parent / "shared" / "data" / "imglists", Path("/work/shared/data/imglists"))
                 if p.is_dir()), None)

# lines of OpenOOD v1.5's benchmark_imglist/imagenet lists (OpenOOD's published counts)
OPENOOD_V15_ROWS = {
    "openood-imagenet-test": 45000, "openood-imagenet-val": 5000, "openood-ssb-hard": 49000,
    "openood-ninco": 5879, "openood-inaturalist": 10000, "openood-textures": 5160,
    "openood-openimage-o": 15869, "openood-openimage-o-val": 1763,
}


def placeholder(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None)


def test_openood_expected_rows_are_in_the_catalogue():
    cat = load_catalogue()
    assert {d: cat.datasets[d].get("expected_rows") for d in OPENOOD_V15_ROWS} == OPENOOD_V15_ROWS
    assert cat.source("digits-id-test").expected_rows is None  # not stated: no check


def test_openood_textures_live_under_images_classic(tmp_path):
    """OpenOOD's download.py puts 'texture' in images_classic/, the ImageNet sets in
    images_largescale/; the lists name paths relative to those folders."""
    data = tmp_path / "data"
    lists = data / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    (lists / "test_textures.txt").write_text("texture/banded/banded_0002.jpg -1\ntexture/zigzagged/zigzagged_0009.jpg -1\n")
    (lists / "test_ninco.txt").write_text("ninco/amphiuma_means/amphiuma_means_000_1.jpeg -1\n")
    placeholder(data / "images_classic" / "texture" / "banded" / "banded_0002.jpg")
    placeholder(data / "images_classic" / "texture" / "zigzagged" / "zigzagged_0009.jpg", 1)
    placeholder(data / "images_largescale" / "ninco" / "amphiuma_means" / "amphiuma_means_000_1.jpeg", 2)
    cat = load_catalogue()
    textures = cat.source("openood-textures", data_root=data)
    assert textures.root == data / "images_classic"
    assert [textures.load(i).size for i in range(2)] == [(10, 10), (10, 10)]
    assert cat.source("openood-ninco", data_root=data).load(0).size == (10, 10)


@pytest.mark.skipif(IMGLISTS is None, reason="the real image lists are not available")
@pytest.mark.parametrize(("dataset", "listed", "filename"), [
    ("openood-textures", "test_textures.txt", "openood_v1.5_imagenet_test_textures.txt"),
    ("openood-ninco", "test_ninco.txt", "openood_v1.5_imagenet_test_ninco.txt"),
    ("openood-imagenet-val", "val_imagenet.txt", "openood_v1.5_imagenet_val_imagenet.txt"),
])
def test_real_openood_lists_have_the_expected_rows(tmp_path, dataset, listed, filename):
    lists = tmp_path / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    shutil.copy(IMGLISTS / filename, lists / listed)
    (tmp_path / "images_classic").mkdir()
    (tmp_path / "images_largescale").mkdir()
    source = load_catalogue().source(dataset, data_root=tmp_path)
    assert len(source) == source.expected_rows == OPENOOD_V15_ROWS[dataset]


def mcm_tree(root: Path) -> None:
    """MCM's datasets/ folder: ImageNet/{train,val}/<wnid>/, ImageNet_OOD_dataset/{iNaturalist,
    SUN,Places}/images/ (the MOS tarballs) and ImageNet_OOD_dataset/dtd/images/<texture>/."""
    for split in ("train", "val"):
        for k, wnid in enumerate(("n01440764", "n01443537")):
            placeholder(root / "ImageNet" / split / wnid / f"ILSVRC2012_{split}_{k}.JPEG", k)
    for name in ("iNaturalist", "SUN", "Places"):
        for k in range(3):
            placeholder(root / "ImageNet_OOD_dataset" / name / "images" / f"{name.lower()}_{k}.jpg", k)
    for texture in ("banded", "zigzagged"):
        placeholder(root / "ImageNet_OOD_dataset" / "dtd" / "images" / texture / f"{texture}_0001.jpg")


def test_imagenet_mcm_reads_mcms_own_layout(tmp_path):
    mcm_tree(tmp_path / "datasets")
    cat = load_catalogue()
    bench = cat.benchmark("imagenet-mcm")
    sizes = {}
    for d in bench.splits():
        src = cat.source(d, data_root=tmp_path / "datasets")
        src.load(len(src) - 1)
        sizes[d] = (len(src), sorted(set(src.labels().tolist())))
    assert sizes == {"imagenet-train": (2, [0, 1]), "imagenet-val": (2, [0, 1]), "inaturalist-mos": (3, [-1]),
                     "sun-mos": (3, [-1]), "places-mos": (3, [-1]), "dtd": (2, [-1])}


def test_imagenet_mcm_missing_folder_names_where_it_looked(tmp_path):
    mcm_tree(tmp_path)
    shutil.rmtree(tmp_path / "ImageNet_OOD_dataset" / "SUN")
    with pytest.raises(OodbenchError, match=r"benchmarks\.yaml: .*ImageNet_OOD_dataset/SUN.*SUN\.tar\.gz"):
        load_catalogue().source("sun-mos", data_root=tmp_path)


def test_relative_data_root_is_joined_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mcm_tree(tmp_path / "data" / "root")
    src = load_catalogue().source("dtd", data_root="data/root")
    assert src.root == tmp_path / "data" / "root" / "ImageNet_OOD_dataset" / "dtd" / "images"
    monkeypatch.setenv("OODBENCH_DATA", "data/root")
    assert load_catalogue().source("dtd").root == src.root
