"""Covariate-shift sets end to end (issue 18): catalogue, extract, score, scores file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from oodbench import api
from oodbench.config import load_catalogue
from oodbench.errors import OodbenchError
from oodbench.metrics import predictions_correct, softmax
from oodbench.results import load_records, save_records
from oodbench.store import FeatureFile, Store

SHIFT = "digits-shifted"


def _yaml(tmp_path, shift: str) -> str:
    p = tmp_path / "b.yaml"
    p.write_text(f"""
datasets:
  a: {{source: digits, digits: [0, 1, 2], split: test}}
  s: {{source: shifted_digits, digits: [0, 1, 2], split: test}}
  o: {{source: digits, digits: [7, 8], split: test, ood: true}}
benchmarks:
  b:
    classes: [zero, one, two]
    id: {{train: a, test: a}}
    ood: {{near: [o]}}
    shift: {shift}
""")
    return str(p)


def test_digits_catalogue_has_the_shifted_digits_set():
    bench = load_catalogue().benchmark("digits")
    assert list(bench.shift) == [SHIFT] and SHIFT in bench.splits()
    src = load_catalogue().source(SHIFT)
    test = load_catalogue().source("digits-id-test")
    assert src.corruptions == ["rotation", "blur", "noise", "elastic"] and src.severity == 3
    np.testing.assert_array_equal(src.labels(), test.labels())  # the ID test digits, labels kept


def test_shift_entry_with_subset_and_reference(tmp_path):
    spec = "[{dataset: s, classes: [two, 0], reference: {slope: 0.8, intercept: -0.5}}]"
    s = load_catalogue(_yaml(tmp_path, spec)).benchmark("b").shift["s"]
    assert s.classes == [2, 0] and s.reference == (0.8, -0.5)
    assert load_catalogue(_yaml(tmp_path, "[s]")).benchmark("b").shift["s"].classes is None


@pytest.mark.parametrize("spec, needle", [
    ("s", "must be a list"),
    ("[nope]", "nope"),
    ("[{dataset: s, classes: [five]}]", "'five' is neither a class name"),
    ("[{dataset: s, classes: [0, 0]}]", "lists a class twice"),
    ("[{dataset: s, reference: {slope: 1}}]", "reference: must be"),
    ("[{dataset: s, weight: 2}]", "weight"),
    ("[{dataset: s, labels: subset}]", "needs classes"),
    ("[{dataset: s, classes: nosuch}]", "imagenet-r-200"),
])
def test_bad_shift_entries_name_the_key(tmp_path, spec, needle):
    with pytest.raises(OodbenchError, match="benchmarks.b.shift") as e:
        load_catalogue(_yaml(tmp_path, spec))
    assert needle in str(e.value)


def test_extract_and_score_the_shift_set(digits_store):
    st, key = Store(digits_store["store"]), digits_store["key"]
    ff = FeatureFile(st.features_path(key, SHIFT))
    labels = ff.load("labels")
    assert len(ff) == 361 and set(np.unique(labels)) == {0, 1, 2, 3, 4}
    rec = digits_store["records"]["msp"]
    assert list(rec.shift_scores) == [SHIFT] and rec.shift_scores[SHIFT].shape == (361,)
    # correctness and confidence recomputed from the stored embeddings and the zero-shot head
    logits = _shift_logits(st, key)
    np.testing.assert_array_equal(rec.shift_correct[SHIFT] == 1, predictions_correct(logits, labels))
    # the softmax of float32 logits: both sides compute it in float64 from the same logits
    np.testing.assert_allclose(rec.head_confidence[SHIFT], softmax(logits).max(1), rtol=1e-6)
    assert set(rec.head_confidence) == {"id", SHIFT}
    # MSP scores the shift set with the max softmax probability, like the ID test set
    np.testing.assert_allclose(rec.shift_scores[SHIFT], rec.head_confidence[SHIFT], rtol=1e-5)
    shift_acc = float(np.mean(rec.shift_correct[SHIFT] == 1))
    assert 0.2 < shift_acc < rec.accuracy  # corrupted digits are harder, not hopeless


def _shift_logits(st, key) -> np.ndarray:
    from oodbench.engine import load_inputs, load_model_view, make_head

    view = load_model_view(st, key, load_catalogue().benchmark("digits"))
    return np.asarray(load_inputs(st, view, SHIFT, make_head(view, "zeroshot"), "shift").logits, np.float64)


def test_scores_file_round_trip_and_old_files(digits_store, tmp_path):
    rec = digits_store["records"]["knn"]
    path = tmp_path / "s.h5"
    save_records(path, [rec], {"benchmark": "digits", "model_key": "k", "fingerprint": "f", "model_label": "m"})
    (back,) = load_records(path)
    np.testing.assert_array_equal(back.shift_scores[SHIFT], rec.shift_scores[SHIFT])
    np.testing.assert_array_equal(back.shift_correct[SHIFT], rec.shift_correct[SHIFT])
    assert back.shift_sets == {SHIFT: {"classes": None, "reference": None}}
    with h5py.File(path, "a") as f:  # a file written before shift sets existed
        for g in ("shift", "shift_correct", "head_confidence"):
            del f["knn"][g]
        del f["knn"].attrs["shift_sets"]
    (old,) = load_records(path)
    assert old.shift_scores == {} and old.shift_correct == {} and old.head_confidence == {}
    np.testing.assert_array_equal(old.id_scores, rec.id_scores)


def test_store_without_the_shift_set_still_scores(digits_store, tmp_path):
    """A store extracted before the benchmark had shift sets: scored without them, one warning."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(digits_store["store"], store)
    Store(store).features_path(digits_store["key"], SHIFT).unlink()
    (rec,) = api.score(["msp"], benchmark="digits", store=store, model_key=digits_store["key"])
    assert rec.shift_scores == {} and rec.shift_correct == {} and set(rec.head_confidence) == {"id"}
