"""The CLIP-native scores (oodbench.scorers.native): brute force on small random arrays, then
end to end on the digits store, including the two-model (reference) path of the engine."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from oodbench.config import load_catalogue
from oodbench.engine import score_benchmark
from oodbench.errors import OodbenchError
from oodbench.scorers import Head, Inputs, TextBank, VisualParams, make_scorer
from oodbench.scorers.native import select_layers
from oodbench.store import Store

C, W, D, L, N = 4, 12, 24, 3, 30


def _norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ln_proj(tok, vis):
    t = torch.nn.functional.layer_norm(torch.as_tensor(tok, dtype=torch.float64), (W,),
                                       torch.as_tensor(vis.ln_post_weight, dtype=torch.float64),
                                       torch.as_tensor(vis.ln_post_bias, dtype=torch.float64), eps=vis.ln_eps)
    return t.numpy() @ vis.proj.astype(np.float64)


def _mcm(x, t, temp=1.0):
    return softmax(_norm(x) @ t.T / temp, axis=1).max(1)


def make_split(seed: int, n: int = N, split: str = "test", vis=None, text=None, ids=None):
    rng = np.random.default_rng(seed)
    vis = vis or VisualParams(proj=rng.normal(size=(W, D)).astype(np.float32),
                              ln_post_weight=(1 + 0.1 * rng.normal(size=W)).astype(np.float32),
                              ln_post_bias=(0.1 * rng.normal(size=W)).astype(np.float32), logit_scale=10.0)
    text = text or {"classes": TextBank([f"c{i}" for i in range(C)], ["a {}.", "the {}."],
                                        rng.normal(size=(2, C, D)).astype(np.float32))}
    cls = rng.normal(size=(n, L, W)).astype(np.float32)
    emb = _ln_proj(cls[:, -1], vis).astype(np.float32)  # the last block's CLS is the image embedding
    t = _norm(text["classes"].embeds[0].astype(np.float64))
    head = Head("probe", rng.normal(size=(C, D)).astype(np.float32), rng.normal(size=C).astype(np.float32), "embeds")
    ids = ids if ids is not None else np.array([f"s{i}" for i in range(n)])
    data = Inputs.from_arrays(split, head=head, text=text, visual=vis, labels=rng.integers(0, C, n), ids=ids,
                              image_embeds=emb, **{"layers/cls": cls})
    return data, cls, emb, t, vis


@pytest.fixture(scope="module")
def world():
    data, cls, emb, t, vis = make_split(0)
    return {"data": data, "cls": cls, "emb": emb, "t": t, "vis": vis}


# -- layer-wise MCM ---------------------------------------------------------------------------
def test_select_layers():
    assert select_layers("late", [0, 1, 2]) == [1, 2]
    assert select_layers("late", list(range(12))) == list(range(6, 12))
    assert select_layers("all", [3, 7, 11]) == [3, 7, 11]
    assert select_layers("-1,7", [3, 7, 11]) == [11, 7]
    with pytest.raises(OodbenchError, match="Layer 5 was not extracted"):
        select_layers("5", [3, 7, 11])
    with pytest.raises(OodbenchError, match="'late', 'all'"):
        select_layers("middle", [0, 1])


def test_layer_mcm_by_hand(world):
    d, cls, vis, t = world["data"], world["cls"], world["vis"], world["t"]
    per = [_mcm(_ln_proj(cls[:, k], vis), t) for k in range(L)]
    run = lambda **p: make_scorer("layer_mcm", **p).score(d)  # noqa: E731
    np.testing.assert_allclose(run(), np.mean(per[1:], 0), rtol=1e-5)  # late = blocks 1, 2
    np.testing.assert_allclose(run(layers="all"), np.mean(per, 0), rtol=1e-5)
    np.testing.assert_allclose(run(layers="0,2", temperature=0.1),
                               np.mean([_mcm(_ln_proj(cls[:, k], vis), t, 0.1) for k in (0, 2)], 0), rtol=1e-5)
    np.testing.assert_allclose(run(combine="best", layer=-2), per[1], rtol=1e-5)
    np.testing.assert_allclose(run(combine="best", layer=0), per[0], rtol=1e-5)
    # the last block projected is the image embedding: best/-1 is MCM
    np.testing.assert_allclose(run(combine="best"), make_scorer("mcm").score(d), rtol=1e-5)
    final = _norm(world["emb"].astype(np.float64)) @ t.T
    agree = np.mean([(_norm(_ln_proj(cls[:, k], vis)) @ t.T).argmax(1) == final.argmax(1) for k in range(L)], 0)
    np.testing.assert_allclose(run(combine="agreement", layers="all"), agree * softmax(final, axis=1).max(1), rtol=1e-5)
    assert set(np.round(agree * 3).astype(int)) <= {1, 2, 3}  # the last block always agrees


def test_layer_mcm_tuning_space_and_errors(world):
    assert set(make_scorer("layer_mcm", combine="best").search_space) == {"layer"}
    assert set(make_scorer("layer_mcm").search_space) == {"layers"}
    with pytest.raises(OodbenchError, match="Layer 7 was not extracted"):
        make_scorer("layer_mcm", combine="best", layer=7).score(world["data"])
    plain = Inputs.from_arrays("test", text=world["data"].text, visual=world["vis"], labels=np.zeros(N, int),
                               image_embeds=world["emb"])
    with pytest.raises(OodbenchError, match="--layers all"):
        make_scorer("layer_mcm").score(plain)
    noproj = Inputs.from_arrays("test", text=world["data"].text, labels=np.zeros(N, int), image_embeds=world["emb"],
                                **{"layers/cls": world["cls"]})
    with pytest.raises(OodbenchError, match="ln_post/projection"):
        make_scorer("layer_mcm").score(noproj)


# -- text-subspace residual -------------------------------------------------------------------
def _lstsq_residual(x, rows, centre):
    mu = rows.mean(0) if centre else np.zeros(rows.shape[1])
    a = rows - mu
    out = []
    for v in x - mu:
        coef, *_ = np.linalg.lstsq(a.T, v, rcond=None)
        out.append(np.linalg.norm(v - a.T @ coef))
    return np.array(out), np.linalg.norm(x - mu, axis=1)


@pytest.mark.parametrize("centre", [False, True])
def test_text_residual_by_hand(world, centre):
    d = world["data"]
    x = _norm(world["emb"].astype(np.float64))
    ens = _norm(_norm(d.text["classes"].embeds.astype(np.float64)).mean(0))
    res, total = _lstsq_residual(x, ens, centre)
    s = make_scorer("text_residual", centre=centre).score(d)
    np.testing.assert_allclose(s, -res, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(make_scorer("text_residual", centre=centre, measure="cos").score(d),
                               np.sqrt(1 - (res / total) ** 2), rtol=1e-5, atol=1e-7)
    every = _norm(d.text["classes"].embeds.astype(np.float64)).reshape(-1, D)  # 8 rows < D / 2
    res_all, _ = _lstsq_residual(x, every, centre)
    np.testing.assert_allclose(make_scorer("text_residual", centre=centre, templates="all").score(d), -res_all,
                               rtol=1e-5, atol=1e-7)


def test_text_residual_rank(world):
    d = world["data"]
    full = make_scorer("text_residual").score(d)
    low = make_scorer("text_residual", rank=2).score(d)
    assert (low <= full + 1e-9).all() and (low < full - 1e-6).any()  # a smaller span leaves more outside
    x = _norm(world["emb"].astype(np.float64))
    ens = _norm(_norm(d.text["classes"].embeds.astype(np.float64)).mean(0))
    top2 = np.linalg.svd(ens)[2][:2]
    np.testing.assert_allclose(low, -np.linalg.norm(x - x @ top2.T @ top2, axis=1), rtol=1e-5)
    with pytest.raises(OodbenchError, match="span only 4"):
        make_scorer("text_residual", rank=5).score(d)
    with pytest.raises(OodbenchError, match="span only 3 dimension.*centred"):
        make_scorer("text_residual", rank=4, centre=True).score(d)


# -- modality-gap-corrected MCM ---------------------------------------------------------------
def test_gap_mcm_by_hand(world):
    train, *_ = make_split(1, 50, "train", vis=world["vis"], text=world["data"].text)
    d, t = world["data"], world["t"]
    mu_i = _norm(train.array("image_embeds").astype(np.float64)).mean(0)
    x = _norm(world["emb"].astype(np.float64))
    with pytest.raises(OodbenchError, match="must be fitted"):
        make_scorer("gap_mcm").score(d)
    s = make_scorer("gap_mcm").fit(train).score(d)
    np.testing.assert_allclose(s, softmax(_norm(x - mu_i) @ _norm(t - t.mean(0)).T, axis=1).max(1), rtol=1e-5)
    s = make_scorer("gap_mcm", mode="shift", temperature=0.1).fit(train).score(d)
    np.testing.assert_allclose(s, softmax(_norm(x - mu_i + t.mean(0)) @ t.T / 0.1, axis=1).max(1), rtol=1e-5)


# -- scores across two checkpoints ------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(world):
    ref, _, ref_emb, ref_t, _ = make_split(5)
    d, *_ = make_split(0)
    d.extra["reference"] = ref
    return d, ref


def test_anchored_mcm_by_hand(pair, world):
    d, ref = pair
    ft, zs = make_scorer("mcm").score(d), make_scorer("mcm").score(ref)
    np.testing.assert_allclose(make_scorer("anchored_mcm").score(d), 0.5 * ft + 0.5 * zs, rtol=1e-6)
    np.testing.assert_allclose(make_scorer("anchored_mcm", lam=0.2).score(d), 0.2 * ft + 0.8 * zs, rtol=1e-6)
    np.testing.assert_allclose(make_scorer("anchored_mcm", lam=1.0).score(d), ft, rtol=1e-6)


def test_ft_conf_zs_by_hand(pair):
    d, ref = pair
    msp = softmax(d.logits.astype(np.float64) / 2.0, axis=1).max(1)
    zs = make_scorer("mcm").score(ref)
    np.testing.assert_allclose(make_scorer("ft_conf_zs", temperature=2.0).score(d), msp * zs, rtol=1e-5)
    np.testing.assert_allclose(make_scorer("ft_conf_zs", temperature=2.0, weight=3.0).score(d), msp * zs**3,
                               rtol=1e-5)


def test_disagreement_by_hand(pair):
    d, ref = pair
    p, q = softmax(d.logits.astype(np.float64), axis=1), softmax(ref.logits.astype(np.float64), axis=1)
    kl = np.array([entropy(a, b) + entropy(b, a) for a, b in zip(p, q, strict=True)])
    np.testing.assert_allclose(make_scorer("disagreement", mode="kl").score(d), -kl, rtol=1e-6, atol=1e-9)
    expect = p.max(1) - (p.argmax(1) != q.argmax(1))
    np.testing.assert_allclose(make_scorer("disagreement").score(d), expect, rtol=1e-6)
    assert (p.argmax(1) != q.argmax(1)).any() and (p.argmax(1) == q.argmax(1)).any()


@pytest.mark.parametrize("name", ["anchored_mcm", "ft_conf_zs", "disagreement"])
def test_reference_errors(name, world):
    with pytest.raises(OodbenchError, match="--reference"):
        make_scorer(name).score(world["data"])
    d, *_ = make_split(0)
    d.extra["reference"], *_ = make_split(5, n=N - 1)
    with pytest.raises(OodbenchError, match="29 samples but this one has 30"):
        make_scorer(name).score(d)
    d.extra["reference"], *_ = make_split(5, ids=np.array([f"other{i}" for i in range(N)]))
    with pytest.raises(OodbenchError, match="other sample ids"):
        make_scorer(name).score(d)


def test_disagreement_class_mismatch(world):
    d, *_ = make_split(0)
    ref, *_ = make_split(5)
    ref.head = Head("zs", np.ones((C + 1, D), np.float32), np.zeros(C + 1, np.float32))
    d.extra["reference"] = ref
    with pytest.raises(OodbenchError, match="4 classes but the reference's zero-shot head has 5"):
        make_scorer("disagreement").score(d)


# -- end to end on the digits store -----------------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    return load_catalogue(None).benchmark("digits")


@pytest.fixture(scope="module")
def two_models(digits_store, tmp_path_factory):
    """A private store: the digits model (copied) and a perturbed copy extracted from a checkpoint."""
    from oodbench import api
    from oodbench.models.tiny import ensure_tiny

    root = tmp_path_factory.mktemp("two_models")
    zs = digits_store["key"]
    shutil.copytree(digits_store["store"] / zs, root / zs, ignore=shutil.ignore_patterns("scores", "*.lock"))
    sd = torch.load(ensure_tiny(), map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for k, v in sd.items():
        if k.startswith("visual.") and v.is_floating_point():
            sd[k] = v + 0.05 * v.std().nan_to_num(0.0) * torch.randn(v.shape, generator=gen)
    ckpt = root / "perturbed.pt"
    torch.save(sd, ckpt)
    ft = api.extract(benchmark="digits", ckpt=ckpt, store=root, device="cpu", layers="all")
    assert ft != zs
    return {"store": Store(root), "zs": zs, "ft": ft}


def test_native_scores_on_digits(two_models, bench):
    st, zs = two_models["store"], two_models["zs"]
    recs = {r.label: r for r in score_benchmark(st, zs, bench, ["mcm", "layer_mcm", "text_residual", "gap_mcm"],
                                                {"layer_mcm": {"combine": "best"}})}
    best = recs["layer_mcm(combine=best)"]
    np.testing.assert_allclose(best.id_scores, recs["mcm"].id_scores, rtol=1e-4)  # last block = embedding
    for r in recs.values():
        assert all(np.isfinite(s).all() for s in (r.id_scores, *r.ood_scores.values()))
    from oodbench.metrics import auroc

    assert auroc(recs["text_residual"].id_scores, recs["text_residual"].ood_scores["noise-uniform"]) > 0.9
    tuned = score_benchmark(st, zs, bench, ["layer_mcm"], {"layer_mcm": {"combine": "best"}}, tune=True)[0]
    tuning = tuned.provenance["tuning"]
    assert tuning["tuned"] and set(tuning["chosen"]) == {"layer"}
    valid = [t for t in tuning["trials"] if "val_auroc" in t]
    assert [t["params"]["layer"] for t in valid] == [-1, -2, -3]  # the tiny tower has 3 blocks
    assert tuning["best_val_auroc"] == max(t["val_auroc"] for t in valid)


def test_two_model_engine_path(two_models, bench):
    st, zs, ft = two_models["store"], two_models["zs"], two_models["ft"]
    methods = ["mcm", "anchored_mcm", "ft_conf_zs", "disagreement"]
    recs = {r.method: r for r in score_benchmark(st, ft, bench, methods, reference_key=zs)}
    zs_mcm = score_benchmark(st, zs, bench, ["mcm"])[0]
    a = recs["anchored_mcm"]
    np.testing.assert_allclose(a.id_scores, 0.5 * recs["mcm"].id_scores + 0.5 * zs_mcm.id_scores, rtol=1e-6)
    for d in a.ood_scores:
        np.testing.assert_allclose(a.ood_scores[d], 0.5 * recs["mcm"].ood_scores[d] + 0.5 * zs_mcm.ood_scores[d],
                                   rtol=1e-6)
    assert a.provenance["reference_model"]["model_key"] == zs and "reference_model" not in recs["mcm"].provenance
    assert not np.allclose(recs["mcm"].id_scores, zs_mcm.id_scores)  # really two models
    tuned = score_benchmark(st, ft, bench, ["anchored_mcm"], tune=True, reference_key=zs)[0]
    assert tuned.provenance["tuning"]["chosen"]["lam"] in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_two_model_errors(two_models, bench, tmp_path):
    st, zs, ft = two_models["store"], two_models["zs"], two_models["ft"]
    with pytest.raises(OodbenchError, match=f"--reference KEY.*{zs}"):
        score_benchmark(st, ft, bench, ["mcm", "anchored_mcm"])
    # a reference without one of the datasets
    shutil.copytree(st.model_dir(zs), st.root / "no-noise", ignore=shutil.ignore_patterns("scores", "*.lock"))
    (st.root / "no-noise" / "features" / "noise-uniform.h5").unlink()
    with pytest.raises(OodbenchError, match="no features for 'noise-uniform'"):
        score_benchmark(st, ft, bench, ["anchored_mcm"], reference_key="no-noise")
    # a reference extracted from another sample list
    shutil.copytree(st.model_dir(zs), st.root / "other-samples", ignore=shutil.ignore_patterns("scores", "*.lock"))
    with h5py.File(st.root / "other-samples" / "features" / "digits-id-test.h5", "r+") as f:
        f.attrs["sample_fingerprint"] = "0" * 64
    with pytest.raises(OodbenchError, match="digits-id-test: the reference model other-samples was extracted from "
                                            "another sample list"):
        score_benchmark(st, ft, bench, ["disagreement"], reference_key="other-samples")
    shutil.rmtree(st.root / "no-noise")
    shutil.rmtree(st.root / "other-samples")


@pytest.mark.parametrize("name", ["ft_conf_zs", "disagreement"])
def test_two_model_scores_check_class_names_and_order(name):
    """Same number of classes is not enough: the names and their order must match."""
    rng = np.random.default_rng(9)
    emb = rng.normal(size=(2, C, D)).astype(np.float32)
    d, *_ = make_split(0, text={"classes": TextBank([f"c{i}" for i in range(C)], ["a {}.", "the {}."], emb)})
    swapped = [f"c{i}" for i in range(C)]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    ref, *_ = make_split(5, text={"classes": TextBank(swapped, ["a {}.", "the {}."], emb)})
    d.extra["reference"] = ref
    with pytest.raises(OodbenchError, match="class 0 is 'c0' for this model but 'c1' for the reference "
                                            r"\(same names, other order\)"):
        make_scorer(name).score(d)
    other = [f"c{i}" for i in range(C - 1)] + ["zebra"]
    d.extra["reference"], *_ = make_split(5, text={"classes": TextBank(other, ["a {}.", "the {}."], emb)})
    with pytest.raises(OodbenchError, match=f"class {C - 1} is 'c{C - 1}' for this model but 'zebra'"):
        make_scorer(name).score(d)
    d.extra["reference"], *_ = make_split(5, text={"classes": TextBank([f"c{i}" for i in range(C)],
                                                                       ["a {}.", "the {}."], emb)})
    assert np.isfinite(make_scorer(name).score(d)).all()


def test_local_embeddings_refuse_other_block_variants():
    """The value-path re-run in extract.py is right for open_clip's plain block only."""
    import copy

    from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock

    from oodbench.extract import VisualFeatures
    from oodbench.models import load_model

    visual = load_model().model.visual
    VisualFeatures(visual, None, local=True)  # the plain block: accepted
    last = visual.transformer.resblocks[-1]
    assert type(last) is ResidualAttentionBlock
    width = last.attn.embed_dim

    class Subclassed(ResidualAttentionBlock):  # may change forward: refused too
        pass

    for block in (CustomResidualAttentionBlock(width, last.attn.num_heads), Subclassed(width, last.attn.num_heads)):
        v = copy.deepcopy(visual)
        v.transformer.resblocks[-1] = block
        with pytest.raises(OodbenchError, match=f"--local supports only .* last block is {type(block).__name__}"):
            VisualFeatures(v, None, local=True)
        VisualFeatures(v, None, local=False)  # without --local nothing depends on the block's internals
