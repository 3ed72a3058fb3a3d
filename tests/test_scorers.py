"""Every registered scorer on one shared random world, plus brute-force checks per scorer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from scipy.special import logsumexp, softmax
from scipy.stats import weibull_min
from sklearn.covariance import EmpiricalCovariance
from threadpoolctl import threadpool_limits

from oodbench.errors import OodbenchError
from oodbench.scorers import Head, Inputs, TextBank, VisualParams, make_scorer, scorer_names
from oodbench.scorers.classwise import fit_weibull, weibull_cdf
from oodbench.scorers.clip import mine_negatives
from oodbench.scorers.common import check_finite
from oodbench.scorers.inputs import l2_normalize
from oodbench.scorers.logit import fit_temperature

C, WIDTH, DIM, PATCHES = 6, 288, 64, 5


def _split(rng, split, n_id, n_ood, mu, proj, head, text, visual=None):
    y = rng.integers(0, C, n_id)
    y[: 2 * C] = np.repeat(np.arange(C), 2)  # every class present
    pen = np.concatenate(
        [mu[y] + rng.normal(size=(n_id, WIDTH)), 1.5 * rng.normal(size=(n_ood, WIDTH))]
    )
    labels = np.concatenate([y, -np.ones(n_ood, int)])
    emb = pen @ proj + 0.3 * rng.normal(size=(len(labels), DIM))
    arrays = dict(
        labels=labels,
        ids=np.array([f"{split}/{i:04d}.png" for i in range(len(labels))]),
        penultimate=pen.astype(np.float32),
        image_embeds=emb.astype(np.float32),
        local_embeds=(emb[:, None, :] + rng.normal(size=(len(labels), PATCHES, DIM))).astype(
            np.float32
        ),
        **{
            "layers/cls": np.stack([pen, 0.5 * pen + rng.normal(size=pen.shape)], 1).astype(
                np.float32
            )
        },
    )
    return Inputs.from_arrays(split, head=head, text=text, visual=visual, **arrays)


def make_world(seed: int = 0) -> dict[str, Inputs]:
    """Train/val/test splits of a 6-class world with a linear probe on the penultimate feature."""
    rng = np.random.default_rng(seed)
    mu = 0.4 * rng.normal(size=(C, WIDTH))
    proj = rng.normal(size=(WIDTH, DIM)) / np.sqrt(WIDTH)
    head = Head(
        "probe", (2.0 * mu).astype(np.float32), rng.normal(size=C).astype(np.float32), "penultimate"
    )
    cls_emb = mu @ proj
    text = {
        "classes": TextBank(
            [f"c{i}" for i in range(C)],
            ["a photo of a {}.", "the nice {}."],
            np.stack([cls_emb, cls_emb + 0.1 * rng.normal(size=cls_emb.shape)]).astype(np.float32),
        ),
        "negatives": TextBank(
            [f"n{i}" for i in range(1000)],
            ["the nice {}."],
            rng.normal(size=(1, 1000, DIM)).astype(np.float32),
        ),
        "negatives_csp": TextBank(
            [f"a{i}" for i in range(300)],
            ["{} object", "{} scene"],
            rng.normal(size=(2, 300, DIM)).astype(np.float32),
        ),
        "negatives_adj": TextBank(
            [f"j{i}" for i in range(200)],
            ["This is a {} photo"],
            rng.normal(size=(1, 200, DIM)).astype(np.float32),
        ),
        "outliers": TextBank(
            [f"o{i}" for i in range(20)],
            ["a photo of a {}."],
            rng.normal(size=(1, 20, DIM)).astype(np.float32),
        ),
    }
    # the ID-label banks of NegLabel ("the nice {}") and CSP (8 noun prompts), and CSP's nouns
    text["classes_neglabel"] = text["classes"]
    text["classes_csp"] = text["classes"]
    text["negatives_csp_nouns"] = text["negatives"]
    vrng = np.random.default_rng(seed + 1000)
    visual = VisualParams(proj=proj.astype(np.float32), ln_post_weight=np.ones(WIDTH, np.float32),
                          ln_post_bias=0.1 * vrng.normal(size=WIDTH).astype(np.float32))
    world = {
        "train": _split(rng, "train", 600, 0, mu, proj, head, text, visual),
        "val": _split(rng, "val", 120, 0, mu, proj, head, text, visual),
        "test": _split(rng, "test", 40, 20, mu, proj, head, text, visual),
    }
    for split, inputs in world.items():
        n_id = int((inputs.labels >= 0).sum())
        inputs.extra["reference"] = _split(vrng, split, n_id, len(inputs) - n_id, mu, proj, head, text, visual)
    return world


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small matrices: one BLAS/torch thread is fastest and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world() -> dict[str, Inputs]:
    return make_world()


def fitted(name: str, world, **params):
    scorer = make_scorer(name, **params)
    if scorer.fit_split is not None:
        scorer.fit(world[scorer.fit_split])
    return scorer


def run(name: str, world, **params) -> np.ndarray:
    return fitted(name, world, **params).score(world["test"])


# -- every scorer ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", scorer_names())
def test_every_scorer_runs(name, world):
    scorer = make_scorer(name)
    assert scorer.reference
    assert "higher" in (type(scorer).__doc__ or "").lower()  # every docstring states the sign
    assert set(scorer.search_space) <= set(scorer.params)
    s = run(name, world)
    assert s.shape == (len(world["test"]),) and s.dtype == np.float64
    assert np.isfinite(s).all()


@pytest.mark.parametrize("name", scorer_names())
def test_unfitted_or_deterministic(name, world):
    scorer = make_scorer(name)
    if scorer.fit_split is not None:
        with pytest.raises(OodbenchError, match="must be fitted"):
            scorer.score(world["test"])
    else:
        np.testing.assert_array_equal(scorer.score(world["test"]), scorer.score(world["test"]))


def test_id_scores_higher_on_average(world):
    """Sanity of the sign convention: the world's OoD half scores lower for the head-based scores."""
    ood = world["test"].labels < 0
    for name in (
        "msp",
        "energy",
        "maxlogit",
        "knn",
        "mahalanobis",
        "vim",
        "react",
        "nnguide",
        "she",
        "mcm",
    ):
        s = run(name, world)
        assert s[~ood].mean() > s[ood].mean(), name


