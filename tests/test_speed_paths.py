"""The fast paths added for ImageNet-scale scoring return what the straightforward code returns:
bf16 candidate search + exact re-rank (KNN / NNGuide), stable top-alpha selection (OpenMax),
block-wise logits and reads, the float32 GL-MCM path, and the fit cache (hit / miss /
invalidation)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.special import softmax

from oodbench.scorers import Head, Inputs, make_scorer
from oodbench.scorers.classwise import top_stable
from oodbench.scorers.clip import local_max_softmax
from oodbench.scorers.common import logit_blocks, predictions
from oodbench.scorers.inputs import l2_normalize
from oodbench.scorers.topk import InnerProductIndex, bf16_matmul_accumulates_in_fp32


def _exact_topk(q: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Brute force in float64: the k largest inner products per row, descending."""
    s = q.astype(np.float64) @ bank.astype(np.float64).T
    return -np.sort(-s, axis=1)[:, :k]


def _f32_dot_tol(q: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """(n, 1) bound on the float32 rounding of any <q_i, b>: gamma_D ||q_i|| max_b ||b||
    (Higham: |fl(x.y) - x.y| <= gamma_D sum |x_k y_k|, any summation order, no underflow),
    which also bounds the sorted top-k values (sorting moves each by at most the largest bound)."""
    d = q.shape[1]
    gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
    nq = np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    return gamma * nq * np.linalg.norm(bank.astype(np.float64), axis=1).max() * (1 + 1e-6) + 1e-300


def _unit(x: np.ndarray) -> np.ndarray:
    return l2_normalize(x.astype(np.float32))


needs_bf16 = pytest.mark.skipif(
    not bf16_matmul_accumulates_in_fp32(), reason="no float32-accumulating bf16 matmul here"
)


@needs_bf16
@pytest.mark.parametrize("k", [1, 7, 50])
def test_bf16_search_equals_exact_on_clustered_data(k):
    rng = np.random.default_rng(k)
    centres = _unit(rng.normal(size=(40, 96)))
    bank = _unit(centres[rng.integers(0, 40, 9001)] + 0.25 * rng.normal(size=(9001, 96)))
    q = _unit(centres[rng.integers(0, 40, 700)] + 0.25 * rng.normal(size=(700, 96)))
    index = InnerProductIndex(bank, "bf16")
    assert index.method == "bf16"
    got = index.search(q, k)
    assert (np.abs(got - _exact_topk(q, bank, k)) <= _f32_dot_tol(q, bank)).all()
    assert index.stats["candidates"] < 0.2 * q.shape[0] * bank.shape[0]  # it did prune


@needs_bf16
def test_bf16_search_adversarial_near_ties():
    """Bank rows that differ far below bf16 resolution (every similarity rounds to the same
    bf16 value) and exact duplicates: the k-th value must still be the exact one."""
    rng = np.random.default_rng(1)
    d = 128
    base = _unit(rng.normal(size=(1, d)))
    near = _unit(base + 3e-5 * rng.normal(size=(5000, d)))  # cosines to base within ~1e-9
    dup = np.repeat(near[:3], 40, axis=0)  # exact duplicates
    far = _unit(rng.normal(size=(4000, d)))
    bank = np.concatenate([far[:2000], near, dup, far[2000:]])
    q = np.concatenate([_unit(base + 0.02 * rng.normal(size=(60, d))), near[:20], far[:20]])
    for k in (1, 10, 120, 400):
        index = InnerProductIndex(bank, "bf16")
        got = index.search(q, k)
        exp = _exact_topk(q, bank, k)
        tol = _f32_dot_tol(q, bank)
        assert (np.abs(got - exp) <= tol).all()
        # the k-th value is the one that decides KNN: exact to float32 rounding
        assert (np.abs(got[:, -1] - exp[:, -1]) <= tol[:, 0]).all()


@needs_bf16
def test_bf16_search_signed_and_unnormalised():
    """Negative k-th similarities, non-unit rows, a bank size that is not a multiple of the
    group count (tail columns) and a huge-norm row."""
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(4099, 33)).astype(np.float32) * rng.uniform(0.1, 3, (4099, 1)).astype(np.float32)
    bank[17] *= 50
    q = rng.normal(size=(300, 33)).astype(np.float32)
    q[:50] = -bank[:50]  # most similarities negative for these rows
    gamma = 33 * 2.0**-24 / (1 - 33 * 2.0**-24)
    for k in (1, 5, 64):
        got = InnerProductIndex(bank, "bf16").search(q, k)
        s = q.astype(np.float64) @ bank.astype(np.float64).T
        order = np.argsort(-s, axis=1)[:, :k]
        exp = np.take_along_axis(s, order, 1)
        # The re-rank is a float32 dot product: |fl(<q, b>) - <q, b>| <= gamma_D sum_i |q_i b_i|
        # <= gamma_D ||q|| ||b|| (Higham, any summation order), for the true neighbour b. That is
        # relative to ||q|| ||b||, not to the value: the 50x-norm row 17 gives 2.9e-6 relative
        # error on AMD EPYC (44.07312 vs 44.07325), within 0.1 of this bound. Sorting moves each
        # value by at most the largest bound of the row's neighbours; a wrong neighbour would be
        # off by a similarity gap, far above it. (+1e-300: exact zeros.)
        norms = np.linalg.norm(q.astype(np.float64), axis=1)[:, None] * np.linalg.norm(
            bank.astype(np.float64), axis=1)[order]
        tol = gamma * norms.max(axis=1, keepdims=True) * (1 + 1e-6) + 1e-300
        assert (np.abs(got - exp) <= tol).all(), np.abs(got - exp).max()


