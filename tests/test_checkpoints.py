"""Checkpoint adapters: every format round-trips through load_model onto the tiny CLIP.

LP-FT, CMA and CLIPood files as their upstream code writes them are in
``test_checkpoints_upstream.py``. Fast: random tiny models only (``build_untrained``); seed 0 is the base that
``load_model(pretrained=None)`` builds, seed 1 plays the fine-tuned weights.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from safetensors.torch import save_file

from oodbench.errors import OodbenchError
from oodbench.models import load_model
from oodbench.models import loading as loading_mod
from oodbench.models.checkpoints import ADAPTERS, adapt, detect_format, read_checkpoint
from oodbench.models.loading import check_quick_gelu, fingerprint_state
from oodbench.models.prompts import encode_with_context
from oodbench.models.tiny import DIGIT_NAMES, TINY_MODEL, build_untrained

TOL = 1e-5


@pytest.fixture(scope="module")
def base():
    model, _, tok = build_untrained(0)
    return model.eval(), tok


@pytest.fixture(scope="module")
def ft():
    model, _, _ = build_untrained(1)
    return model.eval()


@pytest.fixture(scope="module")
def probe(base):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=gen)
    texts = base[1]([f"a photo of a {n}." for n in DIGIT_NAMES[:4]])
    return images, texts


def outputs(model, probe):
    with torch.no_grad():
        return model.encode_image(probe[0]), model.encode_text(probe[1])


def close(a, b, tol=TOL):
    return float((a - b).abs().max()) < tol


def load(path, fmt="auto", **kw):
    return load_model(model=TINY_MODEL, pretrained=None, ckpt=path, ckpt_format=fmt, **kw)


def sd_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_random_base_is_reproducible(base):
    assert fingerprint_state(load_model(TINY_MODEL, None).model) == fingerprint_state(base[0])


# ----------------------------------------------------------------------------- full-model formats

def _head():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(10, 64, generator=gen), torch.randn(10, generator=gen)


FULL_FORMATS = {
    "open_clip": lambda sd, w, b: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
    "wiseft": lambda sd, w, b: {**{f"model.{k}": v for k, v in sd.items()},
                                "classification_head.weight": w, "classification_head.bias": b},
    "flyp": lambda sd, w, b: {f"model.{k}": v for k, v in sd.items()},
}


@pytest.mark.parametrize("fmt", list(FULL_FORMATS))
def test_full_model_formats_round_trip(fmt, ft, probe, tmp_path):
    w, b = _head()
    path = tmp_path / f"{fmt}.pt"
    torch.save(FULL_FORMATS[fmt](sd_of(ft), w, b), path)
    obj, _ = read_checkpoint(path)
    assert detect_format(obj, path) == fmt
    for name in ("auto", fmt):
        bundle = load(path, name)
        assert bundle.info["ckpt_format"] == fmt
        assert fingerprint_state(bundle.model) == fingerprint_state(ft)
        got, want = outputs(bundle.model, probe), outputs(ft, probe)
        assert close(got[0], want[0]) and close(got[1], want[1])
    if fmt == "wiseft":
        assert bundle.head is not None and bundle.head.head_weight.shape == (10, 64)
        assert torch.equal(bundle.head.head_weight, w) and torch.equal(bundle.head.head_bias, b)
        assert bundle.head.head_input == "embeds"
        assert bundle.info["head"] == {"classes": 10, "input": bundle.head.head_input}
    else:
        assert bundle.head is None


def test_safetensors(ft, probe, tmp_path):
    path = tmp_path / "ft.safetensors"
    save_file({k: v.contiguous() for k, v in sd_of(ft).items()}, str(path))
    obj, _ = read_checkpoint(path)
    assert detect_format(obj, path) == "safetensors"
    bundle = load(path)
    assert bundle.info["ckpt_format"] == "safetensors"
    assert fingerprint_state(bundle.model) == fingerprint_state(ft)


def test_visual_only_with_prefix(base, ft, probe, tmp_path):
    path = tmp_path / "vis.pt"
    torch.save({k: v for k, v in sd_of(ft).items() if k.startswith("visual.")}, path)
    assert detect_format(read_checkpoint(path)[0]) == "visual_only"
    bundle = load(path)
    img, txt = outputs(bundle.model, probe)
    assert close(img, outputs(ft, probe)[0]) and close(txt, outputs(base[0], probe)[1])


def test_visual_only_must_cover_the_visual_tower(ft, tmp_path):
    vis = {k: v for k, v in sd_of(ft).items() if k.startswith("visual.") and "ln_post" not in k}
    path = tmp_path / "vis.pt"
    torch.save(vis, path)
    with pytest.raises(OodbenchError, match=r"2 missing .*visual.ln_post"):
        load(path)


def test_wiseft_without_text_transformer(base, ft, probe, tmp_path):
    """WiSE-FT's ImageEncoder deletes the text transformer; the rest of the text side is untouched."""
    b_sd, f_sd = sd_of(base[0]), sd_of(ft)
    sd = {f"image_encoder.model.{k}": (f_sd[k] if k.startswith("visual.") else b_sd[k])
          for k in f_sd if not k.startswith("transformer.")}
    w, b = _head()
    sd.update({"classification_head.weight": w, "classification_head.bias": b})
    path = tmp_path / "checkpoint_10.pt"
    torch.save(sd, path)
    bundle = load(path)
    assert bundle.info["ckpt_format"] == "wiseft" and bundle.info["partial"]
    img, txt = outputs(bundle.model, probe)
    assert close(img, outputs(ft, probe)[0]) and close(txt, outputs(base[0], probe)[1])
    assert torch.equal(bundle.head.head_weight, w)


