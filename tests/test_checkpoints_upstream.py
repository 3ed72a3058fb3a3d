"""WiSE-FT, FLYP, CLIPood, LP-FT and CMA checkpoints written the way upstream writes them.

Upstream (mlfoundations/wise-ft and locuslab/FLYP, ``src/models/utils.py``) saves with
``torch_save(model, path)`` = ``pickle.dump(model.cpu(), f)`` of an ``ImageClassifier`` /
``ImageEncoder`` / ``CLIPEncoder`` from ``src/models/modeling.py``. Here those classes live in a
temporary ``src.models.modeling`` package with upstream's attribute layout, holding a model of
OpenAI's ``clip`` package (``clip.model.CLIP``, installed as clip-anytorch) or of open_clip, as
upstream does; the package is removed from ``sys.modules``/``sys.path`` before oodbench reads the
file. References are the upstream objects' own forward passes.

CLIPood (thuml/CLIPood 538dd3b ``main.py``), LP-FT (AnanyaKumar/transfer_learning ``ClipModel`` and
``utils.save_ckp``) and CMA (ma-kjh/CMA cf6f4e7 ``utils/train_utils.py``) are written with their
``torch.save`` calls on the same OpenAI ``clip.model`` objects.

Tolerance: both sides run the same float32 operations on the same weights (PyTorch's
MultiheadAttention, LayerNorm, GEMMs); only kernel choice and summation order may differ, a few
ulps per op over a handful of layers on O(1) activations: 1e-5 is a ~100x margin over float32's
eps (1.2e-7) times the depth.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import pickle
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch
from typer.testing import CliRunner

from oodbench.cli import app
from oodbench.errors import OodbenchError
from oodbench.models import load_model
from oodbench.models import loading as loading_mod
from oodbench.models.checkpoints import read_checkpoint
from oodbench.models.reading import CLASSES_KEY

TOL = 1e-5
runner = CliRunner()

# open_clip twins of the tiny upstream models below: same shapes and head counts
OAI_CFG = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "head_width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
OAI, GELU = "oodbench-test-oai", "oodbench-test-gelu"


@pytest.fixture(scope="module", autouse=True)
def configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    (d / f"{OAI}.json").write_text(json.dumps(OAI_CFG))
    (d / f"{GELU}.json").write_text(json.dumps({**OAI_CFG, "quick_gelu": False}))
    open_clip.add_model_config(d)


MODELING = '''
"""Attribute layout of wise-ft / FLYP src/models/modeling.py (the constructors take the model)."""
import torch


class ImageEncoder(torch.nn.Module):
    def __init__(self, model, keep_lang=False):
        super().__init__()
        self.model, self.train_preprocess, self.val_preprocess = model, None, None
        self.cache_dir = None
        if not keep_lang and hasattr(self.model, "transformer"):
            delattr(self.model, "transformer")

    def forward(self, images):
        return self.model.encode_image(images)


class CLIPEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.train_preprocess, self.val_preprocess = model, None, None
        self.cache_dir = None


class ClassificationHead(torch.nn.Linear):
    def __init__(self, normalize, weights, biases=None):
        output_size, input_size = weights.shape
        super().__init__(input_size, output_size)
        self.normalize = normalize
        self.weight = torch.nn.Parameter(weights.clone())
        self.bias = torch.nn.Parameter(biases.clone())

    def forward(self, inputs):
        if self.normalize:
            inputs = inputs / inputs.norm(dim=-1, keepdim=True)
        return super().forward(inputs)


class ImageClassifier(torch.nn.Module):
    def __init__(self, image_encoder, classification_head, process_images=True):
        super().__init__()
        self.image_encoder = image_encoder
        self.classification_head = classification_head
        self.process_images = process_images
        self.train_preprocess = image_encoder.train_preprocess
        self.val_preprocess = image_encoder.val_preprocess

    def forward(self, inputs):
        return self.classification_head(self.image_encoder(inputs))


def torch_save(classifier, save_path):
    with open(save_path, "wb") as f:
        pickle.dump(classifier.cpu(), f)


import pickle  # noqa: E402
'''


class Upstream:
    """Imports ``src.models.modeling`` and OpenAI's ``clip.model`` for writing; hides them after."""

    def __init__(self, root: Path, monkeypatch) -> None:
        pkg = root / "upstream_repo"
        (pkg / "src" / "models").mkdir(parents=True)
        (pkg / "src" / "__init__.py").write_text("")
        (pkg / "src" / "models" / "__init__.py").write_text("")
        (pkg / "src" / "models" / "modeling.py").write_text(textwrap.dedent(MODELING))
        self.root, self.mp = str(pkg), monkeypatch
        monkeypatch.syspath_prepend(self.root)
        import src.models.modeling as modeling

        self.modeling = modeling
        # clip/__init__ needs pkg_resources; the model module itself does not: load it alone
        assert importlib.util.find_spec("clip") is not None, "needs OpenAI's clip package: pip install -e '.[test]' (clip-anytorch)"
        where = Path(importlib.util.find_spec("clip").submodule_search_locations[0])
        clip_pkg = types.ModuleType("clip")
        clip_pkg.__path__ = [str(where)]
        monkeypatch.setitem(sys.modules, "clip", clip_pkg)
        spec = importlib.util.spec_from_file_location("clip.model", where / "model.py")
        self.clip_model = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "clip.model", self.clip_model)
        spec.loader.exec_module(self.clip_model)

    def openai_clip(self, seed: int = 1) -> torch.nn.Module:
        """A tiny ``clip.model.CLIP`` (what ``clip.load`` returns), float32 as on the CPU."""
        torch.manual_seed(seed)
        m = self.clip_model.CLIP(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=128,
                                 vision_patch_size=8, context_length=16, vocab_size=49408,
                                 transformer_width=64, transformer_heads=2, transformer_layers=2)
        return _perturb(m.float().eval(), seed)

    def hide(self) -> None:
        """Make the training code unimportable, as where oodbench runs."""
        for name in [n for n in sys.modules if n == "src" or n.startswith(("src.", "clip"))]:
            self.mp.delitem(sys.modules, name)
        self.mp.setattr(sys, "path", [p for p in sys.path if p != self.root])


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fine-tuned-looking weights: non-trivial LayerNorms and biases (init leaves them 1 and 0)."""
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture
def upstream(tmp_path, monkeypatch):
    return Upstream(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def probe():
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = open_clip.get_tokenizer(OAI)(["a photo of a cat.", "a dog", "x"])
    return images, tokens


def _head(dim=32, classes=5):
    gen = torch.Generator().manual_seed(7)
    return torch.randn(classes, dim, generator=gen), torch.randn(classes, generator=gen)


def _err(a, b):
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- WiSE-FT

def test_wiseft_pickled_image_classifier_reads_without_code(upstream, probe, tmp_path):
    m = upstream.modeling
    clf = m.ImageClassifier(m.ImageEncoder(upstream.openai_clip()), m.ClassificationHead(True, *_head()))
    clf.eval()
    with torch.no_grad():
        want_img = clf.image_encoder(probe[0])
        want_logits = clf(probe[0])
    path = tmp_path / "checkpoint_10.pt"
    m.torch_save(clf, path)  # upstream's own save call
    upstream.hide()
    with open(path, "rb") as f:  # the file really is a plain pickle, not a torch archive
        assert f.read(1) == b"\x80" and not zipfile.is_zipfile(path)
    bundle = load_model(OAI, None, ckpt=path)  # no --trust-pickle needed
    assert not any(n == "src" or n.startswith(("src.", "clip")) for n in sys.modules)  # nothing imported
    info = bundle.info
    assert info["ckpt_format"] == "wiseft" and info["partial"]  # ImageEncoder deleted the text transformer
    assert info["quick_gelu"]["expected_quick_gelu"] is True and "clip.model" in info["quick_gelu"]["source"]
    assert "src.models.modeling.ImageClassifier" in info["ckpt_meta"]["pickle_classes"]
    with torch.no_grad():
        img = bundle.model.encode_image(probe[0])
        h = bundle.head
        logits = torch.nn.functional.normalize(img, dim=-1) @ h.head_weight.T + h.head_bias
    assert _err(img, want_img) < TOL and _err(logits, want_logits) < TOL
    assert h.head_input == "embeds"


def test_wiseft_gelu_mismatch_is_warned(upstream, tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(loading_mod, "warn", said.append)
    m = upstream.modeling
    path = tmp_path / "zeroshot.pt"
    m.torch_save(m.ImageClassifier(m.ImageEncoder(upstream.openai_clip()), m.ClassificationHead(True, *_head())), path)
    upstream.hide()
    load_model(GELU, None, ckpt=path)
    assert any("expect QuickGELU" in s for s in said)


def test_trusted_plain_pickle_loads_too(upstream, probe, tmp_path):
    """--trust-pickle on a pickle.dump file: no 'Invalid magic number'; missing classes stubbed."""
    m = upstream.modeling
    enc = m.ImageEncoder(upstream.openai_clip(), keep_lang=True)
    with torch.no_grad():
        want = enc(probe[0])
    path = tmp_path / "image_encoder.pt"
    m.torch_save(enc, path)
    upstream.hide()
    bundle = load_model(OAI, None, ckpt=path, trust_pickle=True)
    assert bundle.info["ckpt_format"] == "flyp" and not bundle.info["partial"]
    with torch.no_grad():
        assert _err(bundle.model.encode_image(probe[0]), want) < TOL


# ----------------------------------------------------------------------------- FLYP

def test_flyp_clip_encoder_of_openai_clip(upstream, probe, tmp_path):
    """FLYP's CLIPEncoder around clip.load (its ViT-B/32 runs): both towers, QuickGELU inferred."""
    enc = upstream.modeling.CLIPEncoder(upstream.openai_clip(seed=3))
    with torch.no_grad():
        want = enc.model.encode_image(probe[0]), enc.model.encode_text(probe[1])
    path = tmp_path / "flyp_10.pt"
    upstream.modeling.torch_save(enc, path)
    upstream.hide()
    bundle = load_model(OAI, None, ckpt=path)
    assert bundle.info["ckpt_format"] == "flyp" and not bundle.info["partial"]
    assert bundle.info["quick_gelu"]["expected_quick_gelu"] is True
    with torch.no_grad():
        got = bundle.model.encode_image(probe[0]), bundle.model.encode_text(probe[1])
    assert _err(got[0], want[0]) < TOL and _err(got[1], want[1]) < TOL


