"""Model soups (uniform = mean of weights; greedy by ID val accuracy, Wortsman et al. 2022) and
Lipsum-FT (the random-text energy gap against a hand computation); both reload exactly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from oodbench.errors import OodbenchError
from oodbench.finetune import (
    FinetuneConfig,
    describe_checkpoint,
    finetune,
    greedy_soup,
    soup,
)
from oodbench.finetune.recipes.lipsum import lipsum_energy_gap, random_text_tokens
from oodbench.models import load_model
from oodbench.models.tiny import TINY_MODEL

FAST = {"pretrained": None, "steps": 2, "batch_size": 16, "eval_every": 2, "save_every": 2, "device": "cpu"}
U = 2**-24


pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def ingredients(tmp_path_factory):
    out = tmp_path_factory.mktemp("soup")
    return [finetune(FinetuneConfig("ft", **FAST, lr=lr, name=f"ft{i}"), out).path
            for i, lr in enumerate((1e-4, 1e-3, 3e-3))]


def test_greedy_follows_the_papers_rule_on_a_hand_case():
    states = [{"w": torch.tensor([float(v)])} for v in (0.0, 3.0, 6.0, 9.0)]
    own = [0.5, 0.9, 0.7, 0.8]  # sorted: 1 (0.9), 3 (0.8), 2 (0.7), 0 (0.5)
    table = {3.0: 0.9, 6.0: 0.95, 5.0: 0.95, 4.0: 0.96}  # soup value -> val accuracy
    seen = []

    def evaluate(sd):
        v = round(float(sd["w"]), 6)
        seen.append(v)
        return table[v]

    sd, chosen, accs, acc = greedy_soup(states, evaluate, own)
    # {1} -> try +3: mean(3, 9) = 6 -> 0.95 > 0.9, keep; try +2: mean(3, 9, 6) = 6 -> 0.95, not > 0.95, drop;
    # try +0: mean(3, 9, 0) = 4 -> 0.96 > 0.95, keep
    assert seen == [6.0, 6.0, 4.0] and chosen == [1, 3, 0] and acc == 0.96
    assert float(sd["w"]) == pytest.approx(4.0, abs=4 * U * 9)
    assert accs == own


def test_uniform_soup_is_the_mean_and_reloads(ingredients, tmp_path):
    path = soup(ingredients, tmp_path / "uniform.pt")
    sds = [torch.load(p, weights_only=True)["state_dict"] for p in ingredients]
    got = torch.load(path, weights_only=True)["state_dict"]
    assert set(got) == set(sds[0])
    for k, v in got.items():
        if v.is_floating_point():
            mean = torch.stack([s[k] for s in sds]).mean(0)
            # both round a mean of 3 float32 values: |error| <= 3 u max|v| each
            assert float((v - mean).abs().max()) <= 6 * U * float(torch.stack([s[k] for s in sds]).abs().max())
    meta = describe_checkpoint(path)
    assert meta["soup"]["kind"] == "uniform" and meta["recipe"] == "soup"
    bundle = load_model(TINY_MODEL, pretrained=None, ckpt=path)
    assert bundle.fingerprint == meta["fingerprint"]
    ref = load_model(TINY_MODEL, pretrained=None).model
    ref.load_state_dict({k: v for k, v in got.items() if not k.startswith("classification_head.")})
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(bundle.model.eval().encode_image(x), ref.eval().encode_image(x))
    assert torch.equal(bundle.head.head_weight, got["classification_head.weight"])
    with pytest.raises(OodbenchError, match="at least two"):
        soup(ingredients[:1], tmp_path / "one.pt")
    with pytest.raises(OodbenchError, match="not a checkpoint written by oodbench"):
        torch.save({"state_dict": sds[0]}, tmp_path / "foreign.pt")
        soup([ingredients[0], tmp_path / "foreign.pt"], tmp_path / "x.pt")


def test_greedy_soup_cli(ingredients, tmp_path):
    out = tmp_path / "greedy.pt"
    r = subprocess.run([sys.executable, "-m", "oodbench", "soup", *map(str, ingredients), "--greedy", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    meta = describe_checkpoint(out)["soup"]
    accs = meta["val_accuracies"]
    assert meta["kind"] == "greedy" and meta["chosen"][0] == max(accs, key=accs.get)
    assert load_model(TINY_MODEL, pretrained=None, ckpt=out).fingerprint == describe_checkpoint(out)["fingerprint"]


def test_lipsum_regulariser_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    img, img0, txt = (F.normalize(torch.randn(n, 6, generator=gen), dim=-1) for n in (3, 3, 5))
    s = torch.tensor(20.0)
    hand = 0.0
    for i in range(3):
        hand += sum((float(s * img[i] @ txt[k]) - float(s * img0[i] @ txt[k])) ** 2 for k in range(5)) / (2 * 5)
    hand /= 3
    assert float(lipsum_energy_gap(img, img0, txt, s)) == pytest.approx(hand, rel=1e-5)
    tok = random_text_tokens(80, 8, 49408, 16, torch.Generator().manual_seed(1))
    assert tok.shape == (80, 16) and (tok[:, 0] == 49406).all() and (tok[:, 9] == 49407).all()
    assert (tok[:, 1:9] < 49406).all() and (tok[:, 10:] == 0).all() and len(set(tok[:, 1].tolist())) > 40


def test_lipsum_trains_and_reloads(tmp_path):
    res = finetune(FinetuneConfig("lipsum", **FAST, lipsum_texts=16), tmp_path)
    meta = describe_checkpoint(res.path)
    assert meta["lipsum"] == {"texts": 16, "length": 8, "weight": 1.0}
    bundle = load_model(TINY_MODEL, pretrained=None, ckpt=res.path)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((bundle.model.encode_image(x) - res.model.encode_image(x)).abs().max()) < 1e-5
    # the zero-shot model has no energy gap; the fine-tuned one does (the term is active)
    base = load_model(TINY_MODEL, pretrained=None).model.eval()
    tok = random_text_tokens(16, 8, 49408, 16, torch.Generator().manual_seed(0))
    xv = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        u = F.normalize(base.encode_text(tok), dim=-1)
        z0 = F.normalize(base.encode_image(xv), dim=-1)
        z1 = F.normalize(res.model.encode_image(xv), dim=-1)
        s = base.logit_scale.exp()
        assert float(lipsum_energy_gap(z0, z0, u, s)) == 0.0 and float(lipsum_energy_gap(z1, z0, u, s)) > 0


def test_lipsum_loss_is_ce_plus_weighted_gap(tmp_path):
    import copy

    from oodbench.finetune.data import step_generator
    from oodbench.finetune.trainer import Trainer

    t = Trainer(FinetuneConfig("lipsum", **FAST, lipsum_texts=8, lipsum_weight=0.5), tmp_path)
    train, val = t.data()
    t.reference = copy.deepcopy(t.model).eval().requires_grad_(False)
    recipe = t.make_recipe(train, val)
    with torch.no_grad():
        for p in t.model.visual.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    t.step = 5
    x, y = train.batch(torch.arange(6))
    with torch.no_grad():
        loss, z = recipe.loss(x, y)
        ce = F.cross_entropy(recipe.lin(F.normalize(z, dim=-1)), y)
        tok = random_text_tokens(8, 8, 49408, 16, step_generator(0, 5, "lipsum"))
        u = F.normalize(t.reference.encode_text(tok), dim=-1)
        z0 = F.normalize(t.reference.encode_image(x), dim=-1)
        s = t.reference.logit_scale.exp()
        gap = ((s * F.normalize(z, dim=-1) @ u.T - s * z0 @ u.T) ** 2).sum(1).div(2 * 8).mean()
    assert float(gap) > 0
    assert float(loss) == pytest.approx(float(ce + 0.5 * gap), rel=1e-5)


def test_damaged_checkpoints_are_one_line(tmp_path):
    """A truncated soup ingredient or resume state is one OodbenchError naming the file."""
    from oodbench.errors import OodbenchError
    from oodbench.finetune import describe_checkpoint
    from oodbench.finetune.common import load_checkpoint_file

    bad = tmp_path / "ft.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, bad)
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(OodbenchError, match=r"ft\.pt is not a readable checkpoint .*truncated or damaged"):
        describe_checkpoint(bad)
    with pytest.raises(OodbenchError, match=r"gone\.pt does not exist"):
        load_checkpoint_file(tmp_path / "gone.pt")
    with pytest.raises(OodbenchError, match=r"ft\.pt is not a readable checkpoint"):
        soup([bad, bad], tmp_path / "soup.pt")