# ----------------------------------------------------------------------------- pickles

def test_torch_saved_module_reads_without_code(ft, tmp_path, monkeypatch):
    """``torch.save(module)`` (not a state dict) of a class that is not importable: read with stubs.

    WiSE-FT / FLYP write ``pickle.dump`` files: see tests/test_checkpoints_upstream.py; this
    is the same object layout through torch's archive format, which users also produce.
    """
    import copy

    (tmp_path / "fake_wise_src.py").write_text(
        "import torch\n"
        "class ImageEncoder(torch.nn.Module):\n"
        "    def __init__(self, model):\n"
        "        super().__init__()\n"
        "        self.model = model\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_wise_src as fw

    path = tmp_path / "image_encoder.pt"
    torch.save(fw.ImageEncoder(copy.deepcopy(ft)), path)
    monkeypatch.delitem(sys.modules, "fake_wise_src")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    for trust in (False, True):
        bundle = load(path, trust_pickle=trust)
        assert bundle.info["ckpt_format"] == "flyp"
        assert fingerprint_state(bundle.model) == fingerprint_state(ft)
    assert "fake_wise_src" not in sys.modules


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 not a real archive")
    with pytest.raises(OodbenchError, match="broken.pt: a truncated or corrupt PyTorch archive"):
        load(path)


def test_unknown_format_suggests(ft, tmp_path):
    path = tmp_path / "x.pt"
    torch.save(sd_of(ft), path)
    with pytest.raises(OodbenchError, match="Did you mean 'wiseft'"):
        load(path, "wisefT")
    assert {"open_clip", "safetensors", "visual_only", "wiseft", "lpft", "flyp", "cma", "peft_lora",
            "clip_lora", "coop"} <= set(ADAPTERS)


# ----------------------------------------------------------------------------- LoRA

def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.05


PEFT_TARGETS = [  # (hf module, open_clip key, row slice (or None), transpose, out, in)
    ("vision_model.encoder.layers.0.self_attn.q_proj", "visual.transformer.resblocks.0.attn.in_proj_weight", 0, False, 96, 96),
    ("vision_model.encoder.layers.0.self_attn.k_proj", "visual.transformer.resblocks.0.attn.in_proj_weight", 1, False, 96, 96),
    ("vision_model.encoder.layers.2.self_attn.v_proj", "visual.transformer.resblocks.2.attn.in_proj_weight", 2, False, 96, 96),
    ("vision_model.encoder.layers.1.self_attn.out_proj", "visual.transformer.resblocks.1.attn.out_proj.weight", None, False, 96, 96),
    ("vision_model.encoder.layers.1.mlp.fc1", "visual.transformer.resblocks.1.mlp.c_fc.weight", None, False, 384, 96),
    ("vision_model.encoder.layers.2.mlp.fc2", "visual.transformer.resblocks.2.mlp.c_proj.weight", None, False, 96, 384),
    ("visual_projection", "visual.proj", None, True, 64, 96),
    ("text_model.encoder.layers.1.self_attn.q_proj", "transformer.resblocks.1.attn.in_proj_weight", 0, False, 64, 64),
    ("text_model.encoder.layers.0.self_attn.v_proj", "transformer.resblocks.0.attn.in_proj_weight", 2, False, 64, 64),
    ("text_model.encoder.layers.0.mlp.fc2", "transformer.resblocks.0.mlp.c_proj.weight", None, False, 64, 256),
]


def _manual_merge(base_model, deltas):
    """Apply (key, slice, transpose, delta) updates to a copy of the base, independently of lora.py."""
    model, _, _ = build_untrained(0)
    sd = sd_of(base_model)
    for key, part, transpose, delta in deltas:
        d = delta.T if transpose else delta
        if part is None:
            sd[key] = sd[key] + d
        else:
            n = sd[key].shape[0] // 3
            sd[key][part * n:(part + 1) * n] += d
    model.load_state_dict(sd)
    return model.eval()


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_lora_merges_like_manual(base, probe, tmp_path, rslora):
    r, alpha = 4, 8
    scale = alpha / math.sqrt(r) if rslora else alpha / r
    tensors, deltas = {}, []
    for i, (mod, key, part, transpose, n_out, n_in) in enumerate(PEFT_TARGETS):
        a, b = _rand(r, n_in, seed=2 * i), _rand(n_out, r, seed=2 * i + 1)
        tensors[f"base_model.model.{mod}.lora_A.weight"] = a
        tensors[f"base_model.model.{mod}.lora_B.weight"] = b
        deltas.append((key, part, transpose, scale * b @ a))
    folder = tmp_path / "clip-lora-run"
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
        "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "visual_projection"],
        "base_model_name_or_path": "local/tiny-clip"}))
    want = _manual_merge(base[0], deltas)
    for ckpt in (folder, folder / "adapter_model.safetensors"):
        bundle = load(ckpt)
        assert bundle.info["ckpt_format"] == "peft_lora"
        got, exp = outputs(bundle.model, probe), outputs(want, probe)
        assert close(got[0], exp[0]) and close(got[1], exp[1])
        sd, wsd = bundle.model.state_dict(), want.state_dict()
        for _, key, *_ in PEFT_TARGETS:
            assert close(sd[key], wsd[key], 1e-6)
    assert bundle.label == "clip-lora-run"
    assert f"scale {scale:g}" in bundle.info["ckpt_notes"][0]