def test_index_small_bank_and_exact_method_agree():
    rng = np.random.default_rng(3)
    bank = _unit(rng.normal(size=(500, 40)))
    q = _unit(rng.normal(size=(90, 40)))
    a = InnerProductIndex(bank).search(q, 9)  # auto: a bank this small is searched exactly
    b = InnerProductIndex(bank, "exact").search(q, 9)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, _exact_topk(q, bank, 9), atol=1e-6)


@needs_bf16
@pytest.mark.parametrize("bf16_pays", [True, False])
def test_knn_and_nnguide_scorers_use_exact_values(bf16_pays, monkeypatch):
    """KNN / NNGuide through the scorers with a bank big enough for the bf16 path, on either
    per-CPU choice of the search path."""
    from oodbench.scorers import topk

    monkeypatch.setattr(topk, "_BF16_PAYS", bf16_pays)
    rng = np.random.default_rng(4)
    n_cls, d = 8, 48
    w = rng.normal(size=(n_cls, d)).astype(np.float32)
    mu = rng.normal(size=(n_cls, d))

    def split(n, name):
        y = rng.integers(0, n_cls, n)
        h = (mu[y] + rng.normal(size=(n, d))).astype(np.float32)
        return Inputs.from_arrays(name, head=Head("probe", w, np.zeros(n_cls, np.float32), "penultimate"),
                                  labels=y, penultimate=h, image_embeds=h[:, :32].copy())

    train, test = split(6000, "train"), split(400, "test")
    knn = make_scorer("knn", k=25).fit(train)
    bank = l2_normalize(train.features("embeds").astype(np.float64))
    q = l2_normalize(test.features("embeds").astype(np.float64))
    kth = _exact_topk(q, bank, 25)[:, -1]
    np.testing.assert_allclose(knn.score(test), -np.sqrt(np.clip(2 - 2 * kth, 0, None)), rtol=1e-5, atol=1e-6)
    nng = make_scorer("nnguide", k=30, bank_fraction=1.0).fit(train)
    h = train.features("penultimate").astype(np.float64)
    from scipy.special import logsumexp

    e = logsumexp(h @ w.T.astype(np.float64), axis=1)
    gbank = l2_normalize(h) * e[:, None]
    x = test.features("penultimate").astype(np.float64)
    expected = logsumexp(x @ w.T.astype(np.float64), axis=1) * _exact_topk(l2_normalize(x), gbank, 30).mean(1)
    np.testing.assert_allclose(nng.score(test), expected, rtol=1e-5)