# -- logit family ----------------------------------------------------------------------------
def _z(world, split="test"):
    d = world[split]
    return (
        d.features("penultimate").astype(np.float64) @ d.head.weight.T.astype(np.float64)
        + d.head.bias
    )


def test_logit_scores_by_hand(world):
    z = _z(world)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rtol = 1e-5
    np.testing.assert_allclose(run("msp", world), p.max(1), rtol=rtol)
    np.testing.assert_allclose(run("maxlogit", world), z.max(1), rtol=rtol)
    np.testing.assert_allclose(
        run("energy", world, temperature=2.0), 2.0 * np.log(np.exp(z / 2.0).sum(1)), rtol=rtol
    )
    np.testing.assert_allclose(run("entropy", world), (p * np.log(p)).sum(1), rtol=rtol, atol=1e-6)
    gen = [-sum(q**0.1 * (1 - q) ** 0.1 for q in sorted(row)[-4:]) for row in p]
    np.testing.assert_allclose(run("gen", world, m=4), gen, rtol=rtol)
    np.testing.assert_allclose(
        run("gen", world), -(p**0.1 * (1 - p) ** 0.1).sum(1), rtol=rtol
    )  # M capped at C


def test_tempscale_minimises_nll(world):
    scorer = fitted("tempscale", world)
    z, y = _z(world, "val"), world["val"].labels

    def nll(t):
        return np.mean(logsumexp(z / t, axis=1) - z[np.arange(len(y)), y] / t)

    t = scorer.temperature_
    assert nll(t) <= min(nll(t * 1.001), nll(t / 1.001))
    grid = np.exp(np.linspace(-4, 4, 401))
    assert nll(t) <= min(nll(g) for g in grid) + 1e-12
    np.testing.assert_allclose(
        scorer.score(world["test"]), softmax(_z(world) / t, axis=1).max(1), rtol=1e-5
    )


