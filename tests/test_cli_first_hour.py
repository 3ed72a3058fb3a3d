"""A user's first hour: the design card's commands as typed, ``-m all`` past a scorer that cannot
fit, readable progress, and a package face that does not load torch for light commands."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import types

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from oodbench import api
from oodbench.cli import app
from oodbench.store import Store, read_h5

runner = CliRunner()

# The tiny model's attention blocks, as CLIP-LoRA's save_lora numbers them with encoder "both":
# text blocks first (width 64), then the vision blocks (width 96).
_TINY_BLOCKS = [64, 64, 96, 96, 96]


def _clip_lora(path, seed: int, r: int = 2) -> None:
    """A CLIP-LoRA checkpoint for the tiny model (save_lora's layout: weights/layer_i/<proj>)."""
    g = torch.Generator().manual_seed(seed)
    weights = {f"layer_{i}": {p: {"w_lora_A": torch.randn(r, w, generator=g) * 0.05,
                                  "w_lora_B": torch.randn(w, r, generator=g) * 0.05}
                              for p in ("q_proj", "v_proj")}
               for i, w in enumerate(_TINY_BLOCKS)}
    meta = {"r": r, "alpha": 2, "encoder": "both", "params": ["q_proj", "v_proj"], "position": "all"}
    torch.save({"weights": weights, "metadata": meta}, path)


def test_card_commands_as_typed(digits_store, tmp_path, monkeypatch):
    """extract --ckpt ft_lora.pt beside the zero-shot model, score --method vim, report --latex:
    every model of the store is scored and the report compares them."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(digits_store["store"], tmp_path / "oodbench_store")
    base = digits_store["key"]
    _clip_lora(tmp_path / "ft_lora.pt", seed=0)
    res = runner.invoke(app, ["extract", "--ckpt", "ft_lora.pt", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    st = Store(tmp_path / "oodbench_store")
    (ft,) = [k for k in st.model_keys() if k != base]
    res = runner.invoke(app, ["score", "--method", "vim"])
    assert res.exit_code == 0, res.output
    assert "several models" not in res.output
    assert "scoring 2 model(s) of oodbench_store on digits" in " ".join(res.output.split())
    res = runner.invoke(app, ["report", "--latex"])
    assert res.exit_code == 0, res.output
    labels = {k: read_h5(st.model_path(k))[1].get("label", k) for k in (base, ft)}
    tex = res.output
    assert "\\toprule" in tex
    for label in labels.values():
        assert label.replace("_", "\\_") in tex, (label, tex)
    recs = api.load_scores(store=st.root)
    vim = {r.model_key: r for r in recs if r.method == "vim"}
    assert set(vim) == {base, ft} and {r.model_key for r in recs} == {base, ft}
    assert not np.allclose(vim[base].id_scores, vim[ft].id_scores)  # two models, two sets of scores
    # --model-key still picks one; the Python API scores every ready model the same way
    res = runner.invoke(app, ["score", "--method", "msp", "--model-key", ft])
    assert res.exit_code == 0, res.output
    assert {r.model_key for r in api.load_scores(store=st.root)} == {ft}
    # a third model with only one split extracted is left out, and the line says so
    _clip_lora(tmp_path / "other.pt", seed=1)
    third = api.extract(benchmark="digits", ckpt=tmp_path / "other.pt", store=st.root,
                        datasets=["digits-id-test"], device="cpu")
    recs = api.score(["msp"], store=st.root)
    assert {r.model_key for r in recs} == {base, ft} and third not in {r.model_key for r in recs}


def _rotate_class_bank(store, key) -> None:
    """Rewrite the class text bank with the class names rotated by one: the zero-shot head then
    predicts digit d as class d-1, so no train sample of a class is correctly classified."""
    from oodbench.config import load_catalogue
    from oodbench.extract import write_text_bank
    from oodbench.models import load_model

    bench = load_catalogue().benchmark("digits")
    bundle = load_model()
    assert bundle.key == key
    names = list(bench.classes[1:]) + [bench.classes[0]]
    write_text_bank(bundle, Store(store), "digits-classes", names, bench.templates)


def test_score_all_skips_a_scorer_that_cannot_fit(digits_store, tmp_path):
    """-m all: SHE and OpenMax need correctly classified train samples of every class; on a store
    where there are none they are skipped with their reason, the rest is scored and saved. Named
    explicitly, SHE still fails the run with its one-line reason."""
    store = tmp_path / "s"
    shutil.copytree(digits_store["store"], store)
    _rotate_class_bank(store, digits_store["key"])
    res = runner.invoke(app, ["score", "--store", str(store), "-m", "all"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    for name in ("she", "openmax"):
        assert re.search(f"-m all: skipped {name}: class \\d+ has \\d+ correctly classified train sample", out), out
    methods = {r.method for r in api.load_scores(store=store)}
    assert {"msp", "energy", "knn", "vim", "mahalanobis", "mcm"} <= methods
    assert "she" not in methods and "openmax" not in methods
    with h5py.File(Store(store).scores_path(digits_store["key"], "digits"), "r") as f:  # the file records it
        skipped = json.loads(f.attrs["skipped"])
    assert "she" in skipped and "correctly classified" in skipped["she"]
    res = runner.invoke(app, ["score", "--store", str(store), "-m", "she"])
    assert res.exit_code == 1 and "correctly classified train sample(s)" in res.output
    assert "Traceback" not in res.output


def _capture_console(monkeypatch) -> io.StringIO:
    from rich.console import Console

    import oodbench.console as console

    buf = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=buf, width=160))
    return buf


def test_extract_progress_shows_seconds_per_image(tmp_path, monkeypatch):
    """A step slower than a second per image reads "s/img", never "0 img/s"."""
    import oodbench.extract as ex

    clock = iter(np.arange(0.0, 1e6, 100.0))  # every time.time() call: 100 s later
    monkeypatch.setattr(ex, "time", types.SimpleNamespace(time=lambda: float(next(clock))))
    buf = _capture_console(monkeypatch)
    api.extract(benchmark="digits", store=tmp_path / "s", datasets=["digits-id-val"], device="cpu",
                batch_size=30)
    text = buf.getvalue()
    assert "extract digits-id-val" in text and "s/img" in text and "0 img/s" not in text


def test_rate_text():
    from oodbench.console import rate_text

    assert rate_text(5000, 2.0) == "2,500 img/s"
    assert rate_text(5, 2.0) == "2.5 img/s"
    assert rate_text(2, 5.0) == "2.5 s/img" and rate_text(0, 1.0) == ""


def test_large_text_bank_shows_a_progress_bar(monkeypatch):
    """Encoding 1,000 classes × 80 templates (80,000 prompts) reports its progress in prompts."""
    from oodbench.text import encode_text_bank

    class Bag(torch.nn.Module):  # a cheap text tower: the mean of the token embeddings
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(1000, 8)

        def encode_text(self, tokens):
            return self.emb(tokens).mean(1)

    def tokenizer(texts):
        return torch.tensor([[hash(t) % 1000, len(t) % 1000] for t in texts])

    buf = _capture_console(monkeypatch)
    names, templates = [f"class {i}" for i in range(1000)], [f"t{j} {{}}" for j in range(80)]
    emb = encode_text_bank(Bag(), tokenizer, names, templates, batch_size=8192, label="text imagenet-classes")
    assert emb.shape == (80, 1000, 8)
    text = buf.getvalue()
    assert "text imagenet-classes" in text and "80000/80000" in text and "prompt/s" in text
    buf.truncate(0)
    encode_text_bank(Bag(), tokenizer, names[:5], templates[:2])  # one batch: no bar
    assert buf.getvalue() == ""


def _imports_after(code: str) -> set[str]:
    res = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(res.stdout.split())


def test_light_package_face():
    """The metrics, `from oodbench import ...` and `oodbench.report` do not load torch/open_clip."""
    mods = _imports_after("import oodbench.metrics")
    assert "torch" not in mods and "open_clip" not in mods
    mods = _imports_after("from oodbench import extract, score, report, run, load_scores, OodbenchError\n"
                          "import oodbench.report\nassert callable(report) and oodbench.report is report\n"
                          "from oodbench.report import metrics_table")
    assert "torch" not in mods and "open_clip" not in mods
    # the scorer registry: every built-in's face (needs, fit split, reference, parameters, search
    # space) and a default instance, without the compute paths' torch
    mods = _imports_after("from oodbench.scorers import get_scorer, make_scorer, scorer_names\n"
                          "names = scorer_names()\nassert {'msp', 'vim', 'knn', 'neglabel'} <= set(names)\n"
                          "for n in names:\n    c = get_scorer(n); c.describe(); make_scorer(n)\n"
                          "    assert c.needs and c.reference and set(c.search_space) <= set(c.params)")
    assert "torch" not in mods and "open_clip" not in mods


@pytest.mark.parametrize("args", [["--help"], ["report"], ["list", "benchmarks"], ["list", "methods"],
                                  ["list", "models"], ["verify"], ["score", "--help"]])
def test_light_cli_commands_do_not_import_torch(digits_store, args):
    """`--help`, `report` (of the digits store's last run: score files only), `list benchmarks`,
    `list methods` (every registered scorer), `list models`, `verify` and `score --help` stay light."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['oodbench', *{args!r}]\n"
            "try:\n    runpy.run_module('oodbench', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code")
    res = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\nMODULES', ' '.join(sys.modules))"],
                         capture_output=True, text=True, cwd=digits_store["store"].parent,
                         env={**os.environ, "OODBENCH_STORE": str(digits_store["store"])})
    assert res.returncode == 0, res.stderr
    mods = set(res.stdout.split("MODULES", 1)[1].split())
    assert "torch" not in mods and "open_clip" not in mods
    if args == ["report"]:
        assert "mcm" in res.stdout
    if args == ["list", "methods"]:
        assert "neglabel" in res.stdout and "vim" in res.stdout


def test_run_documents_its_model_options_and_takes_workers(monkeypatch):
    res = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for opt in ("--model", "--pretrained", "--ckpt", "--workers"):
        assert opt in text
    assert "open_clip model name" in text and "weights file" in text and "Fine-tuned checkpoint" in text
    seen = {}

    def fake_run(benchmark, **kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(api, "run", fake_run)
    res = runner.invoke(app, ["run", "--workers", "3"])
    assert seen["options"].workers == 3
    assert res.exit_code == 1 and "No scores to report" in res.output  # the fake ran nothing


def test_list_benchmarks_at_80_columns_cuts_no_name():
    """Every benchmark and dataset name of the shipped catalogue appears whole at 80 columns."""
    from typer.testing import CliRunner

    from oodbench.cli import app
    from oodbench.config import load_catalogue

    res = CliRunner().invoke(app, ["list", "benchmarks"], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output
    assert max(map(len, res.output.splitlines())) <= 80
    words = set(res.output.replace(",", " ").replace(";", " ").split())
    cat = load_catalogue()
    for b in cat.benchmarks.values():
        assert b.name in words
        for d in (b.id_train, b.id_test, *b.ood, *b.shift):
            assert d in words, d
