"""CoOp class-token positions, Hugging Face CLIPModel directories, CLIP-LoRA on ViT-L/14, identity.

Each file is written as the upstream code writes it and compared with the upstream model's own
forward pass (OpenAI's ``clip.model.CLIP`` from clip-anytorch; transformers' ``CLIPModel``).
Tolerance 1e-5: the same float32 operations on the same weights on both sides (see
tests/test_checkpoints_upstream.py for the bound).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import open_clip
import pytest
import torch
from typer.testing import CliRunner

from oodbench.cli import app
from oodbench.errors import OodbenchError
from oodbench.models import load_model
from oodbench.models.loading import fingerprint_state
from oodbench.models.prompts import encode_with_context

TOL = 1e-5
OAI_CFG = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "head_width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
L14_CFG = {"embed_dim": 32, "quick_gelu": True,  # ViT-L/14's depths (24 vision, 12 text blocks), tiny widths
           "vision_cfg": {"image_size": 32, "layers": 24, "width": 64, "head_width": 32, "patch_size": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 12}}
OAI, GELU, L14 = "oodbench-fmt-oai", "oodbench-fmt-gelu", "oodbench-fmt-l14"


@pytest.fixture(scope="module", autouse=True)
def configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    (d / f"{OAI}.json").write_text(json.dumps(OAI_CFG))
    (d / f"{GELU}.json").write_text(json.dumps({**OAI_CFG, "quick_gelu": False}))
    (d / f"{L14}.json").write_text(json.dumps(L14_CFG))
    open_clip.add_model_config(d)


def _perturb(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _err(a, b):
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def clip_model_module():
    """OpenAI's clip/model.py (clip/__init__ needs pkg_resources, the model module does not)."""
    assert importlib.util.find_spec("clip") is not None, "needs OpenAI's clip package: pip install -e '.[test]' (clip-anytorch)"
    where = Path(importlib.util.find_spec("clip").submodule_search_locations[0])
    saved = {k: sys.modules.get(k) for k in ("clip", "clip.model")}
    pkg = types.ModuleType("clip")
    pkg.__path__ = [str(where)]
    sys.modules["clip"] = pkg
    spec = importlib.util.spec_from_file_location("clip.model", where / "model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["clip.model"] = mod
    spec.loader.exec_module(mod)
    yield mod
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


# ----------------------------------------------------------------------------- CoOp

def coop_text_features(clip_model, tok, names, ctx, position):
    """CoOp's PromptLearner.forward + TextEncoder.forward (trainers/coop.py), on clip.model.CLIP."""
    n_ctx = ctx.shape[-2]
    names = [n.replace("_", " ") for n in names]
    name_lens = [len(tok.encode(n)) for n in names]
    tokenized = tok([" ".join(["X"] * n_ctx) + " " + n + "." for n in names])
    with torch.no_grad():
        embedding = clip_model.token_embedding(tokenized)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx:]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(len(names), -1, -1)
    if position == "end":
        prompts = torch.cat([prefix, ctx, suffix], dim=1)
    else:
        rows = []
        for i, n in enumerate(name_lens):
            if position == "middle":
                h = n_ctx // 2
                rows.append(torch.cat([prefix[i:i + 1], ctx[i:i + 1, :h], suffix[i:i + 1, :n], ctx[i:i + 1, h:],
                                       suffix[i:i + 1, n:]], dim=1))
            else:
                rows.append(torch.cat([prefix[i:i + 1], suffix[i:i + 1, :n], ctx[i:i + 1], suffix[i:i + 1, n:]], dim=1))
        prompts = torch.cat(rows)
    with torch.no_grad():
        x = prompts + clip_model.positional_embedding
        x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = clip_model.ln_final(x)
        return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ clip_model.text_projection


DASSL_LOG = """***************
** Arguments **
***************
opts: ['TRAINER.COOP.N_CTX', '4', 'TRAINER.COOP.CSC', '{csc}', 'TRAINER.COOP.CLASS_TOKEN_POSITION', '{pos}']
trainer: CoOp
************
** Config **
************
OUTPUT_DIR: output/imagenet/CoOp/rn50_16shots/nctx4_csc{csc}_ctp{pos}/seed1
TRAINER:
  COCOOP:
    CTX_INIT:
    N_CTX: 16
    PREC: fp16
  COOP:
    CLASS_TOKEN_POSITION: {pos}
    CSC: {csc}
    CTX_INIT:
    N_CTX: 4
    PREC: fp16
  NAME: CoOp
Collecting env info ...
"""


def _coop_run(tmp_path, ctx, pos, n_cls, log=True):
    """A Dassl output dir: log.txt (setup_logger + print_args) and prompt_learner/model.pth.tar-N."""
    run = tmp_path / f"run_{pos}_{ctx.dim()}"
    (run / "prompt_learner").mkdir(parents=True)
    if log:
        (run / "log.txt").write_text(DASSL_LOG.format(pos=pos, csc=ctx.dim() == 3))
    state = {"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(n_cls, 1, 64),
                            "token_suffix": torch.zeros(n_cls, 11, 64)},
             "epoch": 50, "optimizer": None, "scheduler": None}
    torch.save(state, run / "prompt_learner" / "model.pth.tar-50")  # Dassl's save_checkpoint
    return run


