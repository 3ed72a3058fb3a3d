"""Our scorers against pytorch-ood 0.4 on the same random features.

pytorch-ood's convention is larger = more OoD, ours larger = more ID, so ours = -theirs, times
a constant where the two definitions differ by one (each such case says why).
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_ood.detector as detector  # noqa: E402  (the test extra: a missing install fails, never skips)
import torch
from threadpoolctl import threadpool_limits

from oodbench.scorers import Head, Inputs, TextBank, make_scorer

C, D, N_TRAIN = 5, 24, 400


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small matrices: one BLAS/torch thread is fastest and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def float64_torch():
    """pytorch-ood allocates its buffers with the default dtype: make it float64 to compare tightly."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _split(rng, name, n_id, n_ood, mu, head, text):
    y = np.concatenate([np.arange(C).repeat(4), rng.integers(0, C, n_id - 4 * C)])
    h = np.concatenate([mu[y] + rng.normal(size=(n_id, D)), 1.5 * rng.normal(size=(n_ood, D))])
    labels = np.concatenate([y, -np.ones(n_ood, int)])
    return Inputs.from_arrays(
        name, head=head, text=text, labels=labels, penultimate=h, image_embeds=h[:, :16] + 0.5
    )


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(7)
    mu = 0.5 * rng.normal(size=(C, D))
    head = Head(
        "probe", 0.8 * mu + 0.05 * rng.normal(size=(C, D)), 0.3 * rng.normal(size=C), "penultimate"
    )
    text = {"classes": TextBank([f"c{i}" for i in range(C)], ["{}"], rng.normal(size=(1, C, 16)))}
    return {
        "train": _split(rng, "train", N_TRAIN, 0, mu, head, text),
        "val": _split(rng, "val", 150, 0, mu, head, text),
        "test": _split(rng, "test", 60, 30, mu, head, text),
    }


def ours(name, world, **params) -> np.ndarray:
    scorer = make_scorer(name, **params)
    if scorer.fit_split is not None:
        scorer.fit(world[scorer.fit_split])
    return scorer.score(world["test"])


def t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, np.float64))


def feats(world, split, space="penultimate"):
    return t(world[split].features(space).astype(np.float64))


def labels(world, split):
    return torch.as_tensor(world[split].labels)


def linear(world, dtype=torch.float64) -> torch.nn.Linear:
    head = world["train"].head
    fc = torch.nn.Linear(D, C, dtype=dtype)
    with torch.no_grad():
        fc.weight.copy_(t(head.weight))
        fc.bias.copy_(t(head.bias))
    return fc


def logits(world, split) -> torch.Tensor:
    return t(world[split].logits)


def close(a, b, rtol=1e-9, atol=1e-10, err_msg=""):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol, err_msg=err_msg
    )


# -- logits ------------------------------------------------------------------------------------
def test_logit_detectors(world):
    z = logits(world, "test")
    close(ours("msp", world), -detector.MaxSoftmax(None).predict_logits(z))
    close(ours("maxlogit", world), -detector.MaxLogit(None).predict_logits(z))
    close(
        ours("energy", world, temperature=2.0), -detector.EnergyBased(None, t=2.0).predict_logits(z)
    )
    # Entropy: pytorch-ood clips p to [1e-7, 1]; no probability here is that small
    assert z.softmax(1).min() > 1e-7
    close(ours("entropy", world), -detector.Entropy(None).predict_logits(z), rtol=1e-7)


def test_gen(world):
    """pytorch-ood averages the top-M terms (ours sums them, as the paper): ours = -M * theirs.
    It also clamps p to [1e-7, 1 - 1e-7]; no probability here is that extreme."""
    z = logits(world, "test")
    p = z.softmax(1)
    assert p.min() > 1e-7 and p.max() < 1 - 1e-7
    close(
        ours("gen", world), -C * detector.GEN(None, gamma=0.1, M=None).predict_logits(z), rtol=1e-7
    )
    close(
        ours("gen", world, m=3, gamma=0.5),
        -3 * detector.GEN(None, gamma=0.5, M=3).predict_logits(z),
        rtol=1e-7,
    )


