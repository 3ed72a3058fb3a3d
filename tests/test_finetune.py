"""Fine-tuning recipes: each trains the tiny CLIP a few steps and its checkpoint reloads exactly.

Fast: a random tiny base (``pretrained=None``, seed 0, what ``load_model(pretrained=None)``
builds) and 3 steps of batch 16; one short end-to-end study on a reduced digits catalogue.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from oodbench.errors import OodbenchError
from oodbench.finetune import (
    FinetuneConfig,
    apply_lora,
    describe_checkpoint,
    finetune,
    fit_linear_probe,
    load_adapter,
    merged_state_dict,
    parse_recipe,
    run_study,
    wise_mix,
)
from oodbench.finetune.lora import lora_parameters
from oodbench.models import load_model
from oodbench.models.checkpoints import detect_format, read_checkpoint
from oodbench.models.tiny import TINY_MODEL, build_untrained

TOL = 1e-5
FAST = {"pretrained": None, "steps": 3, "batch_size": 16, "eval_every": 2, "save_every": 2, "device": "cpu"}
SPECS = {
    "lp": {},
    "ft": {},
    "lpft": {},
    "flyp": {},
    "lora": {"lora_rank": 2, "lora_alpha": 4.0},
    "ft-ldifs": {"recipe": "ft", "reg": "ldifs"},
    "lora-visual-feature": {"recipe": "lora", "lora_towers": "visual", "reg": "feature"},
    "flyp-l2sp": {"recipe": "flyp", "reg": "l2sp", "flyp_head": True},
}


pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft_runs")
    res = {}
    for name, spec in SPECS.items():
        spec = dict(spec)
        recipe = spec.pop("recipe", name)
        res[name] = finetune(FinetuneConfig(recipe, name=name, **FAST, **spec), out)
    return res


@pytest.fixture(scope="module")
def probe():
    _, _, tok = build_untrained(0)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, 32, 32, generator=gen), tok(["a handwritten one.", "the number four.", "x"])


def outputs(model, probe):
    model.eval()
    with torch.no_grad():
        return model.encode_image(probe[0]), model.encode_text(probe[1])


def maxdiff(a, b) -> float:
    return float(max((x - y).abs().max() for x, y in zip(a, b, strict=True)))


@pytest.mark.parametrize("name", list(SPECS))
def test_checkpoint_reloads_with_identical_outputs(runs, probe, name):
    res = runs[name]
    bundle = load_model(TINY_MODEL, pretrained=None, ckpt=res.path)
    assert maxdiff(outputs(bundle.model, probe), outputs(res.model, probe)) < TOL
    assert bundle.fingerprint == res.fingerprint
    if res.head_weight is None:
        assert bundle.head is None
    else:
        assert torch.equal(bundle.head.head_weight, res.head_weight)
        assert torch.equal(bundle.head.head_bias, res.head_bias)
        assert bundle.head.head_input == "embeds"
    obj, _ = read_checkpoint(res.path)
    assert detect_format(obj) == ("wiseft" if res.head_weight is not None else "open_clip")
    meta = describe_checkpoint(res.path)
    assert meta["base_fingerprint"] == res.base_fingerprint
    assert meta["config"]["recipe"] == res.config.recipe and meta["config"]["steps"] == 3
    assert meta["fingerprint"] == res.fingerprint


def test_recipes_change_what_they_should(runs, probe):
    base = load_model(TINY_MODEL, pretrained=None).model
    img0, txt0 = outputs(base, probe)
    for name, towers in (("lp", ()), ("ft", ("img",)), ("flyp", ("img", "txt")), ("lora", ("img", "txt")),
                         ("lora-visual-feature", ("img",))):
        img, txt = outputs(runs[name].model, probe)
        assert (float((img - img0).abs().max()) > 1e-6) == ("img" in towers), name
        assert (float((txt - txt0).abs().max()) > 1e-6) == ("txt" in towers), name
    # FT's head starts as the zero-shot head (logit scale x class text embeddings); LP-FT's as LP's
    init = torch.load(runs["ft"].path, weights_only=True)["head_init"]
    assert init["weight"].shape == runs["ft"].head_weight.shape
    assert torch.allclose(init["weight"].norm(dim=1), base.logit_scale.exp().detach().expand(5), atol=1e-4)


def test_extract_ckpt_matches_in_memory_model(runs, tmp_path):
    from oodbench import api
    from oodbench.config import load_catalogue
    from oodbench.store import FeatureFile, Store

    res = runs["ft"]
    key = api.extract(benchmark="digits", ckpt=res.path, store=tmp_path, datasets=["digits-id-val"], device="cpu")
    assert key.endswith(res.fingerprint[:10])
    st = Store(tmp_path)
    z = FeatureFile(st.features_path(key, "digits-id-val")).load("image_embeds")
    src = load_catalogue().source("digits-id-val")
    x = torch.stack([res.preprocess(src.load(i)) for i in range(len(src))])
    with torch.no_grad():
        z_mem = res.model.encode_image(x).numpy()
    assert np.abs(z - z_mem).max() < TOL
    from oodbench.store import read_h5

    arrays, attrs = read_h5(st.model_path(key))
    assert np.array_equal(arrays["heads/linear/weight"], res.head_weight.numpy())
    assert attrs["linear_head_input"] == "embeds"


def test_lora_merged_and_unmerged_agree(runs, probe):
    res = runs["lora"]
    merged = load_model(TINY_MODEL, pretrained=None, ckpt=res.path)
    via_adapter = load_model(TINY_MODEL, pretrained=None, ckpt=res.adapter_path)  # clip_lora adapter, merged on load
    live, _, _ = build_untrained(0)
    load_adapter(live, res.adapter_path)  # unmerged, as parametrisations
    ref = outputs(res.model, probe)
    for m in (merged.model, via_adapter.model, live):
        assert maxdiff(outputs(m, probe), ref) < TOL
    assert via_adapter.info["ckpt_format"] == "clip_lora"


def test_lora_module_slices_and_init():
    model, _, tok = build_untrained(0)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = apply_lora(model, rank=2, alpha=2.0, towers="visual", targets=("q", "v"), seed=0)
    assert blocks == [f"visual.transformer.resblocks.{i}." for i in range(3)]
    assert all(p.requires_grad for p in lora_parameters(model))
    assert sum(p.requires_grad for p in model.parameters()) == len(lora_parameters(model)) == 12
    merged = merged_state_dict(model)
    assert set(merged) == set(base_sd) and all(torch.equal(merged[k], base_sd[k]) for k in base_sd)  # B = 0
    with torch.no_grad():
        for p in lora_parameters(model):
            if p.shape[1] == 2:  # B (out, r)
                p.normal_()
    merged = merged_state_dict(model)
    w, w0 = merged["visual.transformer.resblocks.0.attn.in_proj_weight"], base_sd["visual.transformer.resblocks.0.attn.in_proj_weight"]
    width = w.shape[1]
    assert not torch.equal(w[:width], w0[:width])  # q changed
    assert torch.equal(w[width:2 * width], w0[width:2 * width])  # k untouched
    assert not torch.equal(w[2 * width:], w0[2 * width:])  # v changed
    assert torch.equal(merged["visual.transformer.resblocks.0.attn.out_proj.weight"],
                       base_sd["visual.transformer.resblocks.0.attn.out_proj.weight"])
    fresh, _, _ = build_untrained(0)
    fresh.load_state_dict(merged)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert float((fresh.encode_image(x) - model.encode_image(x)).abs().max()) < TOL
    with pytest.raises(OodbenchError):
        apply_lora(model, rank=2)


def test_wise_endpoints_are_exact(runs, tmp_path):
    res = runs["ft"]
    paths = wise_mix(res.path, [0, 0.5, 1], tmp_path, head="keep")
    assert [p.name for p in paths] == ["ft-wise0.pt", "ft-wise0.5.pt", "ft-wise1.pt"]
    ft_sd = torch.load(res.path, weights_only=True)["state_dict"]
    base_sd = load_model(TINY_MODEL, pretrained=None).model.state_dict()
    sd0, sdh, sd1 = (torch.load(p, weights_only=True)["state_dict"] for p in paths)
    assert set(sd1) == set(ft_sd) and all(torch.equal(sd1[k], ft_sd[k]) for k in ft_sd)
    for k, v in base_sd.items():
        assert torch.equal(sd0[k], v), k
    assert torch.equal(sd0["classification_head.weight"], ft_sd["classification_head.weight"])  # head kept
    assert describe_checkpoint(paths[1])["wise_alpha"] == 0.5
    k = "visual.transformer.resblocks.0.mlp.c_fc.weight"
    assert torch.allclose(sdh[k], 0.5 * (base_sd[k] + ft_sd[k]), atol=1e-7)
    # head="mix": alpha 0 is the zero-shot model with its zero-shot head
    (mix0,) = wise_mix(res.path, [0], tmp_path / "mix", head="mix")
    init = torch.load(res.path, weights_only=True)["head_init"]
    assert torch.equal(torch.load(mix0, weights_only=True)["state_dict"]["classification_head.weight"], init["weight"])
    # files load, and the middle one agrees with load_model's own WiSE-FT mixing
    probe_x = torch.randn(3, 3, 32, 32)
    b1 = load_model(TINY_MODEL, pretrained=None, ckpt=paths[2])
    with torch.no_grad():
        assert torch.equal(b1.model.encode_image(probe_x), res.model.encode_image(probe_x))
    if "wise_alpha" in inspect.signature(load_model).parameters:
        ours = load_model(TINY_MODEL, pretrained=None, ckpt=paths[1])
        theirs = load_model(TINY_MODEL, pretrained=None, ckpt=res.path, wise_alpha=0.5)
        with torch.no_grad():
            assert float((ours.model.encode_image(probe_x) - theirs.model.encode_image(probe_x)).abs().max()) < TOL
        assert torch.equal(ours.head.head_weight, theirs.head.head_weight)


def test_resume_continues_from_saved_step(tmp_path):
    cfg = dict(FAST, steps=4, save_every=1, eval_every=2)
    straight = finetune(FinetuneConfig("ft", **cfg), tmp_path / "a")
    part = finetune(FinetuneConfig("ft", **cfg), tmp_path / "b", stop_after=2)
    assert part.step == 2 and not part.path.exists()
    assert torch.load(tmp_path / "b" / "ft.state.pt", weights_only=True)["step"] == 2
    done = finetune(FinetuneConfig("ft", **cfg), tmp_path / "b")
    assert done.resumed_from == 2 and done.step == 4
    a = torch.load(straight.path, weights_only=True)["state_dict"]
    b = torch.load(done.path, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["step"] for h in done.history] == [2, 4]
    again = finetune(FinetuneConfig("ft", **cfg), tmp_path / "b")  # finished: returned, not retrained
    assert again.cached and again.fingerprint == done.fingerprint
    with pytest.raises(OodbenchError, match="another configuration"):
        finetune(FinetuneConfig("ft", **{**cfg, "lr": 1e-3}), tmp_path / "b")
    finetune(FinetuneConfig("ft", **{**cfg, "lr": 1e-3}), tmp_path / "b", overwrite=True)


def test_linear_probe_picks_c_on_val():
    gen = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    y = torch.arange(60) % 3
    z = torch.nn.functional.normalize(centers[y] + 0.3 * torch.randn(60, 8, generator=gen), dim=-1)
    w, b, info = fit_linear_probe(z[:45], y[:45], z[45:], y[45:], 4, seed=0)
    assert w.shape == (4, 8) and b[3] == -1e4  # class 3 has no training data
    assert info["chosen_C"] in [t["C"] for t in info["trials"]] and len(info["trials"]) > 1
    assert ((z @ w.T + b).argmax(1) == y).float().mean() > 0.9


def test_parse_recipe_and_config_errors():
    cfg = parse_recipe("lora+feature:lora_towers=visual:lora_rank=8:lr=0.01", steps=7)
    assert (cfg.recipe, cfg.reg, cfg.lora_towers, cfg.lora_rank, cfg.lr, cfg.steps) == ("lora", "feature", "visual", 8, 0.01, 7)
    assert cfg.run_name == "lora-feature_lora_towersvisual_lora_rank8_lr0.01"
    assert parse_recipe("ft").run_name == "ft"
    with pytest.raises(OodbenchError, match="recipe"):
        FinetuneConfig("fine")
    with pytest.raises(OodbenchError, match="regulariser"):
        FinetuneConfig("lp", reg="ldifs")
    with pytest.raises(OodbenchError):
        parse_recipe("ft:nosuchfield=1")


SMALL_CATALOGUE = """
version: 1
datasets:
  digits-id-train: {source: digits, digits: [0, 1, 2, 3, 4], split: train}
  digits-id-val: {source: digits, digits: [0, 1, 2, 3, 4], split: val}
  digits-id-test: {source: digits, digits: [0, 1, 2, 3, 4], split: test}
  digits-5to9: {source: digits, digits: [5, 6, 7, 8, 9], split: test, ood: true}
  textures-small: {source: textures, n: 60, seed: 1}