def test_peft_lora_alpha_pattern_and_bad_layer(base, tmp_path):
    folder = tmp_path / "peft"
    folder.mkdir()
    mod = "vision_model.encoder.layers.0.self_attn.q_proj"
    a, b = _rand(2, 96, seed=1), _rand(96, 2, seed=2)
    save_file({f"base_model.model.{mod}.lora_A.weight": a, f"base_model.model.{mod}.lora_B.weight": b},
              str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "alpha_pattern": {"layers.0.self_attn.q_proj": 6}}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    sd = load(folder).model.state_dict()
    want = base[0].state_dict()["visual.transformer.resblocks.0.attn.in_proj_weight"][:96] + 3.0 * b @ a
    assert close(sd["visual.transformer.resblocks.0.attn.in_proj_weight"][:96], want, 1e-6)
    bad = "vision_model.encoder.layers.7.self_attn.q_proj"
    save_file({f"base_model.model.{bad}.lora_A.weight": a, f"base_model.model.{bad}.lora_B.weight": b},
              str(folder / "adapter_model.safetensors"))
    with pytest.raises(OodbenchError, match="resblocks.7.*does not have"):
        load(folder)
    with pytest.raises(OodbenchError, match="adapter_config.json"):
        save_file({f"base_model.model.{mod}.lora_A.weight": a, f"base_model.model.{mod}.lora_B.weight": b},
                  str(tmp_path / "lonely.safetensors"))
        load(tmp_path / "lonely.safetensors")