def test_flyp_clip_encoder_of_open_clip(upstream, probe, tmp_path, monkeypatch):
    """FLYP's CLIPEncoder around open_clip (its ViT-B-16 / L-14 runs, LAION, nn.GELU): GELU inferred."""
    said = []
    monkeypatch.setattr(loading_mod, "warn", said.append)
    torch.manual_seed(4)
    oc = _perturb(open_clip.create_model(GELU).eval(), 4)
    enc = upstream.modeling.CLIPEncoder(oc)
    with torch.no_grad():
        want = oc.encode_image(probe[0]), oc.encode_text(probe[1])
    path = tmp_path / "flyp_laion.pt"
    upstream.modeling.torch_save(enc, path)
    upstream.hide()
    bundle = load_model(GELU, None, ckpt=path)
    assert bundle.info["quick_gelu"]["expected_quick_gelu"] is False and not said
    with torch.no_grad():
        got = bundle.model.encode_image(probe[0]), bundle.model.encode_text(probe[1])
    assert _err(got[0], want[0]) < TOL and _err(got[1], want[1]) < TOL
    said.clear()
    load_model(OAI, None, ckpt=path)  # the wrong activation for these weights: said so
    assert any("trained with nn.GELU" in s for s in said)


def test_flyp_state_dict_activation_is_ambiguous(probe, tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(loading_mod, "warn", said.append)
    oc = open_clip.create_model(GELU)
    path = tmp_path / "flyp_sd.pt"
    torch.save({f"model.{k}": v for k, v in oc.state_dict().items()}, path)
    bundle = load_model(GELU, None, ckpt=path)
    assert bundle.info["quick_gelu"]["source"] == "ambiguous"
    assert any("ambiguous" in s and "-quickgelu" in s and "nn.GELU" in s for s in said)


# ----------------------------------------------------------------------------- CLIPood, LP-FT, CMA

def test_clipood_visual_state_dict(upstream, probe, tmp_path):
    """thuml/CLIPood main.py: ``classifier = clip_model.visual``, ``clip.model.convert_weights`` (fp16
    conv/linear/attention weights and ``proj``; LayerNorms and embeddings stay fp32), then
    ``torch.save(classifier.state_dict(), <log>/checkpoints/latest.pth)``.

    Reference: upstream's own ``VisionTransformer`` holding the saved weights, run in float32 (the
    half-to-float cast is exact, so oodbench must match it to float32 rounding).
    """
    clip_model = upstream.openai_clip(seed=5)
    classifier = clip_model.visual
    upstream.clip_model.convert_weights(classifier)
    path = tmp_path / "checkpoints" / "latest.pth"
    path.parent.mkdir()
    torch.save(classifier.state_dict(), path)  # upstream's save call
    saved = torch.load(path, weights_only=True)
    assert saved["conv1.weight"].dtype == torch.float16 and saved["ln_pre.weight"].dtype == torch.float32
    ref = upstream.openai_clip(seed=6).visual  # other weights, overwritten by the file's
    ref.load_state_dict(saved)
    with torch.no_grad():
        want = ref.float()(probe[0])
    upstream.hide()
    bundle = load_model(OAI, None, ckpt=path)
    assert bundle.info["ckpt_format"] == "visual_only" and bundle.info["partial"]
    assert bundle.info["quick_gelu"]["expected_quick_gelu"] is True
    with torch.no_grad():
        got = bundle.model.encode_image(probe[0])
    assert _err(got, want) < TOL


LPFT_MODEL = '''
"""Attribute layout of AnanyaKumar/transfer_learning unlabeled_extrapolation/models/clip_model.py."""
import torch
from torchvision.transforms import Normalize

normalize_transform = Normalize(mean=(0.48145466, 0.4578275, 0.40821073),
                                std=(0.26862954, 0.26130258, 0.27577711))


class ClipModel(torch.nn.Module):
    def __init__(self, model):  # upstream: model, _ = clip.load(model_name, device)
        super().__init__()
        self._model = model
        self._model.visual.float()
        self._classifier = None

    def new_last_layer(self, num_classes):
        self._classifier = torch.nn.Linear(self._model.visual.output_dim, num_classes)

    def get_features(self, x):
        return self._model.encode_image(normalize_transform(x))

    def forward(self, x):
        features = self.get_features(x)
        return features if self._classifier is None else self._classifier(features)
'''


def test_lpft_clip_model_checkpoint(upstream, probe, tmp_path):
    """LP-FT (AnanyaKumar/transfer_learning): ``ClipModel`` keeps ``clip.load``'s model as ``_model``
    (fp16 text tower on CUDA, ``visual.float()``) and the head as ``_classifier`` (an ``nn.Linear``
    on the raw ``encode_image`` output); ``utils.save_ckp`` writes ``torch.save({'epoch',
    'state_dict': model.state_dict(), 'optimizer', 'scheduler'})``.
    """
    pkg = Path(upstream.root) / "unlabeled_extrapolation"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "clip_model.py").write_text(textwrap.dedent(LPFT_MODEL))
    from unlabeled_extrapolation.models.clip_model import ClipModel, normalize_transform

    oai = upstream.openai_clip(seed=7)
    upstream.clip_model.convert_weights(oai)  # clip.load on a GPU returns fp16 weights
    net = ClipModel(oai)
    net.new_last_layer(5)
    with torch.no_grad():
        net._classifier.weight.copy_(_head()[0])
        net._classifier.bias.copy_(_head()[1])
    net.eval()
    with torch.no_grad():
        want_feat, want_logits = net.get_features(probe[0]), net(probe[0])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    path = tmp_path / "checkpoints" / "ckp_best_val"
    path.parent.mkdir()
    torch.save({"epoch": 3, "state_dict": net.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, str(path))  # utils.save_ckp
    for name in [n for n in sys.modules if n.startswith("unlabeled_extrapolation")]:
        upstream.mp.delitem(sys.modules, name)
    upstream.hide()
    bundle = load_model(OAI, None, ckpt=path)
    assert bundle.info["ckpt_format"] == "lpft" and not bundle.info["partial"]
    assert bundle.info["quick_gelu"]["expected_quick_gelu"] is True
    h = bundle.head
    assert h.head_input == "embeds_raw"
    with torch.no_grad():
        got = bundle.model.encode_image(normalize_transform(probe[0]))
        logits = got @ h.head_weight.T + h.head_bias
    assert _err(got, want_feat) < TOL and _err(logits, want_logits) < TOL


@pytest.mark.parametrize("gpus", [1, 2])
def test_cma_training_checkpoint(upstream, probe, tmp_path, gpus):
    """CMA (Kim & Hwang, CVPR 2025; ma-kjh/CMA ``utils/train_utils.py``): ``clip.load(..., device='cpu')``
    (float32 OpenAI CLIP), wrapped in ``nn.DataParallel`` with more than one GPU (``module.``), saved
    each epoch as ``torch.save({'epoch', 'model_state_dict': model.state_dict(),
    'optimizer_state_dict'}, 'model_CMA_{epoch}.pt')``. No head; both towers are fine-tuned.
    """
    oai = upstream.openai_clip(seed=8)
    with torch.no_grad():
        want = oai.encode_image(probe[0]), oai.encode_text(probe[1])
    model = torch.nn.DataParallel(oai) if gpus > 1 else oai  # DataParallel works on the CPU too
    opt = torch.optim.AdamW([{"params": model.parameters()}], lr=1e-5, weight_decay=0.1)
    path = tmp_path / "model_CMA_10.pt"
    torch.save({"epoch": 10, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()},
               path)
    assert all(k.startswith("module.") for k in torch.load(path, weights_only=True)["model_state_dict"]) == (gpus > 1)
    upstream.hide()
    bundle = load_model(OAI, None, ckpt=path)
    assert bundle.info["ckpt_format"] == "cma" and not bundle.info["partial"] and bundle.head is None
    assert bundle.info["quick_gelu"]["expected_quick_gelu"] is True
    with torch.no_grad():
        got = bundle.model.encode_image(probe[0]), bundle.model.encode_text(probe[1])
    assert _err(got[0], want[0]) < TOL and _err(got[1], want[1]) < TOL


# ----------------------------------------------------------------------------- no code runs

class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_code_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd = open_clip.create_model(GELU).state_dict()
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": dict(sd), "hook": _Evil()}, f)
    obj, _ = read_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    assert "builtins.exec" in obj[CLASSES_KEY]
    load_model(GELU, None, ckpt=path)  # the tensors are usable; the call was stubbed
    assert not (tmp_path / "PWNED").exists()



def test_pickle_cannot_change_the_allowed_torch_functions(tmp_path):
    """A BUILD on an allowed rebuild function (here: setting its ``__defaults__``) must neither
    reach the real function nor change how later tensors load in the process."""
    import torch

    clean = tmp_path / "clean.pt"
    torch.save({"w": torch.ones(3)}, clean)
    poison = tmp_path / "poison.pt"
    # GLOBAL torch._utils._rebuild_tensor_v2, then BUILD with (None, {'__defaults__': {'neg': True}})
    poison.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__}X\x03\x00"
                       b"\x00\x00neg\x88s\x85s\x86b0" + pickle.dumps({"w": 1.0}, protocol=2))
    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    try:
        read_checkpoint(poison)
    except OodbenchError:
        pass  # refusing the file is fine; changing torch is not
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults
    assert torch.equal(torch.load(clean, weights_only=True)["w"], torch.ones(3))
    obj, _ = read_checkpoint(clean)
    assert torch.equal(obj["w"], torch.ones(3))


