"""--decode device: JPEG decoding on the extraction device (tested here with the CPU decoder)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from oodbench import api
from oodbench.decode import JPEG, TENSOR, UNREADABLE, EncodedImages, TensorPreprocess, plain_jpeg
from oodbench.errors import OodbenchError
from oodbench.models import load_model
from oodbench.store import FeatureFile, Store

YAML = """
datasets:
  photos: {source: imagefolder, root: "%(root)s", ood: true}
  more-photos: {source: imagefolder, root: "%(root)s", ood: true}  # an OoD slot (never extracted here)
benchmarks:
  jpegs:
    classes: [zero, one]
    templates: ["a photo of the digit {}."]
    model: {name: oodbench-tiny, pretrained: digits}
    id: {train: photos, test: photos}
    ood: {far: [more-photos]}
"""


def _photo(rng, size=(56, 40)) -> Image.Image:
    """A smooth colour image with some texture, the kind of content JPEG is made for."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / (5 + rng.random() * 5)), 128 + 90 * np.cos(y / 7.0),
                     128 + 60 * np.sin((x + y) / 9.0)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    d = root / "x"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        _photo(rng).save(d / f"p{i}.jpg", quality=92)
    _photo(rng).convert("L").save(d / "gray.jpg", quality=92)
    _photo(rng).convert("CMYK").save(d / "cmyk.jpg", quality=92)
    _photo(rng).save(d / "lossless.png")
    full = (d / "p0.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (d / "empty.jpg").write_bytes(b"")
    return root


def _extract(tmp_path, photos, decode, store="store"):
    p = tmp_path / "b.yaml"
    p.write_text(YAML % {"root": photos})
    key = api.extract(benchmark="jpegs", benchmarks=p, store=tmp_path / store, datasets=["photos"],
                      device="cpu", decode=decode, batch_size=4)
    return FeatureFile(Store(tmp_path / store).features_path(key, "photos"))


def test_items_take_the_right_path(photos):
    bundle = load_model()
    from oodbench.data import build_source

    src = build_source({"source": "imagefolder", "root": str(photos), "ood": True}, name="photos")
    ds = EncodedImages(src, bundle.preprocess, 0, 32)
    kinds = {src.ids()[i]: ds[i][2] for i in range(len(src))}
    assert kinds["x/p3.jpg"] == JPEG and kinds["x/gray.jpg"] == JPEG
    assert kinds["x/cmyk.jpg"] == TENSOR  # 4 components: Pillow's conversion is the reference
    assert kinds["x/lossless.png"] == TENSOR  # not a JPEG: Pillow in the worker
    assert kinds["x/truncated.jpg"] == UNREADABLE  # no end marker: Pillow, which refuses it
    assert kinds["x/empty.jpg"] == UNREADABLE
    assert src.file(0) == photos / src.ids()[0]
    digits = build_source({"source": "digits", "digits": [0, 1], "split": "test"}, name="d")
    assert digits.file(0) is None  # made in memory: the Pillow path, whatever --decode says
    assert EncodedImages(digits, bundle.preprocess, 0, 32)[0][2] == TENSOR


def test_device_decode_matches_the_pillow_path(tmp_path, photos):
    pil = _extract(tmp_path, photos, "pil", "store_pil")
    dev = _extract(tmp_path, photos, "device", "store_dev")
    assert list(dev.load("ids")) == list(pil.load("ids"))
    assert sorted(dev.load("skipped_ids")) == sorted(pil.load("skipped_ids")) == ["x/empty.jpg", "x/truncated.jpg"]
    a, b = pil.load("image_embeds"), dev.load("image_embeds")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99, cos  # decoders and resize filters differ by a grey level or two
    ids = list(pil.load("ids"))
    for name in ("x/lossless.png", "x/cmyk.jpg"):  # decoded by Pillow on both paths: identical
        np.testing.assert_array_equal(a[ids.index(name)], b[ids.index(name)])
    assert dev.attrs["opt_decode"] == "device" and "opt_decode" not in pil.attrs


def test_a_store_is_not_reused_across_decoders(tmp_path, photos):
    _extract(tmp_path, photos, "pil")
    with pytest.raises(OodbenchError, match="other data or options"):
        _extract(tmp_path, photos, "device")


def test_tensor_preprocess_matches_open_clip(photos):
    bundle = load_model()
    tp = TensorPreprocess.from_transform(bundle.preprocess)
    assert (tp.resize, tp.crop, tp.interpolation) == (32, 32, "bicubic")
    image = _photo(np.random.default_rng(1), (90, 70))
    ref = bundle.preprocess(image)
    got = tp(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())
    assert got.shape == ref.shape
    # tensor bicubic with antialias vs Pillow's filter: within a few grey levels
    assert (got - ref).abs().mean() < 0.03 and (got - ref).abs().max() < 0.3


def test_tensor_preprocess_batch_equals_one_by_one():
    """Grouping same-size images into one resize call changes no number."""
    from torchvision.transforms import functional as TF

    tp = TensorPreprocess.from_transform(load_model().preprocess)
    rng = np.random.default_rng(3)
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
              for h, w in [(90, 70), (64, 80), (90, 70), (32, 32), (90, 70), (200, 41)]]
    got = tp.batch(images)
    mean, std = torch.tensor(tp.mean).view(-1, 1, 1), torch.tensor(tp.std).view(-1, 1, 1)
    for image, g in zip(images, got, strict=True):
        x = TF.resize(image, [tp.resize], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        x = TF.center_crop(x, [tp.crop, tp.crop]).float().div(255.0)
        assert torch.equal(g, (x - mean) / std)
    assert torch.equal(tp(images[1]), got[1])


def test_unsupported_preprocess_and_decoder_are_refused(tmp_path, photos):
    with pytest.raises(OodbenchError, match="--decode pil"):
        TensorPreprocess.from_transform(T.Compose([T.RandomResizedCrop(32), T.ToTensor()]))
    with pytest.raises(OodbenchError, match="decode must be one of pil, device"):
        _extract(tmp_path, photos, "gpu")


def test_plain_jpeg_reads_the_frame_header(photos):
    d = photos / "x"
    assert plain_jpeg((d / "p1.jpg").read_bytes()) and plain_jpeg((d / "gray.jpg").read_bytes())
    assert not plain_jpeg((d / "cmyk.jpg").read_bytes())
    assert not plain_jpeg((d / "truncated.jpg").read_bytes()) and not plain_jpeg(b"")
    assert not plain_jpeg((d / "lossless.png").read_bytes())
    assert not plain_jpeg(b"\xff\xd8\xff\xd9")  # markers but no frame