def test_temperature_scaling(world):
    """pytorch-ood runs 50 L-BFGS iterations (lr 0.01) per fit and creeps towards the optimum
    (refitting continues from the last T); we solve by Newton's method. So: same T to 0.1% after
    15 refits, our NLL no larger, and the score is MaxSoftmax at our T."""
    z_val, y_val = logits(world, "val"), labels(world, "val")
    theirs = detector.TemperatureScaling(None)
    for _ in range(15):
        theirs.fit_logits(z_val, y_val)
    scorer = make_scorer("tempscale").fit(world["val"])
    assert scorer.temperature_ == pytest.approx(theirs.t.item(), rel=1e-3)

    def nll(temp):
        return torch.nn.functional.cross_entropy(z_val / temp, y_val).item()

    assert nll(scorer.temperature_) <= nll(theirs.t.item())
    fixed = detector.MaxSoftmax(None, t=scorer.temperature_).predict_logits(logits(world, "test"))
    close(scorer.score(world["test"]), -fixed)


def test_kl_matching(world):
    theirs = detector.KLMatching(None).fit_logits(logits(world, "val"))
    close(ours("klm", world), -theirs.predict_logits(logits(world, "test")), rtol=1e-7, atol=1e-9)


def test_openmax(world):
    """Same Weibull fits (theirs: scipy's generic MLE optimiser, ours: the MLE equation, which
    agree to ~1e-7 in the shape), Euclidean distance, tail 20, alpha 3. Differences handled:
    pytorch-ood's class means use every train sample of a class, OpenMax's (and OpenOOD's) only
    the correctly classified ones, so theirs is fitted on those; theirs returns p_unknown, ours
    1 - p_unknown. (pytorch-ood only computes distances for classes that are some sample's
    argmax in the batch; every class is predicted for some test sample here.)"""
    z_train, y_train = logits(world, "train"), labels(world, "train")
    correct = z_train.argmax(1) == y_train
    theirs = detector.OpenMax(None, tailsize=20, alpha=3, euclid_weight=1.0).fit_logits(
        z_train[correct], y_train[correct]
    )
    z = logits(world, "test")
    assert set(z.argmax(1).tolist()) == set(range(C))
    close(ours("openmax", world), 1.0 - theirs.predict_logits(z), rtol=1e-5, atol=1e-6)


# -- features ----------------------------------------------------------------------------------
def test_mahalanobis_and_rmd(world):
    """pytorch-ood's covariance is the scatter sum (not divided by N) + 1e-6 I, and Mahalanobis
    returns half the squared distance: ours = -2N * theirs (Mahalanobis), -N * theirs (RMD), up to
    the 1e-6 ridge."""
    z, y = feats(world, "train", "embeds_raw"), labels(world, "train")
    x = feats(world, "test", "embeds_raw")
    maha = detector.Mahalanobis(None).fit_features(z, y)
    close(
        ours("mahalanobis", world, feature="embeds_raw"),
        -2 * N_TRAIN * maha.predict_features(x),
        rtol=1e-6,
    )
    rmd = detector.RMD(None).fit_features(z, y)
    close(
        ours("rmds", world, feature="embeds_raw"),
        -N_TRAIN * rmd.predict_features(x),
        rtol=1e-6,
        atol=1e-6,
    )


def test_knn(world):
    theirs = detector.KNN(None, k=7).fit_features(
        feats(world, "train", "embeds_raw"), labels(world, "train")
    )
    close(
        ours("knn", world, k=7, feature="embeds_raw"),
        -theirs.predict_features(feats(world, "test", "embeds_raw")),
        rtol=1e-6,
    )