def _clip_lora_file(r, alpha, parts=("q_proj", "k_proj", "v_proj", "proj")):
    """CLIP-LoRA save_lora layout for the tiny model, position 'all', encoder 'both'."""
    blocks = [("transformer.resblocks.0.", 64), ("transformer.resblocks.1.", 64)] + [
        (f"visual.transformer.resblocks.{i}.", 96) for i in range(3)]
    slots = {"q_proj": ("attn.in_proj_weight", 0), "k_proj": ("attn.in_proj_weight", 1),
             "v_proj": ("attn.in_proj_weight", 2), "proj": ("attn.out_proj.weight", None)}
    weights, deltas, seed = {}, [], 100
    for i, (prefix, width) in enumerate(blocks):
        layer = {}
        for p in parts:
            a, b = _rand(r, width, seed=seed), _rand(width, r, seed=seed + 1)
            seed += 2
            layer[p] = {"w_lora_A": a, "w_lora_B": b}
            key, slot = slots[p]
            deltas.append((prefix + key, slot, False, alpha / math.sqrt(r) * b @ a))
        weights[f"layer_{i}"] = layer
    meta = {"r": r, "alpha": alpha, "encoder": "both", "params": [p[0] for p in parts], "position": "all"}
    return {"weights": weights, "metadata": meta}, deltas


def test_clip_lora_merges_like_manual(base, probe, tmp_path):
    obj, deltas = _clip_lora_file(r=2, alpha=1)
    path = tmp_path / "lora_weights.pt"
    torch.save(obj, path)
    assert detect_format(read_checkpoint(path)[0]) == "clip_lora"
    bundle = load(path)
    assert bundle.info["ckpt_format"] == "clip_lora"
    want = _manual_merge(base[0], deltas)
    got, exp = outputs(bundle.model, probe), outputs(want, probe)
    assert close(got[0], exp[0]) and close(got[1], exp[1])
    assert not close(got[0], outputs(base[0], probe)[0], 1e-4)  # the LoRA did change something
    obj["metadata"]["encoder"] = "vision"
    torch.save(obj, path)
    with pytest.raises(OodbenchError, match="5 LoRA layers, but CLIP-LoRA's tables give 3 for encoder='vision'"):
        load(path)


# ----------------------------------------------------------------------------- CoOp

def _photo_ctx(model, tok):
    with torch.no_grad():
        return model.token_embedding(tok(["a photo of a"]))[0, 1:5].clone()


def test_coop_context_reproduces_the_prompt(base, tmp_path):
    model, tok = base
    ctx = _photo_ctx(model, tok)
    run = tmp_path / "coop_run"
    (run / "prompt_learner").mkdir(parents=True)
    opt = torch.optim.SGD([torch.nn.Parameter(ctx.clone())], lr=0.1, momentum=0.9)
    state = {"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(10, 1, 64), "token_suffix": torch.zeros(10, 11, 64)},
             "epoch": 50, "optimizer": opt.state_dict()}
    torch.save(state, run / "prompt_learner" / "model.pth.tar-50")
    torch.save(state, run / "prompt_learner" / "model.pth.tar-10")
    with pytest.raises(OodbenchError, match="pass --class-token-position end, middle or front"):
        load(run)  # nothing records the run's class-token position: never guessed
    bundle = load(run, class_token_position="end")
    assert bundle.info["text_ctx"]["class_token_position"] == "end"
    bundle.info["text_ctx"] = {k: bundle.info["text_ctx"][k] for k in ("n_ctx", "class_specific")}
    assert bundle.info["ckpt_format"] == "coop" and bundle.info["text_ctx"] == {"n_ctx": 4, "class_specific": False}
    assert bundle.label == "coop_run-ep50"
    assert fingerprint_state(bundle.model) == fingerprint_state(model)  # weights unchanged
    assert bundle.fingerprint != load_model(TINY_MODEL, None).fingerprint  # but the context is identity
    names = list(DIGIT_NAMES)
    got = encode_with_context(bundle.model, bundle.tokenizer, names, bundle.text_ctx)
    with torch.no_grad():
        want = model.encode_text(tok([f"a photo of a {n}." for n in names]))
    assert got.shape == (10, 64) and close(got, want)
    per_class = encode_with_context(model, tok, names, ctx.expand(10, -1, -1))
    assert close(per_class, want)
    with pytest.raises(OodbenchError, match="width 32"):
        encode_with_context(model, tok, names, torch.zeros(4, 32))