@pytest.mark.parametrize("csc", [False, True])
def test_coop_positions_match_coop(clip_model_module, tmp_path, csc):
    torch.manual_seed(0)
    base = _perturb(clip_model_module.CLIP(32, 32, 2, 128, 8, 16, 49408, 64, 2, 2).float(), 1)
    weights = tmp_path / "base.pt"
    torch.save(base.state_dict(), weights)
    tok = open_clip.get_tokenizer(OAI)
    names = ["sea_lion", "hot dog", "x", "espresso maker"]
    gen = torch.Generator().manual_seed(2)
    ctx = 0.02 * torch.randn(*((len(names),) if csc else ()), 4, 64, generator=gen)
    got = {}
    for pos in ("end", "middle", "front"):
        bundle = load_model(OAI, str(weights), ckpt=_coop_run(tmp_path, ctx, pos, len(names)))
        assert bundle.class_token_position == pos and bundle.info["text_ctx"]["position_source"].endswith("log.txt")
        got[pos] = encode_with_context(bundle.model, bundle.tokenizer, names, bundle.text_ctx,
                                       position=bundle.class_token_position)
        want = coop_text_features(base, tok, names, ctx, pos)
        assert _err(got[pos], want) < TOL, pos
    assert _err(got["end"], got["middle"]) > 1e-3 and _err(got["end"], got["front"]) > 1e-3  # it matters


def test_coop_position_is_never_guessed(tmp_path):
    ctx = torch.zeros(4, 64)
    run = _coop_run(tmp_path, ctx, "middle", 3, log=False)
    with pytest.raises(OodbenchError, match="not recorded.*--class-token-position"):
        load_model(OAI, None, ckpt=run)
    assert load_model(OAI, None, ckpt=run, class_token_position="front").class_token_position == "front"
    (run / "log.txt").write_text(DASSL_LOG.format(pos="middle", csc=False))
    with pytest.raises(OodbenchError, match="contradicts"):
        load_model(OAI, None, ckpt=run, class_token_position="front")
    (run / "log.txt-2024-01-01-10-00-00").write_text(DASSL_LOG.format(pos="end", csc=False))
    with pytest.raises(OodbenchError, match="several CLASS_TOKEN_POSITION"):
        load_model(OAI, None, ckpt=run)
    (run / "log.txt-2024-01-01-10-00-00").unlink()
    middle = load_model(OAI, None, ckpt=run).fingerprint
    assert load_model(OAI, None, ckpt=_coop_run(tmp_path, ctx, "end", 3)).fingerprint != middle  # other models


# ----------------------------------------------------------------------------- Hugging Face CLIPModel

def _hf_config(act):
    from transformers import CLIPConfig  # the test extra

    return CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "hidden_act": act,
                     "bos_token_id": 49406, "eos_token_id": 49407},
        vision_config={"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "hidden_act": act},
        projection_dim=32)


def _features(out):
    return out if torch.is_tensor(out) else out.pooler_output


@pytest.mark.parametrize("act,model", [("quick_gelu", OAI), ("gelu", GELU)])
def test_hf_clip_model_directory(tmp_path, act, model):
    from transformers import CLIPModel  # the test extra

    torch.manual_seed(0)
    hf = _perturb(CLIPModel(_hf_config(act)), 3)
    folder = tmp_path / "checkpoint-500"
    hf.save_pretrained(folder)  # what the HF Trainer writes: config.json + model.safetensors
    assert (folder / "model.safetensors").exists()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = open_clip.get_tokenizer(model)(["a photo of a cat.", "dog", "a b c d e"])
    with torch.no_grad():
        want_img = _features(hf.get_image_features(pixel_values=images))
        want_txt = _features(hf.get_text_features(input_ids=tokens))
    bundle = load_model(model, None, ckpt=folder)
    assert bundle.info["ckpt_format"] == "hf_clip" and bundle.info["keys_kept_from_base"] == 0
    assert bundle.info["quick_gelu"]["expected_quick_gelu"] is (act == "quick_gelu")
    with torch.no_grad():
        img, txt = bundle.model.encode_image(images), bundle.model.encode_text(tokens)
    assert _err(img, want_img) < TOL and _err(txt, want_txt) < TOL


def test_hf_clip_wrong_architecture_is_named(tmp_path):
    from transformers import CLIPModel  # the test extra

    folder = tmp_path / "hf"
    CLIPModel(_hf_config("quick_gelu")).save_pretrained(folder)
    with pytest.raises(OodbenchError, match="does not fit this architecture.*wrong shape"):
        load_model(L14, None, ckpt=folder)