def test_top_stable_equals_stable_argsort():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 200))
    x[::5, 3] = x[::5].max(1)  # ties at the top
    x[::7, 9] = np.sort(x[::7], 1)[:, -3]  # ties at the 3rd place
    xr = np.round(rng.normal(size=(3000, 200)), 1)  # many ties
    for a in (1, 2, 3, 5, 10, 40):
        for m in (x, xr):
            np.testing.assert_array_equal(top_stable(m, a), np.argsort(-m, axis=1, kind="stable")[:, :a])


def _probe_inputs(n=3000, n_cls=12, d=40, seed=6, cache_logits=False):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(n_cls, d))
    y = rng.integers(0, n_cls, n)
    h = (mu[y] + 1.5 * rng.normal(size=(n, d))).astype(np.float32)
    head = Head("probe", (0.5 * mu).astype(np.float32), rng.normal(size=n_cls).astype(np.float32), "penultimate")
    x = Inputs.from_arrays("train", head=head, labels=y, penultimate=h)
    if cache_logits:
        _ = x.logits
    return x


def test_logit_blocks_and_predictions_match_whole_logits(monkeypatch):
    from oodbench.scorers import common

    monkeypatch.setattr(common, "LOGITS_KEEP_BYTES", 0)  # as for a 1.28M-row train split
    x = _probe_inputs()
    z = _probe_inputs().logits
    got = np.concatenate([b for _, b in logit_blocks(x, budget=10_000)])
    np.testing.assert_allclose(got, z, rtol=1e-6, atol=1e-5)  # float32 matmul blocking
    np.testing.assert_array_equal(predictions(x), z.argmax(1))
    assert "logits" not in x.__dict__  # never materialised


def test_logit_blocks_without_keeping():
    """keep=False: the same values, through one reused buffer, nothing kept on the split; kept
    logits are still used when a split holds them."""
    x = _probe_inputs()
    z = _probe_inputs().logits
    got = np.concatenate([b.copy() for _, b in logit_blocks(x, budget=10_000, keep=False)])
    np.testing.assert_allclose(got, z, rtol=1e-6, atol=1e-5)
    assert "logits" not in x.__dict__
    x.__dict__["logits"] = z + 1.0  # kept logits win
    got = np.concatenate([b for _, b in logit_blocks(x, keep=False)])
    np.testing.assert_array_equal(got, z + 1.0)


def test_vim_and_she_fit_without_keeping_train_logits():
    """ViM and SHE read the train logits in one pass and keep none; their fits equal the fits on
    a split whose logits are already kept (as in `-m all`, after OpenMax)."""
    for name, attr, params in (("vim", "alpha_", {"dim": 10}), ("she", "patterns_", {})):
        x = _probe_inputs()
        a = make_scorer(name, **params).fit(x)
        assert "logits" not in x.__dict__
        b = make_scorer(name, **params).fit(_probe_inputs(cache_logits=True))
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-12)


def test_openmax_and_she_fit_by_blocks_equal_whole_logits(monkeypatch):
    from oodbench.scorers import common

    monkeypatch.setattr(common, "LOGITS_KEEP_BYTES", 0)
    a = make_scorer("openmax").fit(_probe_inputs())
    b = make_scorer("openmax").fit(_probe_inputs(cache_logits=True))
    np.testing.assert_allclose(a.mavs_, b.mavs_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.weibull_, b.weibull_, rtol=1e-9, equal_nan=True)
    test = _probe_inputs(n=500, seed=7)
    np.testing.assert_allclose(a.score(test), b.score(test), rtol=1e-9)
    s1 = make_scorer("she").fit(_probe_inputs())
    s2 = make_scorer("she").fit(_probe_inputs(cache_logits=True))
    np.testing.assert_allclose(s1.patterns_, s2.patterns_, rtol=1e-12)


def test_openmax_score_by_loop():
    """OpenMax's score, one sample at a time from the definition (top-alpha by stable sort)."""
    train, test = _probe_inputs(), _probe_inputs(n=200, seed=8)
    om = make_scorer("openmax", alpha=3).fit(train)
    z = test.logits.astype(np.float64)
    expected = []
    for x in z:
        top = np.argsort(-x, kind="stable")[:3]
        omega = np.zeros_like(x)
        for rank, c in enumerate(top):
            c_, lam, shift = om.weibull_[c]
            d = np.linalg.norm(x - om.mavs_[c]) + shift
            omega[c] = (1 - np.exp(-((d / lam) ** c_))) * (3 - rank) / 3
        full = np.append(x * (1 - omega), (x * omega).sum())
        expected.append(1 - softmax(full)[-1])
    np.testing.assert_allclose(om.score(test), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.01])
