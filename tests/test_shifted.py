"""The offline covariate-shift set: corrupted ID test digits with their ID labels."""

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from oodbench.data import build_source
from oodbench.data.digits import DigitsSource, digits_data
from oodbench.data.shifted import (
    CORRUPTIONS,
    SUPERSAMPLE,
    ShiftedDigitsSource,
    _warp,
    bilinear_sample,
    gaussian_blur,
)
from oodbench.errors import OodbenchError

ID_DIGITS = [0, 1, 2, 3, 4]  # the offline benchmark's ID classes

# sha256 of every pixel of ShiftedDigitsSource("x") (all four corruptions, severity 3, seed 0,
# digits 0-9 test split), in sample order. Recorded on AMD EPYC; any machine must give it.
GOLDEN = "01da9e7a82e2f79f6f344225ecf9e157431547d5c9eb17f5da57b1f104dc55ac"


def _clean(source: ShiftedDigitsSource, i: int) -> np.ndarray:
    return np.asarray(source.clean.load(i))[..., 0]


def _all_pixels(source: ShiftedDigitsSource) -> bytes:
    return b"".join(source.pixels(i).tobytes() for i in range(len(source)))


def test_labels_and_images_follow_the_clean_id_test_digits():
    shifted = ShiftedDigitsSource("s", digits=ID_DIGITS)
    clean = DigitsSource("c", digits=ID_DIGITS, split="test")
    np.testing.assert_array_equal(shifted.labels(), clean.labels())
    assert len(shifted) == len(clean) and set(shifted.labels()) == set(range(5))
    _, targets = digits_data()
    for sid, cid, label in zip(shifted.ids(), clean.ids(), shifted.labels(), strict=True):
        index = int(sid.rsplit("/", 1)[1])
        assert cid == f"digits/{index}" and ID_DIGITS[label] == targets[index]
    assert {sid.split("/")[1] for sid in shifted.ids()} == {f"{c}-3" for c in CORRUPTIONS}
    image = shifted.load(0)
    assert image.mode == "RGB" and image.size == (8, 8)


def test_same_seed_same_bytes_other_seed_other_bytes():
    a, b = ShiftedDigitsSource("a", seed=4), ShiftedDigitsSource("b", seed=4)
    order = np.random.default_rng(0).permutation(len(a))[:50]
    first = {int(i): b.pixels(int(i)).tobytes() for i in order}  # another loading order
    assert all(a.pixels(i).tobytes() == first[i] for i in first)
    assert _all_pixels(a) == _all_pixels(b)
    other = ShiftedDigitsSource("c", seed=5)
    for name in ("rotation", "noise", "elastic"):  # the random ones
        idx = [i for i in range(len(a)) if a.corruption(i) == name]
        assert any(a.pixels(i).tobytes() != other.pixels(i).tobytes() for i in idx), name
    assert a.fingerprint() != other.fingerprint()  # ids carry the seed


def test_golden_bytes():
    """Bytes fixed across machines and numpy versions with the same bit generator (PCG64)."""
    assert hashlib.sha256(_all_pixels(ShiftedDigitsSource("x"))).hexdigest() == GOLDEN


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_changes_images_more_with_severity(name):
    change = []
    for severity in (1, 2, 3, 4, 5):
        s = ShiftedDigitsSource("s", corruptions=[name], severity=severity, digits=ID_DIGITS)
        some = range(0, len(s), 3)  # 120 of the 360 ID test digits keep the test fast
        diffs = [np.abs(s.pixels(i).astype(int) - _clean(s, i)).mean() for i in some]
        assert np.mean(np.array(diffs) > 0) > 0.97, (name, severity)  # (nearly) every image
        change.append(np.mean(diffs))
    assert np.all(np.diff(change) > 0), (name, change)
    assert change[0] > 5  # a visible change (of 255) already at severity 1


def test_gaussian_blur_matches_scipy():
    image = np.random.default_rng(0).random((8, 8)) * 255
    for sigma in (0.4, 0.7, 1.0, 4.0):
        ref = ndimage.gaussian_filter(image, sigma, mode="constant", truncate=3.0)
        # kernels agree to ~1e-16 relative, sums of <= 25 taps of values <= 255
        np.testing.assert_allclose(gaussian_blur(image, sigma), ref, rtol=0, atol=1e-11)
    stack = np.stack([image, image[::-1]])  # leading axes are batch axes
    np.testing.assert_array_equal(gaussian_blur(stack, 0.7)[1], gaussian_blur(image[::-1], 0.7))


def test_bilinear_sample_matches_scipy_and_rotation_is_exact_at_zero():
    r = np.random.default_rng(1)
    image = r.random((32, 32))
    y, x = r.uniform(-3, 35, (2, 500))
    ref = ndimage.map_coordinates(image, [y, x], order=1, mode="grid-constant", cval=0.0)
    # both interpolate the same four values with weights in [0, 1]: ~4 ulp of 1
    np.testing.assert_allclose(bilinear_sample(image, y, x), ref, rtol=0, atol=1e-14)
    gy, gx = np.mgrid[0:32, 0:32].astype(float)
    assert np.array_equal(bilinear_sample(image, gy, gx), image)
    # a 90-degree turn of the supersampled grid maps pixel centres onto pixel centres: exact
    digit = digits_data()[0][0].astype(float)
    n = digit.shape[0] * SUPERSAMPLE
    c = (n - 1) / 2
    gy, gx = np.mgrid[0:n, 0:n].astype(float) - c
    turned = _warp(digit, gx - gy, -gy - gx)  # output (y, x) samples input (x, -y), centred
    np.testing.assert_allclose(turned, np.rot90(digit, 1), rtol=0, atol=1e-12)


def test_build_source_and_spec_errors():
    s = build_source(
        {"source": "shifted_digits", "digits": ID_DIGITS, "corruptions": ["blur"], "severity": 2},
        name="digits-shift",
    )
    assert isinstance(s, ShiftedDigitsSource) and s.severity == 2 and s.corruptions == ["blur"]
    assert s.describe() == {
        "name": "digits-shift", "kind": "shifted_digits", "num_samples": len(s),
        "corruptions": ["blur"], "severity": 2, "seed": 0, "digits": ID_DIGITS,
        "split": "test", "split_seed": 0,
    }
    with pytest.raises(OodbenchError, match="Did you mean 'rotation'"):
        build_source({"source": "shifted_digits", "corruptions": ["rotaton"]}, name="x")
    with pytest.raises(OodbenchError, match="'severity' must be an integer from 1"):
        build_source({"source": "shifted_digits", "severity": 6}, name="x")
    with pytest.raises(OodbenchError, match="'digits'"):
        build_source({"source": "shifted_digits", "digits": [12]}, name="x")
