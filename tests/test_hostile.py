"""Hostile input through the CLI: each case is one line on stderr naming the file, a non-zero
exit, no traceback, and (for damaged stores) every file of the store left as it was.

The hostile inputs are made here (damaged copies of the session digits store, generated YAML,
random bytes), never shipped.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from oodbench.cli import app

RANDOM = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)) + b"\xff\xfe\x80"


def run(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args])


def fails(args: list, *names, alone: bool = True) -> str:
    """Run the CLI, assert a clean one-line failure that names each of ``names``; return it.

    ``alone``: stderr holds nothing but that line (False where progress came first: extract).
    """
    res = run(args)
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), f"uncaught {res.exception!r}"  # no traceback
    assert "Traceback" not in res.output
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr
    line = errors[0]
    assert res.stderr.rstrip().endswith(line), res.stderr  # the error is the last thing said
    if alone:
        assert res.stderr.strip() == line, res.stderr
    for name in names:
        assert str(name) in line, (name, line)
    return line


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (lock files aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture
def store(digits_store, tmp_path) -> tuple[Path, str]:
    """A private copy of the session digits store (the tests damage it)."""
    dst = tmp_path / "store"
    shutil.copytree(digits_store["store"], dst, ignore=shutil.ignore_patterns("*.lock", "fitcache*"))
    return dst, digits_store["key"]


def truncate(path: Path, n: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:n])


# --- unreadable HDF5 files in a store --------------------------------------------------------

@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_unreadable_feature_file(store, damage):
    root, key = store
    bad = root / key / "features" / "digits-id-test.h5"  # read by every command below
    truncate(bad, 0 if damage == "empty" else 2000)
    before = snapshot(root)
    for args in (["score", "--store", root, "-m", "msp,knn"],
                 ["inspect", "--store", root],
                 ["extract", "-b", "digits", "--store", root, "--device", "cpu", "--layers", "all", "--local"]):
        hint = "pass --overwrite" if args[0] == "extract" else "rerun `oodbench extract`"  # extract reuses files
        line = fails(args, bad, hint, alone=args[0] != "extract")  # extract: progress first
        assert "not a readable HDF5 file" in line
    assert {k: v for k, v in snapshot(root).items() if "/features/" in k or "/scores/" in k} == \
        {k: v for k, v in before.items() if "/features/" in k or "/scores/" in k}


def test_verify_lists_unreadable_files_and_exits_1(store):
    root, key = store
    damaged = [root / key / "features" / "digits-5to9.h5", root / key / "text" / "digits-classes.h5",
               root / key / "scores" / "digits.h5"]
    truncate(damaged[0], 1500)
    truncate(damaged[1], 0)
    damaged[2].write_bytes(RANDOM)
    before = snapshot(root)
    res = run(["verify", root])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert "3 of" in res.stderr and "problem" in res.stderr
    table = res.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    for p in damaged:
        assert p.name in table
    assert table.count("notareadableHDF5file") == 3
    assert snapshot(root) == before


def test_unreadable_model_file(store):
    root, key = store
    model = root / key / "model.h5"
    truncate(model, 0)
    before = snapshot(root)
    fails(["score", "--store", root, "-m", "msp"], model, "rerun `oodbench extract`")
    fails(["list", "models", "--store", root], model)
    fails(["inspect", "--store", root], model)
    assert snapshot(root) == before


def test_unreadable_text_bank(store):
    root, key = store
    bank = root / key / "text" / "digits-classes.h5"
    truncate(bank, 700)
    before = snapshot(root)
    fails(["score", "--store", root, "-m", "mcm"], bank, "not a readable HDF5 file")
    assert snapshot(root) == before


def test_unreadable_scores_file_and_not_hdf5(store, tmp_path):
    root, key = store
    scores = root / key / "scores" / "digits.h5"
    truncate(scores, 0)
    before = snapshot(root)
    fails(["report", scores], scores, "rerun `oodbench score`")
    res = run(["score", "--store", root, "-m", "msp"])  # new scores would merge into it
    assert res.exit_code == 1 and "score ━" not in res.stderr  # refused before scoring, not after
    fails(["score", "--store", root, "-m", "msp"], scores, "rerun `oodbench score`")
    assert snapshot(root) == before
    notes = tmp_path / "notes.txt"
    notes.write_text("not a scores file\n")
    fails(["report", notes], notes, "pass a scores file written by `oodbench score`")


def test_feature_datasets_of_unequal_rows(store):
    root, key = store
    path = root / key / "features" / "digits-5to9.h5"
    with h5py.File(path, "a") as f:
        labels = f["labels"][()]
        del f["labels"]
        f["labels"] = labels[:-3]
    before = snapshot(root)
    line = fails(["score", "--store", root, "-m", "msp"], path, "'labels'", f"{len(labels) - 3} rows")
    assert f"n_rows={len(labels)}" in line
    assert snapshot(root) == before
    assert run(["verify", root]).exit_code == 1


def test_embedding_width_not_the_projection(store):
    root, key = store
    path = root / key / "features" / "digits-5to9.h5"
    with h5py.File(path, "a") as f:
        e = f["image_embeds"][()]
        del f["image_embeds"]
        f["image_embeds"] = np.concatenate([e, e], 1)
    before = snapshot(root)
    fails(["score", "--store", root, "-m", "msp"], path, "image_embeds", f"width {e.shape[1]}")
    assert snapshot(root) == before
    res = run(["verify", root])
    assert res.exit_code == 1 and "projection" in res.stdout


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", RANDOM, b'{"scores": 3}'])
def test_bad_last_run_json(store, content):
    root, _ = store
    last = root / "last_run.json"
    last.write_bytes(content)
    fails(["report", "--store", root], last, "rerun `oodbench score`")


def test_report_output_into_missing_dir_or_onto_dir(store, tmp_path):
    root, key = store
    scores = root / key / "scores" / "digits.h5"
    fails(["report", scores, "-f", "markdown", "-o", tmp_path / "nowhere" / "r.md"], tmp_path / "nowhere",
          "does not exist")
    (tmp_path / "adir").mkdir()
    fails(["report", scores, "-f", "markdown", "-o", tmp_path / "adir"], tmp_path / "adir", "is a directory")


def test_plots_of_a_constant_huge_score(store, tmp_path):
    root, key = store
    scores = root / key / "scores" / "digits.h5"
    with h5py.File(scores, "a") as f:
        g, *others = list(f)
        for other in others:  # one method is enough (and keeps the plotting fast)
            del f[other]
        f[g]["id"][...] = 1e308
        for name in f[g]["ood"]:
            f[g]["ood"][name][...] = 1e308
    res = run(["report", scores, "-f", "markdown", "--plots", tmp_path / "plots"])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "Warning" not in res.stderr
    assert list((tmp_path / "plots").glob("hist_*.png"))


def test_bogus_device_and_store_that_is_a_file(tmp_path):
    fails(["extract", "-b", "digits", "--device", "bogus", "--store", tmp_path / "s"], "'bogus'", "cpu")
    assert not (tmp_path / "s").exists()
    afile = tmp_path / "store.txt"
    afile.write_text("x")
    for args in (["score", "--store", afile], ["list", "models", "--store", afile],
                 ["extract", "-b", "digits", "--device", "cpu", "--store", afile]):
        fails(args, afile, "not a directory")
    assert afile.read_text() == "x"


# --- benchmarks.yaml and the files it names --------------------------------------------------

BASE = """
version: 1
datasets:
  train: {source: digits, digits: [0, 1], split: train}
  test: {source: digits, digits: [0, 1], split: test}
  other: {source: digits, digits: [5, 6], split: test, ood: true}