def test_tempscale_on_separable_val_warns():
    z = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    t, bracketed = fit_temperature(z, np.array([0, 1, 0]))
    assert not bracketed and t < 0.1
    t, bracketed = fit_temperature(z, np.array([0, 1, 1]))
    assert bracketed and 0.1 < t < 100


def test_klm_by_loop(world):
    zv = _z(world, "val")
    pv = softmax(zv, axis=1)
    pred = pv.argmax(1)
    q = {k: pv[pred == k].mean(0) for k in np.unique(pred)}
    p = softmax(_z(world), axis=1)
    expected = [-min(float(np.sum(pi * np.log(pi / qk))) for qk in q.values()) for pi in p]
    np.testing.assert_allclose(run("klm", world), expected, rtol=1e-5, atol=1e-7)


# -- feature family --------------------------------------------------------------------------
def test_knn_vs_brute_force(world):
    bank = l2_normalize(world["train"].features("embeds").astype(np.float64))
    q = l2_normalize(world["test"].features("embeds").astype(np.float64))
    d = np.sort(np.linalg.norm(q[:, None, :] - bank[None], axis=2), axis=1)
    np.testing.assert_allclose(run("knn", world, k=7), -d[:, 6], rtol=1e-4)
    # another feature space and a seeded bank subset
    s = run("knn", world, k=3, feature="layer:1", bank_fraction=0.5, seed=3)
    assert np.isfinite(s).all() and s.shape == (60,)


def _gaussians(world, space="embeds"):
    h, y = world["train"].features(space).astype(np.float64), world["train"].labels
    mu = np.stack([h[y == c].mean(0) for c in range(C)])
    ec = EmpiricalCovariance(assume_centered=False).fit(h - mu[y])
    return h, mu, ec.precision_


def test_mahalanobis_vs_scipy(world):
    _, mu, prec = _gaussians(world)
    x = world["test"].features("embeds").astype(np.float64)
    expected = [-min(scipy_mahalanobis(xi, m, prec) ** 2 for m in mu) for xi in x]
    np.testing.assert_allclose(run("mahalanobis", world), expected, rtol=1e-6)


def test_rmds_vs_sklearn(world):
    h, mu, prec = _gaussians(world)
    bg = EmpiricalCovariance().fit(h)
    x = world["test"].features("embeds").astype(np.float64)
    expected = [
        max(-(scipy_mahalanobis(xi, m, prec) ** 2) for m in mu) + bg.mahalanobis(xi[None])[0]
        for xi in x
    ]
    np.testing.assert_allclose(run("rmds", world), expected, rtol=1e-6, atol=1e-6)


def _residual_by_hand(world, dim):
    w, b = (
        world["train"].head.weight.astype(np.float64),
        world["train"].head.bias.astype(np.float64),
    )
    u = -np.linalg.pinv(w) @ b
    h = world["train"].features("penultimate").astype(np.float64)
    eigval, eigvec = np.linalg.eig(
        np.cov((h - u).T, bias=True) + np.outer((h - u).mean(0), (h - u).mean(0))
    )
    ns = eigvec.real[:, np.argsort(-eigval.real)[dim:]]
    res_train = np.linalg.norm((h - u) @ ns, axis=1)
    x = world["test"].features("penultimate").astype(np.float64)
    return w, b, h, x, np.linalg.norm((x - u) @ ns, axis=1), res_train


def test_vim_vs_straightforward(world):
    w, b, h, x, res, res_train = _residual_by_hand(world, 256)
    alpha = (h @ w.T + b).max(1).mean() / res_train.mean()
    expected = logsumexp(x @ w.T + b, axis=1) - alpha * res
    # ViM's covariance is formed from float32 products (as OpenOOD's / pytorch-ood's are);
    # the reference here is float64 throughout: agreement to ~1e-5 of the score
    np.testing.assert_allclose(run("vim", world), expected, rtol=2e-5)