# ----------------------------------------------------------------------------- one-line errors

def _cli_error(args, tmp_path):
    res = runner.invoke(app, ["extract", "--dataset", "digits-id-test", "--device", "cpu",
                              "--store", str(tmp_path / "store"), *args])
    text = res.output.strip()
    assert res.exit_code == 1, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.h5"))
    return text


def _bad_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(open_clip.create_model(GELU).state_dict(), good)
    data = good.read_bytes()
    st = tmp_path / "good.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in open_clip.create_model(GELU).state_dict().items()}, str(st))
    sdata = st.read_bytes()
    rnd = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).numpy().tobytes()
    return {
        "random.pt": (rnd, "random or foreign bytes"),
        "empty.pt": (b"", "empty"),
        "truncated.pt": (data[: len(data) // 2], "truncated or corrupt"),
        "empty.safetensors": (b"", "empty"),
        "random.safetensors": (rnd, "safetensors"),
        "truncated.safetensors": (sdata[: len(sdata) // 2], "truncated or corrupt"),
    }


def test_unreadable_files_are_one_line(tmp_path):
    for name, (content, says) in _bad_files(tmp_path).items():
        p = tmp_path / name
        p.write_bytes(content)
        for trust in ([], ["--trust-pickle"]):
            text = _cli_error(["--model", GELU, "--pretrained", "", "--ckpt", str(p), *trust], tmp_path)
            assert name in text and says in text, text


def test_nan_weights_are_refused(tmp_path):
    sd = dict(open_clip.create_model(GELU).state_dict())
    sd["visual.proj"] = sd["visual.proj"].clone()
    sd["visual.proj"][0, 0] = float("nan")
    p = tmp_path / "diverged.pt"
    torch.save(sd, p)
    text = _cli_error(["--model", GELU, "--pretrained", "", "--ckpt", str(p)], tmp_path)
    assert "diverged.pt" in text and "visual.proj" in text and "NaN/inf" in text


def _offline(monkeypatch):
    calls = []

    def fail(cfg, *a, **k):
        calls.append(cfg)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", fail)
    return calls


def test_missing_pretrained_weights_is_one_line(tmp_path, monkeypatch, caplog):
    calls = _offline(monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="huggingface_hub"):
        text = _cli_error(["--model", "ViT-B-32", "--pretrained", "openai"], tmp_path)
    assert calls, "the download function was not reached"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no log lines beside the error
    assert "ViT-B-32 'openai'" in text and "timm/vit_base_patch32_clip_224.openai" in text
    assert "not in the cache" in text and "create_model_and_transforms" in text and "--pretrained PATH" in text


def test_whole_model_checkpoint_needs_no_pretrained_weights(tmp_path, monkeypatch):
    """extract --ckpt of a full model onto a tagged architecture: the tag's weights are never fetched."""
    from open_clip import pretrained as oc_pretrained

    tag = oc_pretrained._pcfg(hf_hub="someone/tiny-clip/", mean=(0.25, 0.5, 0.75), std=(0.5, 0.5, 0.5))
    monkeypatch.setitem(oc_pretrained._PRETRAINED, GELU, {"tinytag": tag})
    calls = _offline(monkeypatch)
    torch.manual_seed(5)
    ft = _perturb(open_clip.create_model(GELU).eval(), 5)
    p = tmp_path / "ft.pt"
    torch.save({"state_dict": ft.state_dict(), "epoch": 1}, p)
    bundle = load_model(GELU, "tinytag", ckpt=p)
    assert not calls and "not loaded" in bundle.info["base_weights"]
    assert all(torch.equal(v, ft.state_dict()[k]) for k, v in bundle.model.state_dict().items())
    assert tuple(bundle.preprocess.transforms[-1].mean) == (0.25, 0.5, 0.75)  # the tag's preprocessing
    text = _cli_error(["--model", GELU, "--pretrained", "tinytag", "--ckpt", str(p), "--dataset", "nope"], tmp_path)
    assert "nope" in text and not calls  # (the data check comes first; the model is not even built)
    lora = tmp_path / "lora.pt"  # a LoRA needs the base weights: they are fetched, and their absence said
    torch.save({"weights": {}, "metadata": {"r": 2, "alpha": 1, "encoder": "vision", "position": "all"}}, lora)
    with pytest.raises(OodbenchError, match="not in the cache"):
        load_model(GELU, "tinytag", ckpt=lora)
    assert calls