def test_cocoop_is_refused(tmp_path):
    path = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": {"ctx": torch.zeros(4, 64), "meta_net.linear1.weight": torch.zeros(4, 64)}}, path)
    with pytest.raises(OodbenchError, match="CoCoOp"):
        load(path)


# ----------------------------------------------------------------------------- WiSE-FT mixing

def test_wise_alpha_endpoints_and_midpoint(base, ft, tmp_path):
    path = tmp_path / "ft.pt"
    torch.save(sd_of(ft), path)
    b0 = load(path, wise_alpha=0.0)
    b1 = load(path, wise_alpha=1.0)
    bh = load(path, wise_alpha=0.5)
    assert fingerprint_state(b0.model) == fingerprint_state(base[0])
    assert fingerprint_state(b1.model) == fingerprint_state(ft)
    for k, v in bh.model.state_dict().items():
        assert torch.allclose(v, (base[0].state_dict()[k] + ft.state_dict()[k]) / 2, atol=1e-6), k
    assert bh.info["wise_alpha"] == 0.5 and bh.label == "ft-wise0.5"
    assert len({b0.key, b1.key, bh.key, load(path).key}) == 4
    with pytest.raises(OodbenchError, match="give --ckpt"):
        load_model(TINY_MODEL, None, wise_alpha=0.5)


def test_wise_heads(base, ft, tmp_path):
    w1, b1 = _head()
    path = tmp_path / "finetuned.pt"
    torch.save(FULL_FORMATS["wiseft"](sd_of(ft), w1, b1), path)
    kept = load(path, wise_alpha=0.3)
    assert torch.equal(kept.head.head_weight, w1) and "kept" in kept.info["wise_head"]
    w0, b0 = torch.zeros_like(w1), torch.zeros_like(b1)
    zs = tmp_path / "zeroshot.pt"
    torch.save(FULL_FORMATS["wiseft"](sd_of(base[0]), w0, b0), zs)
    mixed = load(path, wise_alpha=0.3, wise_base=zs)
    assert mixed.info["wise_head"] == "mixed"
    assert torch.allclose(mixed.head.head_weight, 0.3 * w1, atol=1e-6)
    assert torch.allclose(mixed.head.head_bias, 0.3 * b1, atol=1e-6)
    assert fingerprint_state(load(path, wise_alpha=0.0, wise_base=zs).model) == fingerprint_state(base[0])


# ----------------------------------------------------------------------------- QuickGELU

def test_quick_gelu_warnings(base, ft, tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(loading_mod, "warn", said.append)
    found = check_quick_gelu(base[0], "ViT-B-32", "openai")
    assert found["expected_quick_gelu"] is True and found["model_quick_gelu"] is False
    assert "OpenAI weights expect QuickGELU: use ViT-B-32-quickgelu" in said[-1]
    said.clear()
    path = tmp_path / "ft.pt"
    torch.save(FULL_FORMATS["wiseft"](sd_of(ft), *_head()), path)
    bundle = load(path)
    assert bundle.info["quick_gelu"]["expected_quick_gelu"] is True
    assert any("expect QuickGELU" in s for s in said)
    said.clear()
    torch.save(sd_of(ft), tmp_path / "plain.pt")
    load(tmp_path / "plain.pt")
    assert not any("QuickGELU" in s for s in said)


def test_open_clip_params_txt_hint(ft, tmp_path):
    run = tmp_path / "2024_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.txt").write_text("model: ViT-B-32-quickgelu\npretrained: openai\nforce_quick_gelu: False\n")
    path = run / "checkpoints" / "epoch_2.pt"
    torch.save({"state_dict": sd_of(ft), "epoch": 2}, path)
    ad = adapt(path, base=None)
    assert ad.quick_gelu is True and "params.txt" in ad.quick_gelu_reason
    assert ad.meta["params_txt"]["model"] == "ViT-B-32-quickgelu"