def test_local_max_softmax_matches_float64(temperature):
    rng = np.random.default_rng(9)
    z = _unit(rng.normal(size=(50, 7, 32)))
    t = _unit(rng.normal(size=(300, 32)))
    sims = z.astype(np.float64) @ t.T.astype(np.float64)
    expected = softmax(sims / temperature, axis=2).max(axis=(1, 2))
    np.testing.assert_allclose(local_max_softmax(z, t, temperature), expected, rtol=1e-5)


# ------------------------------------------------------------------------- store-level paths


def _tiny_store(root, n_train=400, seed=0, dim=24, n_cls=5, only=None):
    """A minimal store written with the store's own writers: one model, one benchmark."""
    from oodbench.store import STR, FeatureWriter, Store, write_h5_atomic

    rng = np.random.default_rng(seed)
    st = Store(root)
    key = "tiny-test-0123456789"
    fp = "f" * 64
    mu = rng.normal(size=(n_cls, dim)) * 2
    names = [f"class{i}" for i in range(n_cls)]
    if only is None:
        write_h5_atomic(st.model_path(key), {"visual/proj": np.eye(dim, dtype=np.float32)},
                        {"kind": "model", "fingerprint": fp, "model_key": key, "label": "tiny",
                         "logit_scale": 100.0})
        write_h5_atomic(st.text_path(key, "tiny-classes"), {"embeds": mu[None].astype(np.float32)},
                        {"kind": "text", "names": names, "templates": ["a photo of a {}."]})

    def split(name, n, ood=False):
        if only is not None and name not in only:
            return
        y = -np.ones(n, np.int64) if ood else rng.integers(0, n_cls, n)
        h = (rng.normal(size=(n, dim)) * 2 if ood else mu[y] + rng.normal(size=(n, dim))).astype(np.float32)
        layout = {"image_embeds": ((dim,), np.float32), "penultimate": ((dim,), np.float32),
                  "labels": ((), np.int64), "ids": ((), STR)}
        w = FeatureWriter(st.features_path(key, name), layout,
                          {"model_fingerprint": fp, "sample_fingerprint": f"{name}-{n}-{seed}"},
                          {"kind": "features", "dataset": name, "layer_indices": []}, total=n, chunk_rows=64)
        w.open()
        for s in range(0, n, 128):
            e = min(n, s + 128)
            w.append({"image_embeds": h[s:e], "penultimate": h[s:e], "labels": y[s:e],
                      "ids": np.array([f"{name}/{i}" for i in range(s, e)], dtype=object)}, n_processed=e)
        w.finalize()
        w.close()

    split("tiny-train", n_train)
    split("tiny-test", 150)
    split("tiny-ood", 120, ood=True)
    yaml = root / "tiny.yaml"
    yaml.write_text(
        "datasets:\n  tiny-train: {source: synthetic}\n  tiny-test: {source: synthetic}\n"
        "  tiny-ood: {source: synthetic}\nbenchmarks:\n  tiny:\n"
        f"    classes: [{', '.join(names)}]\n    templates: single\n"
        "    id: {train: tiny-train, test: tiny-test}\n    ood: {far: [tiny-ood]}\n"
    )
    return st, key, yaml


def _score(st, key, yaml, methods, overrides=None):
    from oodbench.config import load_catalogue
    from oodbench.engine import score_benchmark

    bench = load_catalogue(yaml).benchmark("tiny")
    return {r.method: r for r in score_benchmark(st, key, bench, methods, overrides or {})}


