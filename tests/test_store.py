"""The feature store: round trip, resume after an interrupted write, atomic completion, locks."""

import h5py
import numpy as np
import pytest

from oodbench.errors import OodbenchError
from oodbench.store import STR, FeatureFile, FeatureWriter, exclusive, read_h5, write_h5_atomic

LAYOUT = {"x": ((3,), np.float32), "labels": ((), np.int64), "ids": ((), STR)}


def _rows(s, e):
    x = np.arange(s * 3, e * 3, dtype=np.float32).reshape(-1, 3)
    return {"x": x, "labels": np.arange(s, e), "ids": np.array([f"s{i}" for i in range(s, e)], dtype=object)}


def _writer(path, total=10, identity=None):
    return FeatureWriter(path, LAYOUT, identity or {"model_fingerprint": "abc"}, {"dataset": "d"}, total, chunk_rows=4)


def _write(w, start, stop, step=4, skip=()):
    for s in range(start, stop, step):
        e = min(s + step, stop)
        keep = [i for i in range(s, e) if i not in skip]
        rows = {k: v[[i - s for i in keep]] for k, v in _rows(s, e).items()}
        w.append(rows, n_processed=e, skipped=[f"s{i}" for i in range(s, e) if i in skip])


def test_round_trip(tmp_path):
    p = tmp_path / "f.h5"
    w = _writer(p).open()
    _write(w, 0, 10, skip={3})
    w.finalize()
    f = FeatureFile(p)
    assert len(f) == 9 and f.attrs["complete"] and f.attrs["dataset"] == "d"
    assert list(f.load("ids")) == [f"s{i}" for i in range(10) if i != 3]
    assert list(f.load("skipped_ids")) == ["s3"]
    np.testing.assert_array_equal(f.load("x")[3], [12, 13, 14])
    assert np.concatenate(list(f.iter_chunks("labels", rows=4))).tolist() == f.load("labels").tolist()


def test_resume_after_interrupted_write_equals_uninterrupted(tmp_path):
    full = tmp_path / "full.h5"
    w = _writer(full).open()
    _write(w, 0, 10)
    w.finalize()

    p = tmp_path / "f.h5"
    w = _writer(p).open()
    _write(w, 0, 8)
    # simulate a crash after rows were written but before progress was recorded
    w.f["x"].resize(10, axis=0)
    w.f["x"][8:] = 99
    w.f.close()
    assert not p.exists() and p.with_name("f.h5.partial").exists()
    with pytest.raises(OodbenchError, match="unfinished extract"):
        FeatureFile(p)
    w2 = _writer(p).open()
    assert w2.resumed_from == 8
    _write(w2, 8, 10)
    w2.finalize()
    a, b = FeatureFile(p), FeatureFile(full)
    for k in ("x", "labels", "ids"):
        np.testing.assert_array_equal(a.load(k), b.load(k))


def test_partial_from_other_model_starts_over(tmp_path):
    p = tmp_path / "f.h5"
    w = _writer(p).open()
    _write(w, 0, 4)
    w.close()
    w2 = _writer(p, identity={"model_fingerprint": "other"}).open()
    assert w2.resumed_from == 0 and len(w2.f["x"]) == 0
    w2.close()


def test_corrupt_partial_starts_over(tmp_path):
    p = tmp_path / "f.h5"
    p.with_name("f.h5.partial").write_bytes(b"not hdf5")
    w = _writer(p).open()
    assert w.resumed_from == 0
    w.close()


def test_incomplete_file_is_refused(tmp_path):
    p = tmp_path / "f.h5"
    with h5py.File(p, "w") as f:
        f.attrs["format_version"] = 1
        f.attrs["complete"] = False
    with pytest.raises(OodbenchError, match="not marked complete"):
        FeatureFile(p)


def test_unknown_format_version_is_refused(tmp_path):
    p = tmp_path / "m.h5"
    write_h5_atomic(p, {"a": np.zeros(2)}, {"format_version": 99})
    with pytest.raises(OodbenchError, match="format version 99"):
        read_h5(p)


def test_second_writer_is_refused(tmp_path):
    p = tmp_path / "f.h5"
    with exclusive(p):
        with pytest.raises(OodbenchError, match="Another oodbench process"):
            with exclusive(p):
                pass


def test_verify_store(digits_store, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from oodbench.cli import app
    from oodbench.store import Store
    from oodbench.verify import verify_store

    store = tmp_path / "s"
    shutil.copytree(digits_store["store"], store)
    assert all(f.ok for f in verify_store(store))
    f = Store(store).features_path(digits_store["key"], "digits-5to9")
    with h5py.File(f, "a") as h:
        h["image_embeds"][3, 0] = np.nan
    (f.parent / "x.h5.partial").write_bytes(b"")
    bad = {p.path.name: p.message for p in verify_store(store) if not p.ok}
    assert "NaN/inf (rows 3)" in bad["digits-5to9.h5"] and "x.h5.partial" in bad
    res = CliRunner().invoke(app, ["verify", str(store)])
    assert res.exit_code == 1 and "2 of" in res.output
