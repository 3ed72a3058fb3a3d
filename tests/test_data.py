"""Tests of oodbench.data: every source kind, spec validation and robust image loading."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from oodbench.data import (
    SOURCE_KINDS,
    DigitsSource,
    NoiseSource,
    TexturesSource,
    UnreadableImage,
    build_source,
    load_image,
)
from oodbench.data.digits import digits_data, split_assignment
from oodbench.data.synthetic import TEXTURE_FAMILIES
from oodbench.errors import OodbenchError

REPO = Path(__file__).resolve().parents[1]
# The real OpenOOD / MOS lists: the project's shared data folder beside the checkout (as laid out
# for developers and CI), or $OODBENCH_IMGLISTS.
IMGLISTS = next(
    (
        p
        for p in (
            Path(os.environ.get("OODBENCH_IMGLISTS", "/nonexistent")),
            REPO.parent / "shared" / "data" / "imglists",
            Path("/work/shared/data/imglists"),
        )
        if p.is_dir()
    ),
    None,
)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


# --- load_image -------------------------------------------------------------------------------


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (6, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.info["transparency"] = 0  # palette entry 0 (red) is fully transparent
    return image


def _cmyk() -> Image.Image:
    return Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # pure red in CMYK


IMAGE_KINDS = {
    "L.png": (lambda: Image.new("L", (6, 4), 200), {}),
    "1.png": (lambda: Image.new("1", (6, 4), 1), {}),
    "P.png": (lambda: Image.new("RGB", (6, 4), (10, 200, 30)).convert("P"), {}),
    "P-transparent.png": (_palette_with_transparency, {}),
    "P-transparent.gif": (_palette_with_transparency, {}),
    "CMYK.jpg": (_cmyk, {}),
    "CMYK.tiff": (_cmyk, {}),
    "I16.png": (lambda: Image.fromarray(np.full((4, 6), 40000, np.uint16)), {}),
    "I32.tiff": (lambda: Image.fromarray(np.full((4, 6), 40000, np.int32)), {}),
    "LA.png": (lambda: Image.new("LA", (6, 4), (100, 255)), {}),
    "RGBA.png": (lambda: Image.new("RGBA", (6, 4), (0, 0, 255, 255)), {}),
    "RGB.jpg": (lambda: Image.new("RGB", (6, 4), (0, 128, 0)), {}),
    "RGB.webp": (lambda: Image.new("RGB", (6, 4), (0, 128, 0)), {}),
    "RGB.bmp": (lambda: Image.new("RGB", (6, 4), (0, 128, 0)), {}),
}


@pytest.mark.parametrize("filename", sorted(IMAGE_KINDS))
def test_load_image_gives_rgb_of_the_right_size(tmp_path, filename):
    make, kwargs = IMAGE_KINDS[filename]
    path = _save(make(), tmp_path / filename, **kwargs)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (6, 4)


def test_load_image_composites_transparency_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (255, 0, 0, 0))  # fully transparent red -> white
    image = load_image(_save(rgba, tmp_path / "a.png"))
    assert _pixels(image).tolist() == [[[0, 0, 255], [255, 255, 255]]]

    palette = load_image(_save(_palette_with_transparency(), tmp_path / "p.png"))
    assert _pixels(palette)[0, 0].tolist() == [0, 0, 255]  # opaque palette entry 1
    assert _pixels(palette)[1, 1].tolist() == [255, 255, 255]  # transparent entry 0

    la = load_image(_save(Image.new("LA", (1, 1), (0, 0)), tmp_path / "la.png"))
    assert _pixels(la).tolist() == [[[255, 255, 255]]]


def test_load_image_scales_16_bit_instead_of_clipping(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)  # 32896 = 128 * 257
    image = load_image(_save(Image.fromarray(values), tmp_path / "g16.png"))
    assert _pixels(image)[0, :, 0].tolist() == [0, 128, 255]
    assert (_pixels(image) == _pixels(image)[..., :1]).all()  # gray: R = G = B

    wide = np.array([[0, 32896, 65535]], dtype=np.int32)
    image = load_image(_save(Image.fromarray(wide), tmp_path / "g32.tiff"))
    assert _pixels(image)[0, :, 0].tolist() == [0, 128, 255]


def test_load_image_converts_cmyk_colours(tmp_path):
    image = load_image(_save(_cmyk(), tmp_path / "c.tiff"))
    assert _pixels(image)[0, 0].tolist() == [255, 0, 0]


def test_load_image_ignores_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(Image.new("RGB", (6, 4), "green"), tmp_path / "rot.jpg", exif=exif)
    with Image.open(path) as raw:
        assert raw.getexif()[0x0112] == 6
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (6, 4)  # stored orientation, like torchvision


def _truncated_jpeg(path: Path) -> None:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _truncated_png(path: Path) -> None:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


BROKEN = {
    "empty.jpg": lambda p: p.write_bytes(b""),
    "corrupt.jpg": lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4),
    "text.png": lambda p: p.write_text("not an image"),
    "truncated.jpg": _truncated_jpeg,
    "truncated.png": _truncated_png,
    "missing.jpg": lambda p: None,
}


@pytest.mark.parametrize("filename", sorted(BROKEN))
def test_load_image_refuses_broken_files(tmp_path, monkeypatch, filename):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)  # Pillow's default
    path = tmp_path / filename
    BROKEN[filename](path)
    with pytest.raises(UnreadableImage, match=filename):
        load_image(path)


# --- build_source: spec validation ------------------------------------------------------------


def test_source_kinds():
    assert SOURCE_KINDS == (
        "digits", "textures", "noise", "shifted_digits", "imglist", "imagefolder", "torchvision"
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"digits": [1]}, r"'ds' needs a 'source' key, one of: digits, textures"),
        ({"source": "digitz"}, r"Unknown source for dataset 'ds': 'digitz'. Did you mean 'digits'"),
        (
            {"source": "digits", "splt": "test"},
            r"Unknown key for digits dataset 'ds': 'splt'. Did you mean 'split'\? "
            r"Available: digits, ood, seed, source, split\.",
        ),
        ({"source": "imglist"}, r"Dataset 'ds' \(imglist\) is missing the required key 'list'"),
        ({"source": "digits", "split": "tst"}, r"key 'split' must be one of train, val, test, all"),
        ({"source": "digits", "digits": [1, 1]}, r"'digits' must be a non-empty list of distinct"),
        ({"source": "digits", "digits": [10]}, r"'digits' must be .* integers 0-9, got \[10\]"),
        ({"source": "digits", "ood": "yes"}, r"key 'ood' must be true or false, got 'yes'"),
        ({"source": "noise", "n": 0}, r"key 'n' must be an integer >= 1, got 0"),
        ({"source": "noise", "size": 2.5}, r"key 'size' must be an integer >= 4"),
        ({"source": "noise", "kind": "pink"}, r"key 'kind' must be one of uniform, gaussian"),
        (
            {"source": "textures", "families": ["grate"]},
            r"texture family .* Did you mean 'grating'",
        ),
        (
            {"source": "torchvision", "dataset": "cifar", "split": "test"},
            r"Unknown torchvision dataset for 'ds': 'cifar'. Did you mean 'cifar10'",
        ),
        (
            {"source": "torchvision", "dataset": "CIFAR10", "split": "val"},
            r"key 'split' must be one of train, test, got 'val'",
        ),
    ],
)
def test_bad_specs_give_one_line_errors_naming_dataset_and_key(spec, expected):
    with pytest.raises(OodbenchError, match=expected) as error:
        build_source(spec, name="ds")
    assert "\n" not in str(error.value)


def test_underscore_keys_are_internal_and_ignored():
    source = build_source({"source": "noise", "n": 3, "_base_dir": "/x"}, name="n")
    assert len(source) == 3


def test_describe_is_json_and_names_kind_and_parameters():
    source = build_source({"source": "textures", "n": 7, "size": 16, "seed": 3}, name="tex")
    description = json.loads(json.dumps(source.describe()))
    assert description == {
        "name": "tex",
        "kind": "textures",
        "num_samples": 7,
        "n": 7,
        "seed": 3,
        "size": 16,
        "families": list(TEXTURE_FAMILIES),
    }


def test_fingerprint_is_sha256_of_the_id_label_lines():
    source = build_source({"source": "digits", "digits": [3, 1], "split": "val"}, name="d")
    lines = b"".join(
        json.dumps([i, int(label)]).encode() + b"\n"
        for i, label in zip(source.ids(), source.labels(), strict=True)
    )
    assert source.fingerprint() == hashlib.sha256(lines).hexdigest()
    ood = build_source(
        {"source": "digits", "digits": [3, 1], "split": "val", "ood": True}, name="d"
    )
    swapped = build_source({"source": "digits", "digits": [1, 3], "split": "val"}, name="other")
    assert len({source.fingerprint(), ood.fingerprint(), swapped.fingerprint()}) == 3


def test_sources_pickle_for_dataloader_workers():
    for source in (DigitsSource("d", split="val"), TexturesSource("t", n=4), NoiseSource("n", n=2)):
        clone = pickle.loads(pickle.dumps(source))
        assert clone.ids() == source.ids()
        assert np.array_equal(_pixels(clone.load(1)), _pixels(source.load(1)))


def test_load_checks_the_index():
    source = NoiseSource("n", n=3)
    for bad in (3, -1):
        with pytest.raises(IndexError, match="out of range for 'n'"):
            source.load(bad)


# --- digits -----------------------------------------------------------------------------------


def test_digits_splits_partition_all_images_per_digit():
    _, targets = digits_data()
    splits = {
        s: build_source({"source": "digits", "split": s}, name=s) for s in ("train", "val", "test")
    }
    ids = [set(source.ids()) for source in splits.values()]
    assert sum(map(len, ids)) == len(set().union(*ids)) == len(targets) == 1797
    for digit in range(10):
        count = np.sum(targets == digit)
        per_split = [np.sum(source.labels() == digit) for source in splits.values()]
        assert per_split == [round(0.5 * count), round(0.1 * count), count - sum(per_split[:2])]


def test_digits_subset_sees_the_same_partition_and_relabels():
    _, targets = digits_data()
    every = build_source({"source": "digits", "split": "test"}, name="all")
    subset = build_source({"source": "digits", "split": "test", "digits": [7, 5, 6]}, name="s")
    original = [int(i.split("/")[1]) for i in subset.ids()]
    assert subset.ids() == [i for i in every.ids() if targets[int(i.split("/")[1])] in (5, 6, 7)]
    assert subset.labels().tolist() == [[7, 5, 6].index(targets[i]) for i in original]
    assert subset.labels().dtype == np.int64
    ood = build_source(
        {"source": "digits", "split": "test", "digits": [7, 5, 6], "ood": True}, name="o"
    )
    assert ood.ids() == subset.ids() and set(ood.labels().tolist()) == {-1}


def test_digits_partition_depends_on_seed_only():
    assert np.array_equal(split_assignment(0), split_assignment(0))
    assert not np.array_equal(split_assignment(0), split_assignment(1))
    assert DigitsSource("a", split="train", seed=1).ids() != DigitsSource("b", split="train").ids()


def test_digits_images_are_scaled_rgb_8x8():
    from sklearn.datasets import load_digits

    source = DigitsSource("d", digits=[0, 8], split="all")
    index = int(source.ids()[5].split("/")[1])
    image = source.load(5)
    assert image.mode == "RGB" and image.size == (8, 8)
    expected = np.rint(load_digits().images[index] * 255 / 16)
    assert np.array_equal(_pixels(image)[..., 1], expected)
    assert _pixels(image).max() == 255


# --- textures and noise -----------------------------------------------------------------------


def test_textures_are_deterministic_per_seed_and_index_not_order():
    forward = TexturesSource("t", n=12, seed=4)
    backward = TexturesSource("t", n=12, seed=4)
    first = [_pixels(forward.load(i)) for i in range(12)]
    last = [_pixels(backward.load(i)) for i in reversed(range(12))][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(first, last, strict=True))
    other = TexturesSource("t", n=12, seed=5)
    assert not any(np.array_equal(a, _pixels(other.load(i))) for i, a in enumerate(first))
    assert forward.ids()[3] == "textures/3" and set(forward.labels().tolist()) == {-1}


@pytest.mark.parametrize("family", sorted(TEXTURE_FAMILIES))
def test_every_texture_family_makes_varied_rgb_images(family):
    source = TexturesSource("t", n=6, size=24, families=[family])
    images = [_pixels(source.load(i)) for i in range(6)]
    assert all(image.shape == (24, 24, 3) for image in images)
    assert all(image.std() > 5 for image in images)  # not flat
    assert len({image.tobytes() for image in images}) == 6


def test_noise_kinds_have_the_documented_statistics():
    uniform = _pixels(NoiseSource("u", n=1, size=64).load(0))
    gaussian = _pixels(NoiseSource("g", n=1, size=64, distribution="gaussian").load(0))
    assert uniform.shape == gaussian.shape == (64, 64, 3)
    assert abs(uniform.mean() - 127.5) < 4 and abs(uniform.std() - 73.9) < 3
    assert abs(gaussian.mean() - 127.5) < 4 and abs(gaussian.std() - 64) < 4
    spec = {"source": "noise", "n": 5, "seed": 9, "kind": "gaussian"}
    assert np.array_equal(
        _pixels(build_source(spec, name="a").load(2)),
        _pixels(NoiseSource("b", n=5, seed=9, distribution="gaussian").load(2)),
    )


# --- imglist ----------------------------------------------------------------------------------

REAL_LISTS = {
    "openood_v1.5_imagenet_val_imagenet.txt": (5000, set(range(1000))),
    "openood_v1.5_imagenet_test_ninco.txt": (5879, {-1}),
    "openood_v1.5_imagenet_test_textures.txt": (5160, {-1}),
    "openood_v1.5_imagenet_test_imagenet_o.txt": (2000, {-1}),
    "mos_imagenet_test_SUN.txt": (10000, {-1}),
}
needs_lists = pytest.mark.skipif(IMGLISTS is None, reason="the real image lists are not available")


@needs_lists
@pytest.mark.parametrize("filename", sorted(REAL_LISTS))
def test_real_image_lists_parse_with_their_counts_and_labels(tmp_path, filename):
    count, labels = REAL_LISTS[filename]
    spec = {"source": "imglist", "list": filename, "_base_dir": str(IMGLISTS)}
    source = build_source(spec, name="real", data_root=tmp_path)  # root without any image
    assert len(source) == len(source.ids()) == count
    assert set(source.labels().tolist()) == labels
    lines = (IMGLISTS / filename).read_text().split("\n")
    assert source.ids()[0] == lines[0].split()[0] and len(set(source.ids())) == count


@needs_lists
def test_real_list_with_a_tiny_root_loads_existing_files_only(tmp_path):
    listed = build_source(
        {"source": "imglist", "list": str(IMGLISTS / "openood_v1.5_imagenet_val_imagenet.txt")},
        name="val",
        data_root=tmp_path,
    )
    for i, colour in ((0, "red"), (2500, "blue")):
        _save(Image.new("RGB", (20, 10), colour), tmp_path / listed.ids()[i], format="JPEG")
    assert listed.load(2500).size == (20, 10)
    assert _pixels(listed.load(0))[5, 5, 0] > 200
    with pytest.raises(UnreadableImage, match="ILSVRC2012_val"):
        listed.load(1)
    forced = build_source(
        {
            "source": "imglist",
            "list": "openood_v1.5_imagenet_val_imagenet.txt",
            "ood": True,
            "_base_dir": str(IMGLISTS),
            "root": str(tmp_path),
        },
        name="val-as-ood",
    )
    assert forced.ids() == listed.ids() and set(forced.labels().tolist()) == {-1}


def _write_list(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_imglist_parses_comments_spaces_and_resolves_relative_paths(tmp_path, monkeypatch):
    base = tmp_path / "yaml"
    base.mkdir()
    _write_list(base / "l.txt", "# comment\n\na/x 1.png 3\r\nb/y.jpg\t-1\n")
    spec = {"source": "imglist", "list": "l.txt", "_base_dir": str(base), "root": "imgs"}
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    source = build_source(spec, name="l", data_root=tmp_path / "data")
    assert source.ids() == ["a/x 1.png", "b/y.jpg"] and source.labels().tolist() == [3, -1]
    assert source.describe()["root"] == str(tmp_path / "data" / "imgs")

    monkeypatch.chdir(base)  # without _base_dir: relative to the current directory
    spec = {"source": "imglist", "list": "l.txt", "root": str(tmp_path)}
    assert build_source(spec, name="cwd").ids() == ["a/x 1.png", "b/y.jpg"]


@pytest.mark.parametrize(
    ("text", "line"),
    [("a.jpg 1\nb.jpg x\n", 2), ("a.jpg\n", 1), ("a.jpg 1\n\nc.jpg -2\n", 3), ("a.jpg 1.5\n", 1)],
)
def test_imglist_bad_line_names_file_and_line(tmp_path, text, line):
    path = _write_list(tmp_path / "bad.txt", text)
    with pytest.raises(OodbenchError, match=rf"bad\.txt:{line}: bad line .* dataset 'l'"):
        build_source({"source": "imglist", "list": str(path)}, name="l", data_root=tmp_path)


def test_imglist_missing_or_empty_list(tmp_path):
    with pytest.raises(
        OodbenchError, match=r"Image list .*nope.txt for dataset 'l' does not exist"
    ):
        build_source(
            {"source": "imglist", "list": str(tmp_path / "nope.txt")}, name="l", data_root=tmp_path
        )
    path = _write_list(tmp_path / "empty.txt", "# nothing\n")
    with pytest.raises(OodbenchError, match="lists no images"):
        build_source({"source": "imglist", "list": str(path)}, name="l", data_root=tmp_path)


def test_imglist_missing_root_says_how_to_fix(tmp_path, monkeypatch):
    path = _write_list(tmp_path / "l.txt", "a.jpg 0\n")
    spec = {"source": "imglist", "list": str(path), "url": "https://example.org/ninco"}
    with pytest.raises(
        OodbenchError,
        match=r"Data root .*absent for dataset 'ninco' does not exist: download the images from "
        r"https://example.org/ninco and pass --data-root",
    ):
        build_source(spec, name="ninco", data_root=tmp_path / "absent")
    monkeypatch.delenv("OODBENCH_DATA", raising=False)
    with pytest.raises(
        OodbenchError,
        match=r"'ninco' \(imglist\) has no data root: pass --data-root, set OODBENCH_DATA",
    ):
        build_source(spec, name="ninco")


def test_imglist_root_expands_environment_variables(tmp_path, monkeypatch):
    path = _write_list(tmp_path / "l.txt", "a.jpg 0\n")
    (tmp_path / "env" / "imgs").mkdir(parents=True)
    (tmp_path / "arg" / "imgs").mkdir(parents=True)
    spec = {"source": "imglist", "list": str(path), "root": "${OODBENCH_DATA}/imgs"}
    monkeypatch.setenv("OODBENCH_DATA", str(tmp_path / "env"))
    assert build_source(spec, name="l").root == tmp_path / "env" / "imgs"
    assert (
        build_source(spec, name="l", data_root=tmp_path / "arg").root == tmp_path / "arg" / "imgs"
    )
    monkeypatch.delenv("OODBENCH_DATA")
    with pytest.raises(
        OodbenchError, match=r"uses \$OODBENCH_DATA, which is not set: pass --data-root"
    ):
        build_source(spec, name="l")
    with pytest.raises(
        OodbenchError, match=r"uses \$NOT_A_VAR_X, which is not set: set NOT_A_VAR_X"
    ):
        build_source({**spec, "root": "$NOT_A_VAR_X/imgs"}, name="l")


# --- imagefolder ------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "folder"
    for relative in (
        "zebra/1.png",
        "apple/b.JPG",
        "apple/a.jpeg",
        "apple/sub/c.png",
        "mango/m.webp",
    ):
        _save(Image.new("RGB", (5, 5), "white"), root / relative)
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "apple" / ".hidden.png").write_bytes(b"")
    (root / ".cache").mkdir()
    return root


def test_imagefolder_sorts_classes_and_walks_subfolders(folder):
    source = build_source({"source": "imagefolder", "root": str(folder)}, name="f")
    assert source.ids() == [
        "apple/a.jpeg",
        "apple/b.JPG",
        "apple/sub/c.png",
        "mango/m.webp",
        "zebra/1.png",
    ]
    assert source.labels().tolist() == [0, 0, 0, 1, 2]
    assert source.describe()["classes"] == ["apple", "mango", "zebra"]
    assert all(source.load(i).mode == "RGB" for i in range(len(source)))


def test_imagefolder_explicit_classes_ood_and_errors(folder, tmp_path):
    spec = {"source": "imagefolder", "root": "folder", "classes": ["zebra", "apple"]}
    source = build_source(spec, name="f", data_root=tmp_path)
    assert source.ids()[0] == "zebra/1.png" and source.labels().tolist() == [0, 1, 1, 1]
    ood = build_source({**spec, "ood": True}, name="f", data_root=tmp_path)
    assert set(ood.labels().tolist()) == {-1}
    with pytest.raises(OodbenchError, match=r"Dataset 'f': no class folder 'kiwi'"):
        build_source({**spec, "classes": ["kiwi"]}, name="f", data_root=tmp_path)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(OodbenchError, match="no images in the class folders"):
        build_source({"source": "imagefolder", "root": str(tmp_path / "empty")}, name="f")
    with pytest.raises(OodbenchError, match=r"Data root .*nowhere for dataset 'f' does not exist"):
        build_source({"source": "imagefolder", "root": str(tmp_path / "nowhere")}, name="f")


# --- torchvision ------------------------------------------------------------------------------


def _fake_cifar10_archive(images_per_batch: int = 3) -> tuple[bytes, dict[str, dict]]:
    """A tar.gz laid out like cifar-10-python.tar.gz: pickled batches in cifar-10-batches-py/."""
    rng = np.random.default_rng(0)
    batches = {
        name: {
            "data": rng.integers(0, 256, (images_per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, images_per_batch).tolist(),
        }
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    }
    members = {**batches, "batches.meta": {"label_names": [f"class{i}" for i in range(10)]}}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            data = pickle.dumps(content)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), batches


class _FakeResponse(io.BytesIO):
    def __init__(self, url: str, payload: bytes) -> None:
        super().__init__(payload)
        self.url, self.length = url, len(payload)


@pytest.fixture
def fake_internet(monkeypatch):
    """Serve the fake CIFAR-10 archive for any URL; record the URLs asked for.

    Only the network and the md5 comparison are replaced; torchvision's own download_url,
    archive extraction, integrity checks (file presence) and pickle reading all run.
    The md5 comparison has to go: torchvision pins the md5 of the real 170 MB archive and
    of every batch file, and no honest fake can have the same md5 as the real data.
    """
    import torchvision.datasets.utils as tv_utils

    archive, batches = _fake_cifar10_archive()
    requested = []

    def urlopen(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        requested.append(url)
        return _FakeResponse(url, archive)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(tv_utils, "check_md5", lambda fpath, md5, **kwargs: True)
    return requested, batches


def test_torchvision_download_false_on_empty_root_says_how_to_fix(tmp_path):
    spec = {"source": "torchvision", "dataset": "CIFAR10", "split": "test"}
    with pytest.raises(
        OodbenchError,
        match=rf"CIFAR10 is not in {tmp_path}: rerun with --download to fetch it \(needs internet\) "
        r"or pass --data-root \(dataset 'cifar10'\)",
    ):
        build_source(spec, name="cifar10", data_root=tmp_path)


def test_torchvision_default_root_is_the_oodbench_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OODBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OODBENCH_DATA", raising=False)
    spec = {"source": "torchvision", "dataset": "cifar100", "split": "train"}
    with pytest.raises(
        OodbenchError, match=rf"CIFAR100 is not in {tmp_path / 'cache' / 'torchvision'}:"
    ):
        build_source(spec, name="c")


def test_torchvision_cifar10_download_and_read(tmp_path, fake_internet):
    requested, batches = fake_internet
    spec = {"source": "torchvision", "dataset": "CIFAR10", "split": "test"}
    source = build_source(spec, name="cifar10", data_root=tmp_path, download=True)
    assert requested and all(url.endswith("cifar-10-python.tar.gz") for url in requested)
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()

    test_batch = batches["test_batch"]
    assert source.ids() == ["cifar10/test/0", "cifar10/test/1", "cifar10/test/2"]
    assert source.labels().tolist() == test_batch["labels"]
    expected = test_batch["data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    image = source.load(1)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), expected)
    assert source.describe()["root"] == str(tmp_path)

    requested.clear()  # now on disk: no second download, train split = the 5 train batches
    train = build_source({**spec, "split": "train", "ood": True}, name="c", data_root=tmp_path)
    assert not requested and len(train) == 15 and set(train.labels().tolist()) == {-1}


def test_torchvision_checks_md5_without_the_fake(tmp_path, fake_internet, monkeypatch):
    """The real md5 check refuses the fake data: the reason fake_internet must replace it."""
    spec = {"source": "torchvision", "dataset": "CIFAR10", "split": "test"}
    build_source(spec, name="c", data_root=tmp_path, download=True)
    monkeypatch.undo()
    with pytest.raises(OodbenchError, match="CIFAR10 is not in"):
        build_source(spec, name="c", data_root=tmp_path)


def test_torchvision_svhn_uses_split_names_and_labels(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets.utils as tv_utils

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    scipy.io.savemat(
        tmp_path / "test_32x32.mat", {"X": images, "y": np.array([[10], [1], [5], [10]])}
    )
    # The pinned md5 of the real file cannot match a fake one (see fake_internet).
    monkeypatch.setattr(tv_utils, "check_md5", lambda fpath, md5, **kwargs: True)
    source = build_source(
        {"source": "torchvision", "dataset": "svhn", "split": "test"},
        name="svhn",
        data_root=tmp_path,
    )
    assert source.labels().tolist() == [0, 1, 5, 0]  # SVHN's "10" is digit 0
    assert source.ids()[3] == "svhn/test/3"
    assert np.array_equal(np.asarray(source.load(2)), images[..., 2])


def test_imagenet_names_and_templates_without_importing_open_clip():
    """The class names / templates come from open_clip's metadata file run on its own (a score
    run must not pay open_clip's ~5 s import); they equal the package's constants."""
    import subprocess
    import sys

    code = (
        "import sys; from oodbench import text; n = text._imagenet(); t = text._openai_templates(); "
        "s = text._simple_templates(); assert 'open_clip' not in sys.modules; "
        "import open_clip; assert n == tuple(open_clip.IMAGENET_CLASSNAMES) and len(n) == 1000; "
        "assert t == tuple(f('{}') for f in open_clip.OPENAI_IMAGENET_TEMPLATES) and len(t) == 80; "
        "assert s == tuple(f('{}') for f in open_clip.SIMPLE_IMAGENET_TEMPLATES)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