def test_fit_cache_hit_miss_and_invalidation(tmp_path, monkeypatch):
    from oodbench import fitcache

    monkeypatch.setenv("OODBENCH_FIT_CACHE", "1")
    st, key, yaml = _tiny_store(tmp_path)
    methods = ["mahalanobis", "vim", "react", "openmax", "knn"]
    over = {"vim": {"dim": 8}, "knn": {"k": 5}}
    first = _score(st, key, yaml, methods, over)
    assert {m: r.provenance["fit_cache"] for m, r in first.items()} == {
        "mahalanobis": "miss", "vim": "miss", "react": "miss", "openmax": "miss", "knn": "miss"}
    cache = fitcache.cache_dir(st.scores_path(key, "tiny"))
    assert len(list(cache.glob("*.h5"))) == 5
    second = _score(st, key, yaml, methods, over)
    for m in methods:
        assert second[m].provenance["fit_cache"] == "hit", m
        np.testing.assert_array_equal(second[m].id_scores, first[m].id_scores)
        for d in first[m].ood_scores:
            np.testing.assert_array_equal(second[m].ood_scores[d], first[m].ood_scores[d])
    # another parameter value: a miss for that method only
    third = _score(st, key, yaml, ["vim", "react"], {"vim": {"dim": 6}})
    assert third["vim"].provenance["fit_cache"] == "miss"
    assert third["react"].provenance["fit_cache"] == "hit"
    # the store fingerprint changes when the fit split is re-extracted (other data, same names)
    time.sleep(0.01)
    _tiny_store(tmp_path, seed=1, only=("tiny-train",))
    fourth = _score(st, key, yaml, ["mahalanobis", "react"])
    assert {m: r.provenance["fit_cache"] for m, r in fourth.items()} == {"mahalanobis": "miss", "react": "miss"}
    assert not np.array_equal(fourth["mahalanobis"].id_scores, first["mahalanobis"].id_scores)
    # a corrupt or foreign cache file is ignored (refit), never trusted
    for p in cache.glob("mahalanobis-*.h5"):
        p.write_bytes(b"not hdf5")
    fifth = _score(st, key, yaml, ["mahalanobis"])
    assert fifth["mahalanobis"].provenance["fit_cache"] == "miss"
    np.testing.assert_array_equal(fifth["mahalanobis"].id_scores, fourth["mahalanobis"].id_scores)


def test_fit_cache_off_and_size_limit(tmp_path, monkeypatch):
    st, key, yaml = _tiny_store(tmp_path)
    monkeypatch.setenv("OODBENCH_FIT_CACHE", "0")
    r = _score(st, key, yaml, ["mahalanobis"])
    assert r["mahalanobis"].provenance["fit_cache"] == "off"
    monkeypatch.setenv("OODBENCH_FIT_CACHE", "1")
    monkeypatch.setenv("OODBENCH_FIT_CACHE_MAX_MB", "0.001")
    r = _score(st, key, yaml, ["knn"], {"knn": {"k": 3}})
    assert r["knn"].provenance["fit_cache"].startswith("not cached")


def test_fit_cache_keys_on_model_head_and_code(tmp_path):
    from oodbench import fitcache

    x = _probe_inputs(n=300)
    s = make_scorer("react")
    k1 = fitcache.fit_key(s, x, {"fingerprint": "a"})
    assert k1 == fitcache.fit_key(make_scorer("react"), x, {"fingerprint": "a"})
    assert k1 != fitcache.fit_key(s, x, {"fingerprint": "b"})
    assert k1 != fitcache.fit_key(make_scorer("react", p=80), x, {"fingerprint": "a"})
    x2 = _probe_inputs(n=300)
    x2.head = Head("probe", x2.head.weight * 2, x2.head.bias, "penultimate")
    assert k1 != fitcache.fit_key(s, x2, {"fingerprint": "a"})


def test_store_reads_are_blockwise_and_identical(tmp_path):
    from oodbench.config import load_catalogue
    from oodbench.engine import load_inputs, load_model_view, make_head

    st, key, yaml = _tiny_store(tmp_path, n_train=1000)
    bench = load_catalogue(yaml).benchmark("tiny")
    view = load_model_view(st, key, bench)
    head = make_head(view, "zeroshot")
    x = load_inputs(st, view, "tiny-train", head, "train")
    raw = x.loaders["image_embeds"]()
    np.testing.assert_array_equal(x.features("embeds"), l2_normalize(raw.astype(np.float32)))
    np.testing.assert_array_equal(x.features("penultimate"), x.loaders["penultimate"]().astype(np.float32))
    assert "image_embeds" not in x._cache  # the raw array is not kept next to the features
    blocks = list(x.row_blocks("penultimate", 300))
    assert [b.shape[0] for _, b in blocks] == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), raw)