# ----------------------------------------------------------------------------- CLIP-LoRA ViT-L/14

def _clip_lora_file(base_sd, blocks, r=2, alpha=1.0, seed=0):
    """save_lora's layout: weights['layer_i'][q_proj|k_proj|v_proj] = {w_lora_A, w_lora_B}."""
    gen = torch.Generator().manual_seed(seed)
    weights, want = {}, {k: v.clone() for k, v in base_sd.items()}
    for i, prefix in enumerate(blocks):
        w = want[prefix + "attn.in_proj_weight"]
        d = w.shape[1]
        layer = {}
        for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
            a, b = 0.05 * torch.randn(r, d, generator=gen), 0.05 * torch.randn(d, r, generator=gen)
            layer[part] = {"w_lora_A": a, "w_lora_B": b}
            w[j * d:(j + 1) * d] += alpha / math.sqrt(r) * b @ a
        weights[f"layer_{i}"] = layer
    return weights, want


@pytest.mark.parametrize("encoder,position,vision,legacy", [
    ("both", "all", range(24), False),
    ("vision", "half-up", range(12, 24), False),
    ("both", "all", range(21), True),  # written before CLIP-LoRA's e6bf706 (ViT-L/14 'all' = 0..20)
    ("vision", "up", range(8, 12), True),
])
def test_clip_lora_vit_l14_positions(tmp_path, encoder, position, vision, legacy):
    base = load_model(L14, None).model.state_dict()
    text = [f"transformer.resblocks.{i}." for i in range(12)] if encoder == "both" else []
    blocks = text + [f"visual.transformer.resblocks.{i}." for i in vision]
    weights, want = _clip_lora_file(base, blocks)
    path = tmp_path / "lora_weights.pt"
    torch.save({"weights": weights, "metadata": {"r": 2, "alpha": 1.0, "encoder": encoder,
                                                 "params": ["q", "k", "v"], "position": position}}, path)
    bundle = load_model(L14, None, ckpt=path)
    sd = bundle.model.state_dict()
    assert max(_err(sd[k], want[k]) for k in want) < 1e-6
    assert any("e6bf706" in n for n in bundle.info["ckpt_notes"]) is legacy


def test_clip_lora_unknown_layout_does_not_blame_the_model(tmp_path):
    base = load_model(L14, None).model.state_dict()
    weights, _ = _clip_lora_file(base, [f"visual.transformer.resblocks.{i}." for i in range(5)])
    path = tmp_path / "lora.pt"
    torch.save({"weights": weights, "metadata": {"r": 2, "alpha": 1, "encoder": "vision", "position": "all"}}, path)
    with pytest.raises(OodbenchError) as e:
        load_model(L14, None, ckpt=path)
    msg = str(e.value)
    assert "5 LoRA layers" in msg and "24 for encoder='vision'" in msg and "check --model" not in msg


# ----------------------------------------------------------------------------- identity, imports, help

def test_fingerprint_includes_the_architecture():
    a, b = load_model(OAI, None), load_model(GELU, None)
    assert fingerprint_state(a.model) == fingerprint_state(b.model)  # the very same weights...
    assert a.fingerprint != b.fingerprint and a.key != b.key  # ...but QuickGELU vs GELU features


def test_adapter_imports_run_one_way():
    root = Path(__file__).resolve().parents[1] / "oodbench" / "models"

    def imports(name):
        tree = ast.parse((root / f"{name}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}

    for adapter in ("lora", "prompts", "hf_clip", "checkpoints"):
        assert "registry" in imports(adapter)
    for adapter in ("lora", "prompts", "hf_clip"):
        assert "checkpoints" not in imports(adapter), adapter
    assert not imports("checkpoints") & {"lora", "prompts", "hf_clip", "loading"}
    assert not imports("registry")


def test_model_options_have_help():
    runner = CliRunner()
    for cmd in ("extract", "run"):
        res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "250"})
        out = " ".join(res.output.replace("│", " ").split())  # rich wraps long help inside its box
        for needle in ("local weights file PATH", "'' for random weights", "holds the whole model",
                       "Fine-tuned checkpoint", "open_clip model name"):
            assert needle in out, (cmd, needle)


def test_peft_on_open_clip_modules_is_refused_clearly(tmp_path):
    """get_peft_model(open_clip CLIP, ...) keys name open_clip modules: not supported, and said so."""
    from safetensors.torch import save_file

    folder = tmp_path / "peft-openclip"
    folder.mkdir()
    mod = "base_model.model.visual.transformer.resblocks.0.mlp.c_fc"
    save_file({f"{mod}.lora_A.weight": torch.zeros(2, 128), f"{mod}.lora_B.weight": torch.zeros(512, 2)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    with pytest.raises(OodbenchError, match="not PEFT applied to open_clip's own modules"):
        load_model(OAI, None, ckpt=folder)
