"""Store integrity: stale or misnamed feature files refused, --overwrite that overwrites, label
ranges and names checked when the catalogue is read, no lock files left behind."""

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from oodbench import api
from oodbench.cli import app
from oodbench.config import PACKAGE_CATALOGUE, load_catalogue
from oodbench.errors import OodbenchError
from oodbench.store import FeatureFile, Store
from oodbench.verify import verify_store

NEAR = "digits-5to9"


def _copy(digits_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(digits_store["store"], store)
    return store, digits_store["key"]


def _narrowed_catalogue(tmp_path):
    """The shipped benchmarks file with digits-5to9 narrowed to the digit 5 (73 test images)."""
    text = PACKAGE_CATALOGUE.read_text()
    old = "digits-5to9: {source: digits, digits: [5, 6, 7, 8, 9], split: test, ood: true}"
    assert old in text
    path = tmp_path / "benchmarks.yaml"
    path.write_text(text.replace(old, "digits-5to9: {source: digits, digits: [5], split: test, ood: true}"))
    return path


def _one_error_line(res):
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1, res.output
    return err[0]


def test_changed_dataset_definition_is_refused_not_scored(digits_store, tmp_path):
    store, key = _copy(digits_store, tmp_path)
    bench = _narrowed_catalogue(tmp_path)
    assert len(load_catalogue(bench).source(NEAR)) == 73
    assert len(FeatureFile(Store(store).features_path(key, NEAR))) == 359
    scores = Store(store).scores_path(key, "digits")
    before = scores.read_bytes()
    res = CliRunner().invoke(app, ["score", "-m", "msp", "--store", str(store), "--benchmarks", str(bench)])
    line = _one_error_line(res)
    assert f"{NEAR}.h5 is stale" in line and "--overwrite" in line and "[5]" in line
    assert "359 samples are not the 73 samples" in line
    assert scores.read_bytes() == before  # nothing previously written changed
    # verify reports it against the same benchmarks file, and exits 1
    bad = {f.path.name: f.message for f in verify_store(store, bench) if not f.ok}
    assert list(bad) == [f"{NEAR}.h5"] and "stale" in bad[f"{NEAR}.h5"]
    res = CliRunner().invoke(app, ["verify", str(store), "--benchmarks", str(bench)])
    assert res.exit_code == 1 and "stale" in res.output
    # and with the shipped file the store is sound and scores
    assert all(f.ok for f in verify_store(store))


def test_file_copied_under_another_dataset_name_is_refused(digits_store, tmp_path):
    store, key = _copy(digits_store, tmp_path)
    st = Store(store)
    shutil.copyfile(st.features_path(key, NEAR), st.features_path(key, "digits-id-test"))
    res = CliRunner().invoke(app, ["score", "-m", "msp", "--store", str(store)])
    line = _one_error_line(res)
    assert "digits-id-test.h5 is stale" in line and f"holds dataset '{NEAR}'" in line
    bad = {f.path.name: f.message for f in verify_store(store) if not f.ok}
    assert list(bad) == ["digits-id-test.h5"] and f"holds dataset '{NEAR}'" in bad["digits-id-test.h5"]


def test_inspect_refuses_stale_and_misnamed_feature_files_with_score_s_line(digits_store, tmp_path):
    store, key = _copy(digits_store, tmp_path)
    bench = _narrowed_catalogue(tmp_path)
    args = ["--store", str(store), "--benchmarks", str(bench)]
    said = _one_error_line(CliRunner().invoke(app, ["score", "-m", "msp", *args]))
    line = _one_error_line(CliRunner().invoke(app, ["inspect", *args]))
    assert line == said and f"{NEAR}.h5 is stale" in line and "359 samples are not the 73 samples" in line
    st = Store(store)
    shutil.copyfile(st.features_path(key, NEAR), st.features_path(key, "digits-id-test"))
    line = _one_error_line(CliRunner().invoke(app, ["inspect", "--model-key", key, "--store", str(store)]))
    assert "digits-id-test.h5 is stale" in line and f"holds dataset '{NEAR}'" in line


def test_changed_image_list_is_stale_without_the_data_root(tmp_path):
    """An image list's fingerprint is recomputed from the list alone (no images, no data root)."""
    from oodbench.verify import current_sample_list, entry_problems

    lst = tmp_path / "ood.txt"
    lst.write_text("a.png 0\nb.png 0\n")
    (tmp_path / "b.yaml").write_text(
        "datasets:\n"
        "  o: {source: imglist, list: ood.txt, root: '${data_root}/x', ood: true}\n"
        "  f: {source: imagefolder, root: '${data_root}/f'}\n"
        "benchmarks:\n  b: {classes: [a], id: {train: f, test: f}, ood: {far: [o]}}\n")
    cat = load_catalogue(tmp_path / "b.yaml")
    fp, n = current_sample_list(cat, "o")
    assert n == 2 and current_sample_list(cat, "f") is None  # a folder needs its data: entry compared only
    attrs = {"dataset": "o", "sample_fingerprint": fp, "n_total": 2,
             "catalogue_spec": {"source": "imglist", "list": "ood.txt", "root": "${data_root}/x", "ood": True}}
    assert entry_problems(attrs, "o", cat) == []
    lst.write_text("a.png 0\nb.png 0\nc.png 0\n")
    (problem,) = entry_problems(attrs, "o", cat)
    assert "2 samples are not the 3 samples" in problem


# --- extract --overwrite ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def _one_split(tmp_path_factory, _cache):
    store = tmp_path_factory.mktemp("one") / "s"
    key = api.extract(benchmark="digits", store=store, datasets=[NEAR], device="cpu")
    return store, key


@pytest.fixture()
def one_split(_one_split, tmp_path):
    """A store holding only digits-5to9 (a fresh copy per test)."""
    store = tmp_path / "s"
    shutil.copytree(_one_split[0], store)
    return store, Store(store).features_path(_one_split[1], NEAR)


def _extract(store, **kw):
    return api.extract(benchmark="digits", store=store, datasets=[NEAR], device="cpu", **kw)


def _mark(path):
    with h5py.File(path, "a") as f:
        f["image_embeds"][0, 0] = 123.0
        return f.attrs["created"]


def test_overwrite_replaces_a_complete_file(one_split):
    store, path = one_split
    created = _mark(path)
    _extract(store)  # without --overwrite: reused
    assert FeatureFile(path).load("image_embeds")[0, 0] == 123.0
    _extract(store, overwrite=True)
    ff = FeatureFile(path)
    # the marked value is gone: the file was extracted again ("created" has 1 s resolution, so
    # it may equal the first extraction's when both ran within one second)
    assert ff.load("image_embeds")[0, 0] != 123.0 and ff.attrs["created"] >= created and len(ff) == 359
    assert not list(store.rglob("*.lock")) and not list(store.rglob("*.partial"))


def test_overwrite_replaces_an_incomplete_file(one_split):
    store, path = one_split
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(OodbenchError, match="not marked complete: pass --overwrite"):
        _extract(store)
    _extract(store, overwrite=True)
    assert FeatureFile(path).attrs["complete"] is True


def test_overwrite_replaces_a_truncated_file(one_split):
    store, path = one_split
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(OodbenchError, match="not a readable HDF5 file.*pass --overwrite"):
        _extract(store)
    _extract(store, overwrite=True)
    assert len(FeatureFile(path)) == 359


def test_overwrite_starts_over_instead_of_resuming(one_split):
    """A partial file from an earlier run is discarded, not resumed, under --overwrite."""
    store, path = one_split
    partial = path.with_name(path.name + ".partial")
    shutil.copyfile(path, partial)
    with h5py.File(partial, "a") as f:  # looks like a resumable run that stopped at sample 200
        f.attrs.update({"complete": False, "n_processed": 200, "n_rows": 200})
        f["image_embeds"][:200] = 7.0
    path.unlink()  # only the partial file: a plain rerun would resume it
    _extract(store, overwrite=True)
    assert not (FeatureFile(path).load("image_embeds")[:200] == 7.0).any()


def test_no_lock_files_left_after_extraction(digits_store):
    assert not list(digits_store["store"].rglob("*.lock"))


# --- what the catalogue is allowed to say ----------------------------------------------------


def _label_bench(tmp_path, label):
    (tmp_path / "data").mkdir()
    (tmp_path / "train.txt").write_text(f"a.png 0\n# comment\nb.png 1\nc.png {label}\n")
    (tmp_path / "b.yaml").write_text(
        "datasets:\n"
        "  tr: {source: imglist, list: train.txt}\n"
        "  te: {source: imglist, list: train.txt}\n"
        "  o: {source: noise, n: 4}\n"
        "benchmarks:\n  b: {classes: [a, b, c, d, e], id: {train: tr, test: te}, ood: {far: [o]}}\n")
    return tmp_path / "b.yaml"


def test_label_out_of_range_refused_at_extract_with_line_and_class_count(tmp_path):
    bench = _label_bench(tmp_path, 5)
    with pytest.raises(OodbenchError) as exc:
        api.extract("oodbench-tiny", "digits", benchmark="b", benchmarks=bench, data_root=tmp_path / "data",
                    store=tmp_path / "s", device="cpu")
    msg = str(exc.value)
    assert f"{tmp_path / 'train.txt'}:4: label 5" in msg and "has 5 classes (labels 0..4" in msg
    assert not (tmp_path / "s").exists()  # refused before anything was written


@pytest.mark.parametrize("section,name", [("datasets", "../evil"), ("datasets", "a/b"),
                                          ("benchmarks", "../../x"), ("benchmarks", ".hidden")])
def test_unsafe_names_refused_when_the_catalogue_is_read(tmp_path, section, name):
    ds, bn = (name if section == "datasets" else "d"), (name if section == "benchmarks" else "b")
    (tmp_path / "b.yaml").write_text(
        f"datasets:\n  '{ds}': {{source: noise, n: 4}}\n"
        f"benchmarks:\n  '{bn}': {{classes: [a], id: {{train: '{ds}', test: '{ds}'}}, ood: {{far: ['{ds}']}}}}\n")
    with pytest.raises(OodbenchError) as exc:
        load_catalogue(tmp_path / "b.yaml")
    msg = str(exc.value)
    assert str(tmp_path / "b.yaml") in msg and f"{section}.{name}" in msg and "file name" in msg
    assert "\n" not in msg


def test_shipped_catalogue_passes_the_name_check():
    cat = load_catalogue()
    assert "digits-5to9" in cat.datasets and "imagenet-openood-v1.5" in cat.benchmarks


def test_image_list_fast_fingerprint_equals_the_source_definition(tmp_path):
    from oodbench.data.base import Source
    from oodbench.data.imglist import ImageListSource

    ids = ['plain/a.png', 'sp ace/b c.jpg', 'quo"te\\back.png', 'ünï/cödé.png', 'tab\tin.png', 'x' * 300]
    (tmp_path / "l.txt").write_text("".join(f"{p} {i}\n" for i, p in enumerate(ids)), encoding="utf-8")
    for ood in (False, True):
        src = ImageListSource("l", tmp_path / "l.txt", ".", ood=ood)
        assert src.ids() == ids
        assert src.fingerprint() == Source.fingerprint(src)


# --- fit cache and last_run.json ---------------------------------------------------------------


def test_fit_cache_hits_across_runs_that_rewrite_model_h5(digits_store, tmp_path):
    """`oodbench run` rewrites model.h5 every time (same content): its fits must still hit."""
    from oodbench import fitcache
    from oodbench.extract import ExtractOptions

    store, key = _copy(digits_store, tmp_path)
    model = Store(store).model_path(key)
    folder = fitcache.cache_dir(Store(store).scores_path(key, "digits"))
    opts = dict(layers="all", local=True, device="cpu")  # the fixture's extraction: features cached
    first = {r.method: r for r in api.run(methods=["mahalanobis", "vim"], store=store,
                                          options=ExtractOptions(**opts))}
    created, n_fits = h5py.File(model, "r").attrs["created"], len(list(folder.glob("*.h5")))
    import time

    time.sleep(1.1)  # `created` has one-second resolution
    second = {r.method: r for r in api.run(methods=["mahalanobis", "vim"], store=store,
                                           options=ExtractOptions(**opts))}
    assert h5py.File(model, "r").attrs["created"] != created  # model.h5 was rewritten
    assert {m: r.provenance["fit_cache"] for m, r in second.items()} == {"mahalanobis": "hit", "vim": "hit"}
    assert len(list(folder.glob("*.h5"))) == n_fits
    for m in first:
        np.testing.assert_array_equal(first[m].id_scores, second[m].id_scores)


def test_fit_cache_is_bounded_least_recently_used_first(digits_store, tmp_path, monkeypatch):
    from oodbench import fitcache

    store, key = _copy(digits_store, tmp_path)
    folder = fitcache.cache_dir(Store(store).scores_path(key, "digits"))
    monkeypatch.setenv("OODBENCH_FIT_CACHE_FILES", "3")

    def knn(k):
        (r,) = api.score(["knn"], store=store, params=[f"knn.k={k}"])
        return r.provenance["fit_cache"], Path(r.provenance["fit_file"]).name

    _, f1 = knn(1)
    for k in (2, 3):
        knn(k)
    assert len(list(folder.glob("*.h5"))) == 3  # the fixture's fits were the least recently used
    assert knn(1) == ("hit", f1)  # k=1 is now the most recently used ...
    knn(4)
    knn(5)
    names = {p.name for p in folder.glob("*.h5")}
    assert len(names) == 3 and f1 in names  # ... so k=2 and k=3 went first


def test_last_run_is_found_from_another_directory(digits_store, tmp_path, monkeypatch):
    store, key = _copy(digits_store, tmp_path)
    monkeypatch.chdir(tmp_path)
    api.score(["msp"], store="store")  # a relative --store, as typed
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    res = CliRunner().invoke(app, ["report", "--store", str(store), "-f", "csv"])
    assert res.exit_code == 0, res.output
    assert "msp" in res.output


def test_changed_shift_set_is_refused_not_scored(digits_store, tmp_path):
    """The covariate-shift sets are checked like the ID and OoD splits before anything is scored."""
    store, _ = _copy(digits_store, tmp_path)
    text = PACKAGE_CATALOGUE.read_text()
    old = "digits-shifted: {source: shifted_digits, digits: [0, 1, 2, 3, 4], split: test, severity: 3, seed: 0}"
    assert text.count(old) == 1
    bench = tmp_path / "benchmarks.yaml"
    bench.write_text(text.replace(old, old.replace("severity: 3", "severity: 5")))
    res = CliRunner().invoke(app, ["score", "-m", "msp", "--store", str(store), "--benchmarks", str(bench)])
    line = _one_error_line(res)
    assert "digits-shifted.h5 is stale" in line and "severity" in line


def test_verify_reports_a_scalar_dataset_instead_of_crashing(digits_store, tmp_path):
    store, key = _copy(digits_store, tmp_path)
    path = Store(store).features_path(key, NEAR)
    with h5py.File(path, "a") as f:
        f["junk"] = 1.0
    bad = {f.path.name: f.message for f in verify_store(store) if not f.ok}
    assert list(bad) == [f"{NEAR}.h5"] and "junk is a scalar" in bad[f"{NEAR}.h5"]


def test_a_key_given_twice_in_the_benchmarks_file_is_refused(tmp_path):
    text = PACKAGE_CATALOGUE.read_text()
    line = "  digits-5to9: {source: digits, digits: [5, 6, 7, 8, 9], split: test, ood: true}\n"
    assert text.count(line) == 1
    bench = tmp_path / "benchmarks.yaml"
    bench.write_text(text.replace(line, line + line.replace("[5, 6, 7, 8, 9]", "[5]")))
    with pytest.raises(OodbenchError, match=r"key 'digits-5to9' is given twice \(lines \d+ and \d+\): keep one"):
        load_catalogue(bench)


def test_scores_of_replaced_features_are_not_kept_beside_new_ones(digits_store, tmp_path):
    """After a dataset is re-extracted (--overwrite), scoring one method drops the stored groups
    of the others (computed from the old file) with a warning, instead of reporting both."""
    from oodbench.results import load_records

    store, key = _copy(digits_store, tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["score", "-m", "msp,energy", "--store", str(store)]).exit_code == 0
    scores = Store(store).scores_path(key, "digits")
    assert {r.method for r in load_records(scores)} >= {"msp", "energy"}
    res = runner.invoke(app, ["extract", "-b", "digits", "--dataset", NEAR, "--store", str(store),
                              "--device", "cpu", "--overwrite", "--layers", "all", "--local"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["score", "-m", "energy", "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "dropped the scores of" in " ".join(res.output.split()) and "msp" in res.output
    methods = {r.method for r in load_records(scores)}
    assert "energy" in methods and "msp" not in methods


def test_list_under_a_relative_data_root_is_found_as_extract_finds_it(tmp_path, monkeypatch):
    """``${data_root}`` in a list path, from a relative $OODBENCH_DATA, resolves from the working
    directory (as extract resolves it), not from the benchmarks file's folder."""
    from oodbench.verify import current_sample_list

    (tmp_path / "work" / "data").mkdir(parents=True)
    (tmp_path / "work" / "data" / "ood.txt").write_text("a.png 0\nb.png 0\n")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "b.yaml").write_text(
        "datasets:\n"
        "  o: {source: imglist, list: '${data_root}/ood.txt', root: '${data_root}/x', ood: true}\n"
        "  f: {source: imagefolder, root: '${data_root}/f'}\n"
        "benchmarks:\n  b: {classes: [a], id: {train: f, test: f}, ood: {far: [o]}}\n")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("OODBENCH_DATA", "data")
    found = current_sample_list(load_catalogue(tmp_path / "cat" / "b.yaml"), "o")
    assert found is not None and found[1] == 2