def test_norm_bounds_are_upper_bounds_and_tight():
    """The float32 norms of the bf16 error bound never fall below the float64 norms (scales from
    1e-30 to 1e30: underflowing and overflowing squares; dimensions 1 to 4096), and stay within
    1e-3 of them where float32 squares neither underflow nor overflow."""
    import torch

    from oodbench.scorers.topk import _row_norms

    rng = np.random.default_rng(0)
    for d in (1, 3, 768, 4096):
        x = rng.standard_normal((300, d)) * 10.0 ** rng.uniform(-30, 30, (300, 1))
        x[:5] = np.abs(x[:5]) + 1.0  # same-sign rows: no cancellation to hide an error
        xt = torch.from_numpy(x.astype(np.float32))
        xb = xt.to(torch.bfloat16)
        exact = np.linalg.norm(xt.double().numpy(), axis=1)
        bound = _row_norms(xt).numpy()
        normal = (exact > 1e-15) & (exact < 1e18)
        assert (bound >= exact).all() and (bound <= exact * (1 + 1e-3))[normal].all()
        diff = np.linalg.norm(xb.double().numpy() - xt.double().numpy(), axis=1)
        dbound = _row_norms(xb, minus=xt).numpy()
        normal = (diff > 1e-15) & (diff < 1e18)
        assert (dbound >= diff).all() and (dbound <= diff * (1 + 1e-3))[normal].all()


def test_vim_origin_least_squares_equals_pinv():
    """u = -pinv(W) b: the QR least-squares path (full rank) and the pinv fallback (rank
    deficient) both equal numpy's pinv."""
    from oodbench.scorers.distance import _origin

    rng = np.random.default_rng(1)
    for c, d, rank in ((50, 20, 20), (10, 30, 10), (40, 24, 12)):
        w = rng.standard_normal((c, rank)) @ rng.standard_normal((rank, d))
        b = rng.standard_normal(c)
        data = Inputs.from_arrays("train", head=Head("h", w, b, "embeds"), embeds=np.zeros((4, d), np.float32))
        _, _, u = _origin(data)
        ref = -(np.linalg.pinv(w) @ b)
        np.testing.assert_allclose(u, ref, rtol=1e-9, atol=1e-10 * np.abs(ref).max())