benchmarks:
  tiny:
    classes: [zero, one]
    templates: ["a photo of the digit {}."]
    model: {name: oodbench-tiny, pretrained: digits}
    id: {train: train, test: test}
    ood: {far: [other]}
"""


def bench_file(tmp_path: Path, text: str, name: str = "b.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def extract_args(yaml: Path, store: Path, *extra) -> list:
    return ["extract", "--benchmarks", yaml, "-b", "tiny", "--store", store, "--device", "cpu", *extra]


def test_binary_benchmarks_file(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_bytes(RANDOM)
    fails(extract_args(p, tmp_path / "s"), p, "not a text file")
    fails(["list", "benchmarks", "--benchmarks", p], p)


@pytest.mark.parametrize("key", ["classes", "templates"])
@pytest.mark.parametrize("value", ["5", "null", "{zero: 0}", "[]", "[zero, 3]"])
def test_classes_and_templates_must_be_lists_of_strings(tmp_path, key, value):
    old = "classes: [zero, one]" if key == "classes" else 'templates: ["a photo of the digit {}."]'
    p = bench_file(tmp_path, BASE.replace(old, f"{key}: {value}"))
    fails(extract_args(p, tmp_path / "s"), p, f"benchmarks.tiny.{key}")
    assert not (tmp_path / "s").exists()  # refused before anything was written


@pytest.mark.parametrize("split", ["test", "train"])
def test_ood_set_that_is_an_id_split(tmp_path, split):
    p = bench_file(tmp_path, BASE.replace("ood: {far: [other]}", f"ood: {{far: [other, {split}]}}"))
    fails(extract_args(p, tmp_path / "s"), p, "benchmarks.tiny.ood.far", f"ID {split} split")


def test_unknown_catalogue_version(tmp_path):
    p = bench_file(tmp_path, BASE.replace("version: 1", "version: 7"))
    fails(["list", "benchmarks", "--benchmarks", p], p, "version", "7")


def test_empty_ood_fails_before_extraction(tmp_path):
    p = bench_file(tmp_path, BASE.replace("ood: {far: [other]}", "ood: {far: []}"))
    fails(extract_args(p, tmp_path / "s"), p, "benchmarks.tiny.ood", "lists no dataset")
    assert not (tmp_path / "s").exists()


def test_dataset_entry_errors_name_the_benchmarks_file(tmp_path):
    p = bench_file(tmp_path, BASE.replace("split: test, ood: true}", "split: test, ood: true, sed: 1}"))
    fails(extract_args(p, tmp_path / "s"), p, "'sed'", "'seed'")
    q = bench_file(tmp_path, BASE.replace("{source: digits, digits: [5, 6], split: test, ood: true}",
                                          '{source: imagefolder, root: "${data_root}/x", ood: true}'), "c.yaml")
    fails(extract_args(q, tmp_path / "s"), q, "--data-root")
    fails(extract_args(q, tmp_path / "s", "--data-root", tmp_path / "nodata"), q, tmp_path / "nodata" / "x")


def test_binary_image_list_and_class_file(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_bytes(RANDOM)
    p = bench_file(tmp_path, BASE.replace("{source: digits, digits: [5, 6], split: test, ood: true}",
                                          f'{{source: imglist, list: "{lst}", root: "{tmp_path}", ood: true}}'))
    fails(extract_args(p, tmp_path / "s"), p, lst, "not UTF-8 text")
    names = tmp_path / "names.txt"
    names.write_bytes(RANDOM)
    q = bench_file(tmp_path, BASE.replace("classes: [zero, one]", "classes: file:names.txt"), "c.yaml")
    fails(["list", "benchmarks", "--benchmarks", q], q, names, "not UTF-8 text")


# --- images that cannot be read ----------------------------------------------------------------

def image_bench(tmp_path: Path, lines: list[str], expected: int | None = None) -> Path:
    (tmp_path / "imgs.txt").write_text("".join(f"{ln} -1\n" for ln in lines))
    rows = f", expected_rows: {expected}" if expected else ""
    return bench_file(tmp_path, BASE.replace(
        "{source: digits, digits: [5, 6], split: test, ood: true}",
        f'{{source: imglist, list: imgs.txt, root: "${{data_root}}/imgs", ood: true{rows}}}'))


def placeholder(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_dataset_with_no_readable_image_is_an_error(tmp_path):
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "data" / "imgs" / "b.png").write_bytes(b"not a png")
    p = image_bench(tmp_path, ["a.png", "b.png", "c/d.png", "e.png"])
    store = tmp_path / "s"
    line = fails(extract_args(p, store, "--data-root", tmp_path / "data", "--dataset", "other"),
                 "'other'", tmp_path / "data" / "imgs", tmp_path / "data" / "imgs" / "a.png", alone=False)
    assert "3 missing, 1 undecodable" in line
    features = list(store.rglob("features/*"))
    assert not [f for f in features if not f.name.endswith(".lock")]  # no file, not even a .partial


def test_mostly_unreadable_dataset_warns_loudly(tmp_path):
    root = tmp_path / "data" / "imgs"
    placeholder(root / "ok.png")
    (root / "bad1.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "bad2.png").write_bytes(b"")
    p = image_bench(tmp_path, ["ok.png", "bad1.jpg", "bad2.png", "gone1.png", "gone2.png"], expected=5)
    res = run(extract_args(p, tmp_path / "s", "--data-root", tmp_path / "data", "--dataset", "other"))
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())
    assert "skipped 4 of 5 image(s): 2 missing" in err and "2 corrupt or not an image" in err
    flat = "".join(err.split())  # the console wraps long warnings; paths hold no spaces
    assert str(root / "gone1.png") in flat and str(root / "bad1.jpg") in flat
    assert "MOST IMAGES UNREADABLE: other: only 1 of 5 images were readable" in err
    assert "other: 1 rows extracted, the benchmarks file expects 5" in err


def test_relative_data_root_is_joined_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    placeholder(tmp_path / "data" / "root" / "imgs" / "ok.png")
    p = image_bench(tmp_path, ["ok.png"])
    res = run(extract_args(p.name, Path("s"), "--data-root", "data/root", "--dataset", "other"))
    assert res.exit_code == 0, res.output
    assert "unreadable" not in res.stderr.lower()