def test_residual_caps_dim(world):
    *_, res, _ = _residual_by_hand(world, WIDTH // 2)
    scorer = fitted("residual", world)
    assert scorer.dim_ == WIDTH // 2
    np.testing.assert_allclose(scorer.score(world["test"]), -res, rtol=1e-6)
    *_, res, _ = _residual_by_hand(world, 100)
    np.testing.assert_allclose(run("residual", world, dim=100), -res, rtol=1e-6)


def test_nnguide_vs_brute_force(world):
    h = world["train"].features("penultimate").astype(np.float64)
    w, b = (
        world["train"].head.weight.astype(np.float64),
        world["train"].head.bias.astype(np.float64),
    )
    bank = l2_normalize(h) * logsumexp(h @ w.T + b, axis=1)[:, None]
    x = world["test"].features("penultimate").astype(np.float64)
    sims = np.sort(l2_normalize(x) @ bank.T, axis=1)[:, ::-1][:, :20]
    expected = logsumexp(x @ w.T + b, axis=1) * sims.mean(1)
    np.testing.assert_allclose(run("nnguide", world, k=20, bank_fraction=1.0), expected, rtol=1e-5)


def test_she_fdbd_nci_by_loop(world):
    h, y = world["train"].features("penultimate").astype(np.float64), world["train"].labels
    w, b = (
        world["train"].head.weight.astype(np.float64),
        world["train"].head.bias.astype(np.float64),
    )
    pred_train = (h @ w.T + b).argmax(1)
    m = np.stack([h[(y == c) & (pred_train == c)].mean(0) for c in range(C)])
    mean = h.mean(0)
    x = world["test"].features("penultimate").astype(np.float64)
    she, fdbd, nci = [], [], []
    for xi in x:
        z = w @ xi + b
        k = int(z.argmax())
        she.append(xi @ m[k])
        fdbd.append(
            sum(abs(z[k] - z[c]) / np.linalg.norm(w[k] - w[c]) for c in range(C) if c != k)
            / np.linalg.norm(xi - mean)
        )
        nci.append(w[k] @ (xi - mean) / np.linalg.norm(xi - mean) + 1e-3 * np.abs(xi).sum())
    np.testing.assert_allclose(run("she", world), she, rtol=1e-5)
    np.testing.assert_allclose(run("fdbd", world), fdbd, rtol=1e-5)
    np.testing.assert_allclose(run("nci", world, alpha=1e-3), nci, rtol=1e-5)


def test_weibull_fit_matches_scipy():
    rng = np.random.default_rng(1)
    for scale in (0.01, 1.0, 50.0):
        d = np.sort(rng.gamma(2.0, scale, 300))[-20:]
        x = d + 10000 - d.min()
        c, lam = fit_weibull(x)
        c_ref, _, lam_ref = weibull_min.fit(x, floc=0)
        np.testing.assert_allclose([c, lam], [c_ref, lam_ref], rtol=1e-5)
        q = x[[0, 10, 19]]
        np.testing.assert_allclose(
            weibull_cdf(q, c, lam), weibull_min.cdf(q, c_ref, scale=lam_ref), atol=1e-4
        )
    assert fit_weibull(np.full(5, 3.0))[0] == np.inf


def test_openmax_by_loop(world):
    scorer = fitted("openmax", world)
    z = world["test"].logits.astype(
        np.float64
    )  # the Weibull CDFs are steep: use the very same logits
    expected = []
    for zi in z:
        top = np.argsort(-zi)[:3]
        omega = np.zeros(C)
        for rank, c in enumerate(top):
            shape, scale, shift = scorer.weibull_[c]
            w_score = weibull_min.cdf(
                np.linalg.norm(zi - scorer.mavs_[c]) + shift, shape, scale=scale
            )
            omega[c] = w_score * (3 - rank) / 3
        revised = zi * (1 - omega)
        unknown = np.sum(zi * omega)
        expected.append(1 - math.exp(unknown) / (np.exp(revised).sum() + math.exp(unknown)))
    np.testing.assert_allclose(scorer.score(world["test"]), expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("translate", [1.0, 10000.0])
def test_openmax_translate_amount(world, translate):
    """libMR FitHigh shifts the tail by translate_amount - min(tail): 10000 (libMR's source,
    pytorch-ood, the default) or 1 (OpenOOD's PyPI libmr), selectable."""
    scorer = fitted("openmax", world, translate=translate)
    z = world["train"].logits.astype(np.float64)
    y = world["train"].labels
    for c in range(C):
        rows = (y == c) & (z.argmax(1) == c)
        d = np.linalg.norm(z[rows] - z[rows].mean(0), axis=1)
        tail = np.sort(d)[-20:]
        assert scorer.weibull_[c, 2] == pytest.approx(translate - tail.min(), rel=1e-12)
        shape, scale = fit_weibull(tail + translate - tail.min())
        np.testing.assert_allclose(scorer.weibull_[c, :2], [shape, scale], rtol=1e-9)
    if translate == 1.0:
        assert not np.allclose(scorer.score(world["test"]), run("openmax", world))


def test_fit_split_is_selectable(world):
    """ReAct, VRA and Residual fit on ID train by default and on ID val with fit_split=val (OpenOOD)."""
    x, w, b = _head(world)
    for split in ("train", "val"):
        h = world[split].features("penultimate").astype(np.float64)
        react = fitted("react", world, fit_split=split)
        assert react.fit_split == split and make_scorer("react").fit_split == "train"
        np.testing.assert_allclose(
            react.score(world["test"]), logsumexp(np.minimum(x, np.percentile(h, 90)) @ w.T + b, axis=1), rtol=1e-6
        )
        lo, hi = np.percentile(h, [10, 90])
        np.testing.assert_allclose(
            run("vra", world, fit_split=split), logsumexp(np.clip(x, lo, hi) @ w.T + b, axis=1), rtol=1e-6
        )
        res = fitted("residual", world, fit_split=split, dim=4)
        same = make_scorer("residual", dim=4).fit(world[split])
        np.testing.assert_allclose(res.score(world["test"]), same.score(world["test"]), rtol=1e-12)
    assert not np.allclose(run("react", world, fit_split="val"), run("react", world))
    with pytest.raises(OodbenchError, match="'fit_split' parameter of react must be one of 'train', 'val'"):
        make_scorer("react", fit_split="test")


def test_nnguide_bank_size_and_collapse_warning(world, monkeypatch):
    from oodbench.scorers import distance

    warned = []
    monkeypatch.setattr(distance, "warn", warned.append)
    s = fitted("nnguide", world, k=5, bank_size=40)
    assert s.bank_.shape[0] == 40 and not warned
    fitted("nnguide", world, k=5)  # 1 % of 600 train rows = 6 > k: fine
    assert not warned
    fitted("nnguide", world, k=10)  # 1 % = 6 -> the bank is k rows: the top-k is the whole bank
    assert len(warned) == 1 and "the bank has 10 rows for k=10" in warned[0]
    with pytest.raises(OodbenchError, match="bank_size=3 is below k=5"):
        fitted("nnguide", world, k=5, bank_size=3)


# -- activation shaping ----------------------------------------------------------------------
def _head(world):
    d = world["test"]
    return (
        d.features("penultimate").astype(np.float64),
        d.head.weight.astype(np.float64),
        d.head.bias.astype(np.float64),
    )


def test_react_vra_dice_by_hand(world):
    x, w, b = _head(world)
    h = world["train"].features("penultimate").astype(np.float64)
    tau = np.percentile(h, 90)
    np.testing.assert_allclose(
        run("react", world), logsumexp(np.minimum(x, tau) @ w.T + b, axis=1), rtol=1e-6
    )
    lo, hi = np.percentile(h, 10), np.percentile(h, 90)
    np.testing.assert_allclose(
        run("vra", world), logsumexp(np.clip(x, lo, hi) @ w.T + b, axis=1), rtol=1e-6
    )
    contrib = h.mean(0) * w
    wm = np.where(contrib > np.percentile(contrib, 70), w, 0.0)
    np.testing.assert_allclose(run("dice", world, p=70), logsumexp(x @ wm.T + b, axis=1), rtol=1e-6)


def test_ash_scale_by_sorting(world):
    x, w, b = _head(world)
    k = WIDTH - round(WIDTH * 0.9)
    ks = WIDTH - round(WIDTH * 0.85)
    exp_p, exp_b, exp_s, exp_scale = [], [], [], []
    for xi in x:
        keep = np.argsort(xi)[::-1][:k]
        pruned = np.zeros_like(xi)
        pruned[keep] = xi[keep]
        binary = np.zeros_like(xi)
        binary[keep] = xi.sum() / k
        scaled = pruned * np.exp(xi.sum() / pruned.sum())
        top = np.sort(xi)[::-1][:ks].sum()
        for out, v in (
            (exp_p, pruned),
            (exp_b, binary),
            (exp_s, scaled),
            (exp_scale, xi * np.exp(xi.sum() / top)),
        ):
            out.append(logsumexp(w @ v + b))
    for name, exp in (("ash_p", exp_p), ("ash_b", exp_b), ("ash_s", exp_s), ("scale", exp_scale)):
        np.testing.assert_allclose(run(name, world), exp, rtol=1e-6, err_msg=name)
        assert make_scorer(name).relu_assumption


def test_gradnorm_is_the_fc_gradient_l1_norm(world):
    """Autograd of the original GradNorm loss (targets all ones) w.r.t. the FC weight."""
    x, w, b = _head(world)
    fc = torch.nn.Linear(WIDTH, C).double()
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(w))
        fc.bias.copy_(torch.from_numpy(b))
    expected = []
    for xi in torch.from_numpy(x):
        fc.zero_grad()
        loss = torch.sum(
            -torch.ones(1, C, dtype=torch.float64) * torch.log_softmax(fc(xi[None]) / 2.0, dim=1)
        )
        loss.backward()
        expected.append(fc.weight.grad.abs().sum().item())
    np.testing.assert_allclose(run("gradnorm", world, temperature=2.0), expected, rtol=1e-6)


# -- CLIP-native -----------------------------------------------------------------------------
def _cos(world, bank="classes", t=0):
    x = l2_normalize(world["test"].array("image_embeds").astype(np.float64))
    e = world["test"].text_bank(bank).embeds[t].astype(np.float64)
    return x @ l2_normalize(e).T


def test_mcm_eoe_by_hand(world):
    cos = _cos(world)
    np.testing.assert_allclose(run("mcm", world), softmax(cos, axis=1).max(1), rtol=1e-5)
    cos2 = _cos(world, t=1)
    np.testing.assert_allclose(
        run("mcm", world, templates="the nice {}."), softmax(cos2, axis=1).max(1), rtol=1e-5
    )
    np.testing.assert_allclose(
        run("mcm", world, templates="1"), softmax(cos2, axis=1).max(1), rtol=1e-5
    )
    both = np.concatenate([cos, _cos(world, "outliers")], 1)
    p = softmax(both / 0.5, axis=1)
    np.testing.assert_allclose(
        run("eoe", world, temperature=0.5), p[:, :C].max(1) - 0.25 * p[:, C:].max(1), rtol=1e-5
    )


def test_glmcm_by_loop(world):
    cos = _cos(world)
    t = l2_normalize(world["test"].text_bank("classes").embeds[0].astype(np.float64))
    local = world["test"].array("local_embeds").astype(np.float64)
    expected = []
    for i in range(local.shape[0]):
        best = max(softmax(l2_normalize(local[i, j]) @ t.T).max() for j in range(PATCHES))
        expected.append(softmax(cos[i]).max() + 0.5 * best)
    np.testing.assert_allclose(run("glmcm", world, lam=0.5), expected, rtol=1e-5)


def _toy(ratio=0.5, **params):
    e = np.eye(4)
    classes = TextBank(["cat", "dog"], ["{}"], e[None, :2])
    # 95th percentile of each candidate's cosine to (cat, dog): c0 0, c1 0.85, c2 0.05, c3 0.95
    cand = np.stack([e[2], e[0] + 0.5 * e[3], e[3] + 0.05 * e[1], e[0] + 0.1 * e[2]])
    negs = TextBank([f"n{i}" for i in range(4)], ["{}"], cand[None])
    x = np.array([[0.8, 0.1, 0.6, 0.0]], np.float32)
    data = Inputs.from_arrays(
        "test", text={"classes": classes, "negatives": negs}, labels=np.array([-1]), image_embeds=x
    )
    params = {"bank": "negatives", "id_bank": "classes", **params}
    score = make_scorer("neglabel", ratio=ratio, temperature=0.5, **params).score(data)[0]
    return score, l2_normalize(x[0].astype(np.float64)), l2_normalize(cand)


def test_neglabel_two_class_toy():
    score, x, cand = _toy(ngroup=1)
    # kept: c0 and c2 (the two lowest percentiles), in that order
    a = math.exp(x[0] / 0.5) + math.exp(x[1] / 0.5)
    n0, n2 = math.exp(x @ cand[0] / 0.5), math.exp(x @ cand[2] / 0.5)
    assert score == pytest.approx(a / (a + n0 + n2), rel=1e-6)
    score2, *_ = _toy(ngroup=2)  # two groups of one negative each
    assert score2 == pytest.approx(0.5 * (a / (a + n0) + a / (a + n2)), rel=1e-6)
    score3, *_ = _toy(ratio=0.75, ngroup=1)  # adds c1
    n1 = math.exp(x @ cand[1] / 0.5)
    assert score3 == pytest.approx(a / (a + n0 + n1 + n2), rel=1e-6)


def test_neglabel_grouping_drops_remainder_and_is_seeded(world):
    a = run("neglabel", world, ngroup=7, seed=1)
    np.testing.assert_array_equal(a, run("neglabel", world, ngroup=7, seed=1))
    assert not np.allclose(a, run("neglabel", world, ngroup=7, seed=2))
    np.testing.assert_allclose(
        run("neglabel", world, ngroup=1), run("neglabel", world, ngroup=1, seed=5)
    )
    with pytest.raises(
        OodbenchError, match="'ngroup' parameter is 500 but only 180 negative labels"
    ):
        run("neglabel", world, ngroup=500)


def test_csp_pools_both_banks(world):
    scorer = make_scorer("csp", templates="first")
    pos = world["test"].text_bank("classes_csp").name_embeds("first")
    neg = scorer.negatives(world["test"], pos)
    assert neg.shape[0] == 150 + 45
    csp = world["test"].text_bank("negatives_csp")
    kept = mine_negatives(csp.name_embeds("ensemble"), pos, 0.15, 95.0)
    np.testing.assert_allclose(neg[150:], csp.name_embeds("ensemble")[kept])
    np.testing.assert_allclose(
        make_scorer("csp", bank="negatives", id_bank="classes_neglabel", templates="first",
                    neg_templates="first").score(world["test"]),
        run("neglabel", world, bank="negatives"),
    )


# -- validation and bad input ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("knn", {"k": 0}, "The 'k' parameter of knn must be an int ≥ 1. Got 0 instead."),
        (
            "react",
            {"p": 120},
            "The 'p' parameter of react must be a float in [0.0, 100.0]. Got 120 instead.",
        ),
        (
            "gen",
            {"gamma": "abc"},
            "The 'gamma' parameter of gen must be a float ≥ 1e-06. Got 'abc' instead.",
        ),
        (
            "openmax",
            {"distance": "l1"},
            "The 'distance' parameter of openmax must be one of 'euclidean', 'eucos', 'cosine'. Got 'l1' instead.",
        ),
        (
            "neglabel",
            {"ngroup": 2.5},
            "The 'ngroup' parameter of neglabel must be an int ≥ 1. Got 2.5 instead.",
        ),
        ("nnguide", {"kk": 3}, "Unknown parameter of nnguide 'kk'. Did you mean 'k'?"),
    ],
)
def test_parameter_errors(name, params, message):
    with pytest.raises(OodbenchError) as err:
        make_scorer(name, **params)
    assert str(err.value).startswith(message)