def test_vim_origin_folded_into_products_keeps_float32_precision(monkeypatch):
    """ViM / Residual fold the origin u into the float32 products (no centring pass) where
    ||u|| is at most half the RMS of ||h - u||: scatter and residual norms then equal float64
    references to float32 precision. Rows clustered far from 0 around u would lose digits
    folded: there the guard says no and the rows are centred first."""
    from oodbench.scorers import distance
    from oodbench.scorers.distance import centred_scatter, fold_ok, residual_norm

    rng = np.random.default_rng(3)
    n, d = 20_000, 48  # > GEMM_BLOCK_ROWS: several blocks
    spread = rng.normal(size=(n, d)) * np.linspace(0.2, 3.0, d)
    ns = np.linalg.qr(rng.normal(size=(d, d // 2)))[0]
    for far, folds in ((0.3, True), (300.0, False)):
        centre = far * rng.normal(size=d) / np.sqrt(d) * np.sqrt((spread ** 2).sum(1).mean())
        h = (centre + spread).astype(np.float32)
        u = centre + 0.1 * rng.normal(size=d)
        c = h.astype(np.float64) - u
        assert fold_ok(u, float((c ** 2).sum(1).mean())) is folds
        ref = c.T @ c
        assert np.abs(centred_scatter(h, u) - ref).max() <= 1e-6 * np.abs(ref).max()
        r_ref = np.linalg.norm(c @ ns, axis=1)
        err = {f: np.abs(residual_norm(h, u, ns, fold=f) - r_ref).max() / r_ref.max() for f in (True, False)}
        assert err[False] <= 1e-6
        if folds:
            assert err[True] <= 1e-6
        else:  # why the guard exists
            assert err[True] > 30 * err[False]
    # the scorers record the choice and score as the centred path does
    x = _probe_inputs(n=3000, d=40)
    test = _probe_inputs(n=800, d=40, seed=9)
    for name, params in (("vim", {"dim": 10}), ("residual", {"dim": 10})):
        a = make_scorer(name, **params).fit(x)
        assert a.fold_ is True
        monkeypatch.setattr(distance, "fold_ok", lambda u, m: False)
        b = make_scorer(name, **params).fit(_probe_inputs(n=3000, d=40))
        monkeypatch.undo()
        assert b.fold_ is False
        sa, sb = a.score(test), b.score(test)
        assert np.abs(sa - sb).max() <= 1e-5 * np.abs(sb).max()
    # data clustered far from 0 around the origin u = -pinv(W) b = centre (W has full column
    # rank): the scorer must choose to centre, and score with the centred path
    d, c_far = 40, 300.0
    centre = c_far * rng.normal(size=d) / np.sqrt(d) * np.sqrt(d * 3.0)
    w = rng.normal(size=(60, d)).astype(np.float32)
    head = Head("far", w, (-w.astype(np.float64) @ centre).astype(np.float32), "penultimate")
    far = lambda m, seed: Inputs.from_arrays(  # noqa: E731
        "train", head=head, labels=np.zeros(m, int),
        penultimate=(centre + np.random.default_rng(seed).normal(size=(m, d)) * np.linspace(0.5, 3, d)).astype(np.float32))
    r = make_scorer("residual", dim=10).fit(far(12_000, 1))
    assert r.fold_ is False
    test_far = far(2000, 2)
    h64 = test_far.features("penultimate").astype(np.float64)
    ref = -np.linalg.norm((h64 - r.u_) @ r.ns_.astype(np.float64), axis=1)
    assert np.abs(r.score(test_far) - ref).max() <= 1e-6 * np.abs(ref).max()
    r.fold_ = True  # what folding would have cost here
    assert np.abs(r.score(test_far) - ref).max() > 1e-5 * np.abs(ref).max()


def test_auto_search_path_follows_the_per_cpu_choice(monkeypatch):
    """``method="auto"`` takes the bf16 search only where :func:`bf16_pays` says so (AMX CPUs;
    decided from the CPU, never from a timing, so runs are reproducible); an explicit method is
    obeyed either way."""
    from oodbench.scorers import topk

    rng = np.random.default_rng(5)
    bank = _unit(rng.normal(size=(topk.EXACT_BELOW + 10, 16)))
    monkeypatch.setattr(topk, "_BF16_PAYS", False)
    assert InnerProductIndex(bank).method == "exact"
    monkeypatch.setattr(topk, "_BF16_PAYS", True)
    assert InnerProductIndex(bank).method == ("bf16" if bf16_matmul_accumulates_in_fp32() else "exact")
    monkeypatch.setattr(topk, "_BF16_PAYS", None)
    monkeypatch.setattr(topk, "_has_amx", lambda: True)
    assert topk.bf16_pays() is bf16_matmul_accumulates_in_fp32()  # AMX: no measurement needed
    monkeypatch.setattr(topk, "_BF16_PAYS", None)
    monkeypatch.setattr(topk, "_has_amx", lambda: False)
    assert topk.bf16_pays() is False and topk._BF16_PAYS is False  # no AMX: float32, never timed


def test_fit_cache_entry_missing_a_scalar_is_a_miss(tmp_path):
    """A cache file whose recorded numpy scalar has no array (damaged, or written by another
    version) is not trusted: load says False (refit) instead of raising."""
    from types import SimpleNamespace

    from oodbench import fitcache
    from oodbench.store import write_h5_atomic

    path = tmp_path / "vim-x.h5"
    write_h5_atomic(path, {"state/mean_": np.zeros(3)},
                    {"kind": "fit", "method": "vim", "params": {}, "fit_key": "k",
                     "scalars": {"alpha_": {"numpy_scalar": True}}})
    scorer = SimpleNamespace()
    assert fitcache.load(path, "k", scorer) is False
    assert not hasattr(scorer, "mean_")