def test_vim(world):
    """pytorch-ood's ViM casts the features to float32: float32 tolerance."""
    head = world["train"].head
    theirs = detector.ViM(None, d=10, w=t(head.weight), b=t(head.bias))
    theirs.fit_features(feats(world, "train"), labels(world, "train"))
    close(
        ours("vim", world, dim=10),
        -theirs.predict_features(feats(world, "test")),
        rtol=1e-5,
        atol=1e-4,
    )


def test_she_nci_fdbd_nnguide(world):
    z, y, x = feats(world, "train"), labels(world, "train"), feats(world, "test")
    fc = linear(world)
    with torch.no_grad():
        she = detector.SHE(None, fc).fit_features(z, y)
        close(ours("she", world), -she.predict_features(x))
        # NCI and fDBD cast the features to float32 in pytorch-ood: float32 head and tolerance
        fc32 = linear(world, torch.float32)
        nci = detector.NCI(None, fc32, alpha=1e-2).fit_features(z)
        close(ours("nci", world, alpha=1e-2), -nci.predict_features(x), rtol=1e-5, atol=1e-6)
        # pytorch-ood averages the boundary distances over the C - 1 other classes; the paper sums
        fdbd = detector.fDBD(None, fc32).fit_features(z)
        close(ours("fdbd", world), -(C - 1) * fdbd.predict_features(x), rtol=1e-5)
        nng = detector.NNGuide(None, fc32, k=10).fit_features(z, y)  # float32 bank in pytorch-ood
        close(
            ours("nnguide", world, k=10, bank_fraction=1.0),
            -nng.predict_features(x.float()),
            rtol=1e-5,
        )


# -- activation shaping ------------------------------------------------------------------------
def _maps(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, None, None]


def test_shaping(world):
    """Thresholds are percentiles of float32 features (numpy interpolates in float32): rtol 1e-7."""
    fc = linear(world)

    def head(m):
        return fc(m.flatten(1))

    z, y, x = feats(world, "train"), labels(world, "train"), feats(world, "test")
    with torch.no_grad():
        react = detector.ReAct(None, head, percentile=0.9).fit_feature_maps(_maps(z), y)
        close(ours("react", world), -react.predict_feature_maps(_maps(x)), rtol=1e-7)
        vra = detector.VRA(None, head, lower_percentile=0.1, upper_percentile=0.9).fit_feature_maps(
            _maps(z), y
        )
        close(ours("vra", world, per_dim=True), -vra.predict_feature_maps(_maps(x)), rtol=1e-7)
        for variant in ("p", "b", "s"):
            ash = detector.ASH(None, head, variant=f"ash-{variant}", percentile=0.9)
            close(
                ours(f"ash_{variant}", world), -ash.predict_feature_maps(_maps(x)), err_msg=variant
            )
        scale = detector.SCALE(None, head, percentile=0.85)
        close(ours("scale", world), -scale.predict_feature_maps(_maps(x)))
        # DICE fits in float32 in pytorch-ood (torch.quantile needs the default dtype to match)
        torch.set_default_dtype(torch.float32)
        dice = detector.DICE(None, fc.weight, fc.bias, p=0.9).fit_features(z, y)
        torch.set_default_dtype(torch.float64)
        close(ours("dice", world), -dice.predict_features(x), rtol=1e-6)


def test_gradnorm(world):
    """pytorch-ood's loss averages -log softmax over classes (targets 1/C); the original code and
    OpenOOD sum it (targets all ones): ours = -C * theirs."""
    fc = linear(world)
    theirs = detector.GradNorm(fc, param_filter=lambda n: n == "weight", temperature=2.0)
    close(
        ours("gradnorm", world, temperature=2.0),
        -C * theirs.predict(feats(world, "test")),
        rtol=1e-8,
    )


# -- CLIP --------------------------------------------------------------------------------------
def test_mcm(world):
    text = t(world["test"].text_bank("classes").embeds[0])
    theirs = detector.MCM(None, text, temperature=0.5).predict_features(
        t(world["test"].array("image_embeds"))
    )
    close(ours("mcm", world, temperature=0.5), -theirs, rtol=1e-6)