benchmarks:
  digits-small:
    model: {name: oodbench-tiny, pretrained: digits}
    classes: [zero, one, two, three, four]
    templates: ["a photo of the digit {}.", "a handwritten {}."]
    id: {train: digits-id-train, val: digits-id-val, test: digits-id-test}
    ood: {near: [digits-5to9], far: [textures-small]}
"""


def test_study_end_to_end(tmp_path):
    cat = tmp_path / "bench.yaml"
    cat.write_text(SMALL_CATALOGUE)
    res = run_study("digits-small", recipes=["lp", "ft"], alphas=[0.5, 1], steps=2, batch_size=16,
                    out=tmp_path / "study", store=tmp_path / "store", methods=["msp", "mcm", "knn"], device="cpu",
                    local=False, benchmarks=cat)
    labels = [e.label for e in res.entries]
    assert labels == ["zeroshot", "lp", "ft", "ft-wise0.5"]
    assert {r.model for r in res.records} == set(labels) and len(res.records) == 4 * 3
    heads = {e.label: e.head for e in res.entries}
    assert heads == {"zeroshot": "zeroshot", "lp": "linear", "ft": "linear", "ft-wise0.5": "linear"}
    for key in ("summary", "report", "metrics_csv", "json", "figure_near", "figure_far"):
        assert res.files[key].exists() and res.files[key].stat().st_size > 0, key
    assert "| zeroshot |" in res.summary and "| ft-wise0.5 |" in res.summary
    table = res.table
    assert set(table["model"]) == set(labels)
    assert ((table["auroc"] >= 0) & (table["auroc"] <= 1)).all()


def test_lp_is_cached_and_refuses_another_config(tmp_path):
    first = finetune(FinetuneConfig("lp", lp_c=1.0, **FAST), tmp_path)
    again = finetune(FinetuneConfig("lp", lp_c=1.0, **FAST), tmp_path)
    assert again.cached and torch.equal(again.head_weight, first.head_weight)
    with pytest.raises(OodbenchError, match="another configuration"):
        finetune(FinetuneConfig("lp", lp_c=10.0, **FAST), tmp_path)
    other = finetune(FinetuneConfig("lp", lp_c=10.0, **FAST), tmp_path, overwrite=True)
    assert describe_checkpoint(other.path)["linear_probe"]["chosen_C"] == 10.0
