"""CLI/API wiring of extraction options: negative-label banks, WiSE-FT alphas, CoOp contexts."""

import shutil

import numpy as np
import torch
from typer.testing import CliRunner

from oodbench import api
from oodbench.cli import app
from oodbench.metrics import auroc
from oodbench.models import load_model
from oodbench.negatives import load_corpus
from oodbench.store import Store, read_h5

runner = CliRunner()


def test_negative_banks_feed_neglabel_and_csp(digits_store, tmp_path):
    """NegLabel with the shipped published nouns/adjectives; CSP's banks from user word files."""
    store = tmp_path / "s"
    shutil.copytree(digits_store["store"], store)
    api.extract(benchmark="digits", store=store, negatives="neglabel", layers="all", local=True, device="cpu")
    key = digits_store["key"]
    arrays, attrs = read_h5(Store(store).text_path(key, "digits-negatives"))
    assert attrs["templates"] == ["the nice {}"] and arrays["embeds"].shape[1] == 57_189
    assert attrs["names"] == load_corpus("neglabel-nouns")  # NegLabel's published nouns, unfiltered
    nouns, adjs = tmp_path / "nouns.txt", tmp_path / "adjs.txt"
    nouns.write_text("\n".join(["zero", "cat", "house", "river", "car", "tree", "seven", "lamp"] * 1) + "\n")
    adjs.write_text("red\nwooden\nshiny\nold\n")
    api.extract(benchmark="digits", store=store, negatives="csp", negative_words=(str(nouns), str(adjs)),
                layers="all", local=True, device="cpu")
    banks = {p.stem for p in (Store(store).model_dir(key) / "text").glob("*.h5")}
    assert {"digits-negatives", "digits-negatives_adj", "digits-classes_neglabel", "digits-classes_csp",
            "digits-negatives_csp", "digits-negatives_csp_nouns"} <= banks
    _, csp = read_h5(Store(store).text_path(key, "digits-negatives_csp_nouns"))
    # as the reference: ID names are not filtered out; CSP's prompts averaged raw
    assert "zero" in csp["names"] and csp["templates"][0].startswith("raw-mean ensemble of 8")
    recs = {r.method: r for r in api.score(["neglabel", "csp"], store=store, params=["csp.ngroup=1"])}
    assert auroc(recs["neglabel"].id_scores, recs["neglabel"].ood_scores["digits-5to9"]) > 0.8
    assert np.isfinite(recs["csp"].id_scores).all()


def test_wise_alphas_from_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = load_model()
    ft = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
          for k, v in base.model.state_dict().items()}
    torch.save(ft, tmp_path / "ft.pt")
    res = runner.invoke(app, ["extract", "--ckpt", "ft.pt", "--dataset", "digits-id-test", "--device", "cpu",
                              "--wise-alpha", "0", "--wise-alpha", "1"])
    assert res.exit_code == 0, res.output
    keys = Store("oodbench_store").model_keys()
    assert len(keys) == 2 and any("wise0" in k for k in keys) and any("wise1" in k for k in keys)
    fps = {read_h5(Store("oodbench_store").model_path(k))[1]["fingerprint"] for k in keys}
    assert base.fingerprint in fps  # alpha 0 reproduces the base exactly
    res = runner.invoke(app, ["extract", "--wise-alpha", "0.5"])
    assert res.exit_code == 1 and "pass --ckpt too" in res.output


def test_coop_context_becomes_the_class_bank(tmp_path):
    base = load_model()
    tok = base.tokenizer(["a photo of a"])[0]
    with torch.no_grad():
        ctx = base.model.token_embedding(tok[1:5]).clone()  # the words "a photo of a"
    (tmp_path / "prompt_learner").mkdir()
    path = tmp_path / "prompt_learner" / "model.pth.tar-5"
    (tmp_path / "log.txt").write_text("TRAINER:\n  COOP:\n    CLASS_TOKEN_POSITION: end\n")  # Dassl's log
    torch.save({"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(5, 1, 64),
                               "token_suffix": torch.zeros(5, 11, 64)}, "epoch": 5}, path)
    store = tmp_path / "s"
    key = api.extract(benchmark="digits", ckpt=path, store=store, datasets=["digits-id-test"], device="cpu")
    arrays, attrs = read_h5(Store(store).text_path(key, "digits-classes"))
    assert attrs["learned_context"] and arrays["embeds"].shape == (1, 5, 64)
    with torch.no_grad():
        ref = base.model.encode_text(base.tokenizer([f"a photo of a {c}." for c in
                                                     ["zero", "one", "two", "three", "four"]])).numpy()
    cos = np.sum(arrays["embeds"][0] * ref, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(arrays["embeds"][0], axis=1)
    assert cos.min() > 0.99
    assert Store(store).text_path(key, "digits-classes_prompts").exists()


def test_cli_finetune_wise_then_extract(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["finetune", "ft", "--steps", "3", "--batch-size", "16", "-o", "runs",
                              "--device", "cpu", "--wise", "0.5"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "ft.pt").exists() and (tmp_path / "runs" / "ft-wise0.5.pt").exists()
    res = runner.invoke(app, ["wise", "runs/ft.pt", "-a", "0,1", "-o", "mix"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["extract", "--ckpt", "mix/ft-wise1.pt", "--dataset", "digits-id-test",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "QuickGELU" not in res.output  # the tiny model's checkpoints say they use plain GELU
    (key,) = Store("oodbench_store").model_keys()
    _, attrs = read_h5(Store("oodbench_store").model_path(key))
    assert attrs["linear_head_input"] == "embeds"  # the FT head was kept and stored
