"""NegLabel / CSP against straightforward re-implementations of the reference code
(NegLabel ``multi_modal.py`` + ``clip_ood.py``, CSP ``multi_modal.py``), on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oodbench.scorers import Inputs, TextBank, make_scorer
from oodbench.scorers.clip import group_permutation, mine_negatives, neglabel_score
from oodbench.scorers.common import features
from oodbench.scorers.inputs import l2_normalize


def _ref_mine(neg: torch.Tensor, pos: torch.Tensor, ratio: float, q: float, csp: bool) -> torch.Tensor:
    """The reference mining, per bank: torch.quantile of each candidate's cosine to the ID
    labels; CSP sets it to 1.0 where the maximum cosine exceeds 0.95; keep the lowest."""
    sims = neg @ pos.T
    score = torch.quantile(sims, q=q, dim=-1)
    if csp:
        score[sims.max(dim=1)[0] > 0.95] = 1.0
    ind = torch.argsort(score)
    return neg[ind[: int(len(ind) * ratio)]]


def _ref_grouping(x: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, t: float, ngroup: int, seed: int):
    """The reference ``ScalableClassifier.grouping`` with ``random_permute=True`` (CPU generator)."""
    pos_sim, neg_sim = x @ pos.T, x @ neg.T
    drop = neg_sim.shape[1] % ngroup
    if drop > 0:
        neg_sim = neg_sim[:, :-drop]
    torch.manual_seed(seed)
    idx = torch.randperm(neg_sim.shape[1])
    negs = neg_sim.T[idx].T.reshape(pos_sim.shape[0], ngroup, -1)
    scores = []
    for i in range(ngroup):
        full = torch.cat([pos_sim, negs[:, i, :]], dim=-1) / t
        scores.append(full.softmax(dim=-1)[:, : pos_sim.shape[1]].sum(dim=-1))
    return torch.stack(scores, 1).mean(1)


def _world(seed=0, n_neg=700, n_adj=230, dim=24, n_id=12, dup=5):
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(n_id, dim))
    nouns = rng.normal(size=(n_neg, dim))
    nouns[:dup] = pos[np.arange(dup) % n_id] + 0.05 * rng.normal(size=(dup, dim))  # near-synonyms of ID labels
    adjs = rng.normal(size=(n_adj, dim))
    x = l2_normalize(pos[rng.integers(0, n_id, 50)] + 0.8 * rng.normal(size=(50, dim)))
    x = np.concatenate([x, l2_normalize(rng.normal(size=(30, dim)))]).astype(np.float32)
    text = {
        "ids": TextBank([f"c{i}" for i in range(n_id)], ["{}"], pos[None].astype(np.float32)),
        "nouns": TextBank([f"n{i}" for i in range(n_neg)], ["{}"], nouns[None].astype(np.float32)),
        "adjs": TextBank([f"a{i}" for i in range(n_adj)], ["{}"], adjs[None].astype(np.float32)),
    }
    data = Inputs.from_arrays("test", text=text, labels=np.r_[np.zeros(50, int), -np.ones(30, int)], image_embeds=x)
    return data, text


def _unit(bank: TextBank) -> torch.Tensor:
    """The bank's unit embeddings as the scorers read them (float32, normalised), widened: both
    sides then start from identical numbers and differ by float64 rounding only."""
    return torch.from_numpy(bank.name_embeds(0).astype(np.float64))


@pytest.mark.parametrize("method", ["neglabel", "csp"])
def test_mining_and_grouping_equal_the_reference(method):
    data, text = _world()
    pos, nouns, adjs = _unit(text["ids"]), _unit(text["nouns"]), _unit(text["adjs"])
    csp = method == "csp"
    neg = torch.cat([_ref_mine(nouns, pos, 0.15, 0.95, csp), _ref_mine(adjs, pos, 0.15, 0.95, csp)])
    x = torch.from_numpy(np.asarray(features(data, "embeds"), np.float64))  # the scorer's unit rows
    expected = _ref_grouping(x, pos, neg, 0.01, 10, 0).numpy()
    got = make_scorer(method, bank="nouns+adjs", id_bank="ids", templates="first", neg_templates="first",
                      ngroup=10).score(data)
    # float64 on both sides; softmax vs expit forms differ by rounding only
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_csp_never_keeps_near_duplicates_and_neglabel_may():
    _, text = _world(dup=50, n_neg=400, n_id=200)  # many ID labels: one near match barely moves the 95th percentile
    pos, nouns = text["ids"].embeds[0], l2_normalize(text["nouns"].embeds[0].astype(np.float64))
    pos = l2_normalize(pos.astype(np.float64))
    near = set(range(50))
    kept_neglabel = set(mine_negatives(nouns, pos, 0.5, 95.0).tolist())
    kept_csp = mine_negatives(nouns, pos, 0.5, 95.0, near_duplicate=0.95)
    assert kept_neglabel & near  # the 95th percentile alone keeps near-synonyms of ID labels
    assert not set(kept_csp.tolist()) & near
    # ratio so high that near-duplicates must be kept: they come last, in candidate order
    all_csp = mine_negatives(nouns, pos, 1.0, 95.0, near_duplicate=0.95)
    assert all_csp[-50:].tolist() == list(range(50))


def test_group_permutation_is_torchs():
    torch.manual_seed(3)
    np.testing.assert_array_equal(group_permutation(1000, 3), torch.randperm(1000).numpy())
    assert not np.array_equal(group_permutation(1000, 3), np.random.default_rng(3).permutation(1000))


def test_mined_cache_is_keyed_on_the_id_bank():
    data, text = _world()
    scorer = make_scorer("neglabel", bank="nouns+adjs", id_bank="ids", templates="first", neg_templates="first",
                         ngroup=1)
    a = scorer.score(data)
    other = TextBank(text["ids"].names, ["{}"], np.roll(text["ids"].embeds, 1, axis=2))
    data.text["ids"] = other  # same negative banks, another ID-label bank
    b = scorer.score(data)
    fresh = make_scorer("neglabel", bank="nouns+adjs", id_bank="ids", templates="first", neg_templates="first",
                        ngroup=1).score(data)
    np.testing.assert_array_equal(b, fresh)
    assert not np.allclose(a, b)


def test_fixed_selection_bank_is_not_mined():
    data, text = _world()
    data.text["negatives_file"] = text["nouns"]
    got = make_scorer("neglabel", bank="negatives_file", id_bank="ids", templates="first", ngroup=7).score(data)
    x = features(data, "embeds")
    expected = neglabel_score(x, _unit(text["ids"]).numpy(), _unit(text["nouns"]).numpy(), 0.01, 7, 0)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    mined = make_scorer("neglabel", bank="negatives_file", id_bank="ids", templates="first", ngroup=7,
                        mine="yes").score(data)
    assert not np.allclose(mined, got)
    assert make_scorer("neglabel", bank="nouns").mines() and not make_scorer("neglabel", mine="no").mines()


def _ref_eoe(x, id_names, gpt_names, pos_raw, gpt_raw, near, threshold, t, beta):
    """EOE's ``get_ood_scores_clip`` for score EOE (remove_overlap_class, pre_filter), higher = ID."""
    if near:
        words = {w for phrase in id_names for w in phrase.split()}
        keep = [i for i, p in enumerate(gpt_names) if not any(w in words for w in p.split())]
        gpt_raw = gpt_raw[keep]
    cos = torch.nn.functional.cosine_similarity(gpt_raw[:, None, :], pos_raw[None], dim=2)
    total = torch.cat([pos_raw, gpt_raw[~(cos > threshold).any(dim=1)]])
    total = total / total.norm(dim=-1, keepdim=True)
    smax = torch.softmax(x @ total.T / t, dim=1).numpy()
    c = len(id_names)
    return np.max(smax[:, :c], axis=1) - beta * np.max(smax[:, c:], axis=1)


