"""End to end on the offline digits world: the tiny model, extract -> score -> report, the CLI."""

import json

import numpy as np
import torch
from typer.testing import CliRunner

from oodbench import api
from oodbench.cli import app
from oodbench.metrics import evaluate
from oodbench.store import FeatureFile, Store

runner = CliRunner()


def test_tiny_model_zero_shot_accuracy(digits_store):
    """A real model: zero-shot accuracy on the held-out ID test digits is at least 0.85."""
    acc = digits_store["records"]["mcm"].accuracy
    assert acc >= 0.85


def test_mcm_separates_near_and_far(digits_store):
    r = digits_store["records"]["mcm"]
    assert evaluate(r.id_scores, r.ood_scores["digits-5to9"])["auroc"] >= 0.8
    assert evaluate(r.id_scores, r.ood_scores["noise-uniform"])["auroc"] >= 0.8


def test_store_contents(digits_store):
    st = Store(digits_store["store"])
    key = digits_store["key"]
    f = FeatureFile(st.features_path(key, "digits-id-test"))
    assert f.shapes["image_embeds"] == (len(f), 64) and f.shapes["penultimate"] == (len(f), 96)
    assert f.shapes["layers/cls"] == (len(f), 3, 96) and f.shapes["local_embeds"] == (len(f), 16, 64)
    a = f.attrs
    for k in ("model_fingerprint", "sample_fingerprint", "format_version", "preprocess", "created", "oodbench_version"):
        assert a[k], k
    assert a["complete"] and set(np.unique(f.load("labels"))) == {0, 1, 2, 3, 4}


def test_stored_features_match_the_model(digits_store):
    """image_embeds = encode_image; penultimate @ proj = embeds; last layer CLS through ln_post = penultimate."""
    from oodbench.config import load_catalogue
    from oodbench.models import load_model

    st = Store(digits_store["store"])
    f = FeatureFile(st.features_path(digits_store["key"], "digits-id-test"))
    bundle = load_model()
    src = load_catalogue().source("digits-id-test")
    x = torch.stack([bundle.preprocess(src.load(i)) for i in range(8)])
    with torch.no_grad():
        ref = bundle.model.encode_image(x).numpy()
        v = bundle.model.visual
        last = torch.from_numpy(f.load("layers/cls")[:8, -1])
        pen_from_layer = v.ln_post(last).numpy()
    np.testing.assert_allclose(f.load("image_embeds")[:8], ref, atol=1e-5)
    np.testing.assert_allclose(f.load("penultimate")[:8] @ v.proj.detach().numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(pen_from_layer, f.load("penultimate")[:8], atol=1e-5)


def test_cli_run_then_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["run"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "oodbench_store" / "last_run.json").exists()
    res = runner.invoke(app, ["report", "--latex"])
    assert res.exit_code == 0, res.output
    assert "\\toprule" in res.output and "\\textbf{" in res.output
    for m in api.SPINE_METHODS:
        assert m in res.output, m
    res = runner.invoke(app, ["report", "--format", "json", "-o", "r.json"])
    assert res.exit_code == 0, res.output
    payload = json.loads((tmp_path / "r.json").read_text())
    assert "provenance" in payload
    # a second run reuses every cached feature file
    res = runner.invoke(app, ["run", "--method", "mcm"])
    assert res.exit_code == 0 and "cached" in res.output


def test_score_param_override_and_errors(digits_store):
    st = digits_store["store"]
    recs = api.score(["knn"], store=st, params=["knn.k=5"])
    assert recs[0].params["k"] == 5
    res = runner.invoke(app, ["score", "--store", str(st), "-m", "knnn"])
    assert res.exit_code == 1 and "Did you mean 'knn'" in res.output
    res = runner.invoke(app, ["score", "--store", str(st), "-m", "knn", "-p", "knn.k=0"])
    assert res.exit_code == 1 and "must be an int ≥ 1. Got '0' instead" in res.output
    res = runner.invoke(app, ["score", "--store", str(st), "-b", "digitz"])
    assert res.exit_code == 1 and "Unknown benchmark 'digitz'" in res.output


def test_tune_picks_on_validation_only(digits_store):
    recs = api.score(["knn", "energy"], store=digits_store["store"], tune=True, params=["energy.temperature=1"])
    knn, energy = recs
    t = knn.provenance["tuning"]
    assert t["tuned"] and t["ood_val"] == ["digits-5to9-val", "textures-synth-val"]
    assert knn.params["k"] == t["chosen"]["k"] and len(t["trials"]) == len(knn_space())
    best = max((x for x in t["trials"] if "val_auroc" in x), key=lambda x: x["val_auroc"])
    assert best["params"]["k"] == knn.params["k"]
    assert energy.provenance["tuning"] == {"tuned": False, "reason": "no free parameter to tune"}


def knn_space():
    from oodbench.scorers import get_scorer

    return get_scorer("knn").search_space["k"]


def test_score_all_skips_what_the_store_cannot_feed(digits_store, tmp_path):
    import shutil

    store = tmp_path / "s"
    shutil.copytree(digits_store["store"], store)
    res = runner.invoke(app, ["score", "--store", str(store), "-m", "all"])
    assert res.exit_code == 0, res.output
    assert "skipping" in res.output and "neglabel" in res.output and "anchored_mcm" in res.output
    from oodbench.api import load_scores

    methods = {r.method for r in load_scores(store=store)}
    assert {"vim", "glmcm", "layer_mcm", "react", "openmax", "text_residual"} <= methods
    assert "neglabel" not in methods


def test_cli_inspect(digits_store):
    res = runner.invoke(app, ["inspect", "--store", str(digits_store["store"]), "-f", "markdown"])
    assert res.exit_code == 0, res.output
    assert "layer:0" in res.output and "embeds" in res.output


def test_readme_custom_scorer_is_a_working_plugin(digits_store, tmp_path):
    """The README's complete custom scorer (< 25 lines) plugs in like a built-in."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(# my_scores.py.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) < 25
    plugin = tmp_path / "my_scores.py"
    plugin.write_text(code)
    res = runner.invoke(app, ["score", "--store", str(digits_store["store"]), "--plugin", str(plugin),
                              "-m", "cosine_margin,mcm"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["list", "methods", "--plugin", str(plugin)])
    assert "cosine_margin" in res.output