def test_degenerate_fit_sets(world):
    train = world["train"]
    one = Inputs.from_arrays(
        "train",
        head=train.head,
        labels=np.array([0, 0, 1]),
        image_embeds=train.array("image_embeds")[:3],
        penultimate=train.array("penultimate")[:3],
    )
    with pytest.raises(OodbenchError, match="class 1 has 1 fit sample"):
        make_scorer("mahalanobis").fit(one)
    with pytest.raises(OodbenchError, match="needs labelled ID samples"):
        make_scorer("rmds").fit(
            Inputs.from_arrays("train", labels=-np.ones(3, int), image_embeds=np.ones((3, 4)))
        )
    with pytest.raises(
        OodbenchError, match="'k' parameter of knn is 50 but the train bank has only 3"
    ):
        make_scorer("knn").fit(one)
    with pytest.raises(OodbenchError, match="correctly classified train sample"):
        make_scorer("openmax").fit(one)
    with pytest.raises(OodbenchError, match="'dim' parameter of vim is 300"):
        make_scorer("vim", dim=300).fit(train)
    with pytest.raises(OodbenchError, match="'low' \\(50.0\\) must not exceed 'high'"):
        make_scorer("vra", low=50, high=40).fit(train)


def test_non_finite_features_name_the_samples(world):
    test = world["test"]
    pen = test.array("penultimate").copy()
    pen[[3, 7]] = np.nan
    bad = Inputs.from_arrays(
        "test",
        head=test.head,
        text=test.text,
        labels=test.labels,
        ids=test.ids,
        penultimate=pen,
        image_embeds=test.array("image_embeds"),
    )
    for name in ("msp", "vim", "react", "she"):
        scorer = fitted(name, world)
        with pytest.raises(
            OodbenchError, match=r"2 sample\(s\) contain NaN or inf: test/0003.png, test/0007.png"
        ):
            scorer.score(bad)
    with pytest.raises(OodbenchError, match="row 1"):
        check_finite(np.array([[0.0], [np.inf]]))
    local = test.array("local_embeds").copy()
    local[5, 1, 0], local[9, 0, 2] = np.nan, np.inf  # one bad patch in each of two images
    bad_local = Inputs.from_arrays("test", text=test.text, labels=test.labels, ids=test.ids,
                                   image_embeds=test.array("image_embeds"), local_embeds=local)
    with pytest.raises(OodbenchError, match=r"local embeddings of 2 sample\(s\).*test/0005.png, test/0009.png"):
        fitted("glmcm", world).score(bad_local)


def test_missing_inputs_are_clear(world):
    test = world["test"]
    no_local = Inputs.from_arrays(
        "test", text=test.text, labels=test.labels, image_embeds=test.array("image_embeds")
    )
    with pytest.raises(OodbenchError, match="no 'local_embeds'.*--local"):
        make_scorer("glmcm").score(no_local)
    with pytest.raises(OodbenchError, match="No text bank 'envisioned'"):
        make_scorer("eoe", outlier_bank="envisioned").score(test)
    with pytest.raises(OodbenchError, match="Template 'a {} photo' is not in this text bank"):
        make_scorer("mcm", templates="a {} photo").score(test)
    with pytest.raises(OodbenchError, match="No head is available"):
        make_scorer("energy").score(no_local)