def test_eoe_filters_equal_the_reference():
    rng = np.random.default_rng(7)
    d = 16
    id_names = ["red fox", "tabby cat", "oak"]
    gpt_names = ["arctic fox", "wolf", "persian cat", "maple", "pine", "oak tree", "eagle"]
    pos = rng.normal(size=(3, d))
    gpt = rng.normal(size=(7, d))
    gpt[1] = pos[0] + 0.01 * rng.normal(size=d)  # "wolf": nearly the "red fox" embedding
    x = l2_normalize(rng.normal(size=(40, d))).astype(np.float32)
    text = {"classes": TextBank(id_names, ["{}"], pos[None].astype(np.float32)),
            "outliers": TextBank(gpt_names, ["{}"], gpt[None].astype(np.float32))}
    data = Inputs.from_arrays("test", text=text, labels=np.zeros(40, int), image_embeds=x)
    xs = torch.from_numpy(np.asarray(features(data, "embeds"), np.float64))
    pos_t = torch.from_numpy(text["classes"].name_embeds(0).astype(np.float64))
    gpt_t = torch.from_numpy(text["outliers"].name_embeds(0).astype(np.float64))
    # the reference renormalises (in float64) the float32 unit vectors the scorer uses: each
    # cosine moves by <= gamma_{d+2} ~ (d + 2) 2^-24, a softmax at T = 1 by <= 2 x that
    # relative per probability, the difference of two by twice again
    tol = 4 * (d + 2) * 2.0**-24
    for near, thr in ((False, 1.0), (True, 1.0), (True, 0.9), (False, 0.9)):
        got = make_scorer("eoe", near_task=near, pre_filter=thr).score(data)
        np.testing.assert_allclose(got, _ref_eoe(xs, id_names, gpt_names, pos_t, gpt_t, near, thr, 1.0, 0.25),
                                   rtol=tol, atol=tol)
    assert not np.allclose(make_scorer("eoe", near_task=True).score(data), make_scorer("eoe").score(data))
    assert not np.allclose(make_scorer("eoe", pre_filter=0.9).score(data), make_scorer("eoe").score(data))


def test_imagenet_mcm_benchmark_uses_the_papers_prompt_and_lambda():
    from oodbench.config import load_catalogue

    bench = load_catalogue().benchmarks["imagenet-mcm"]
    assert bench.templates == ["a photo of a {}"]  # MCM / GL-MCM / EOE code: no full stop
    assert "glmcm.lam=0.5" in bench.params  # GL-MCM's scripts/eval_imagenet.sh
