"""Checkpoint formats: each adapter turns a file into an open_clip state dict (+ optional head).

Reading runs no code from the file (see :mod:`.reading`): safetensors, torch archives and whole
pickled objects (WiSE-FT's ``ImageClassifier``, FLYP's ``CLIPEncoder``, written with
``pickle.dump``) are rebuilt as tensors with every other class stubbed. ``trust_pickle=True``
(CLI: ``--trust-pickle``) unpickles for real, for files that hold more than modules and tensors.

Adapters (``ADAPTERS``), detected from the keys by :func:`detect_format` or named explicitly:

========== ==================================================================================
open_clip  open_clip state dicts and training checkpoints (``state_dict``, ``module.``)
safetensors the same, stored as ``.safetensors``
visual_only CLIPood-style visual tower only (no ``visual.`` prefix, often fp16); text keeps base
wiseft     WiSE-FT / model soups (``image_encoder.model.*`` or ``model.*``,
           ``classification_head.*``); head on L2-normalised embeddings
lpft       LP-FT (``_model.*``, ``_classifier.*``); head on raw (unnormalised) embeddings
flyp       FLYP / CaRot (``model.*``, both towers)
hf_clip    a fully fine-tuned Hugging Face ``CLIPModel`` directory (config.json + model.safetensors)
cma        CMA ``{'model_state_dict': ...}`` of OpenAI CLIP (``module.`` under DataParallel)
peft_lora  HF PEFT LoRA for HF CLIP (``adapter_config.json`` + ``adapter_model.*``), merged
clip_lora  CLIP-LoRA ``.pt`` (``weights`` + ``metadata``), merged
coop       CoOp / LoCoOp prompt learner: learned text context (``Adapted.text_ctx``)
========== ==================================================================================

The registry itself lives in :mod:`.registry`. Adapters take ``(obj, base=None)``: ``obj`` is what was read from the file, ``base`` the freshly
created model's state dict (needed by the LoRA formats, which return full state dicts).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from ..errors import OodbenchError, suggest
from .reading import CLASSES_KEY, read_json, read_tensors
from .registry import (
    ADAPTERS,
    BASE_FORMATS,
    DETECTORS,
    Adapted,
    Adapter,
    register_adapter,
    strip_prefix,
    tensors_of,
)

__all__ = ["ADAPTERS", "Adapted", "adapt", "adapt_object", "detect_format", "load_into", "mix_states",
           "read_checkpoint", "read_tensors", "register_adapter", "strip_prefix"]


def read_checkpoint(path: Path, trust_pickle: bool = False) -> tuple[Any, Path]:
    """Read ``path``: a file, a PEFT adapter or Hugging Face CLIPModel directory, or a CoOp run.

    Returns the loaded object and the file actually read. PEFT adapters come back as
    ``{'peft_config': {...}, 'state_dict': {...}}``, HF models as ``{'hf_config': ..., 'state_dict': ...}``.
    """
    path = Path(path)
    if path.is_dir() and (path / "adapter_config.json").exists():
        return _read_peft(path, None)
    if path.is_file() and path.name.startswith("adapter_model") and (path.parent / "adapter_config.json").exists():
        return _read_peft(path.parent, path)
    if path.is_dir() and (path / "config.json").exists():
        return _read_hf(path)
    if path.is_dir():
        found = _coop_file(path)
        if found is not None:
            return read_tensors(found, trust_pickle), found
    return read_tensors(path, trust_pickle), path


def _read_peft(folder: Path, weights: Path | None) -> tuple[dict, Path]:
    cfg = read_json(folder / "adapter_config.json")
    if weights is None:
        for name in ("adapter_model.safetensors", "adapter_model.bin"):
            if (folder / name).exists():
                weights = folder / name
                break
        else:
            raise OodbenchError(f"{folder} has adapter_config.json but no adapter_model.safetensors or .bin.")
    tensors = read_tensors(weights)
    tensors.pop("__metadata__", None)
    return {"peft_config": cfg, "state_dict": tensors}, weights


def _read_hf(folder: Path) -> tuple[dict, Path]:
    """A ``save_pretrained`` directory: config.json + model.safetensors (or sharded / .bin)."""
    cfg = read_json(folder / "config.json")
    files = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise OodbenchError(f"{folder} has config.json but no model.safetensors (or pytorch_model.bin): "
                            "pass the directory save_pretrained wrote.")
    tensors: dict[str, Any] = {}
    for f in files:
        part = read_tensors(f)
        part.pop("__metadata__", None)
        part.pop(CLASSES_KEY, None)
        tensors.update(part)
    return {"hf_config": cfg, "state_dict": tensors}, files[0]


def _coop_file(folder: Path) -> Path | None:
    """CoOp/LoCoOp output dir: prompt_learner/model-best.pth.tar, else the last model.pth.tar-N."""
    pl = folder if folder.name == "prompt_learner" else folder / "prompt_learner"
    if not pl.is_dir():
        return None
    if (pl / "model-best.pth.tar").exists():
        return pl / "model-best.pth.tar"
    epochs = [(int(p.name.rsplit("-", 1)[1]), p) for p in pl.glob("model.pth.tar-*")
              if p.name.rsplit("-", 1)[1].isdigit()]
    return max(epochs)[1] if epochs else None


# ----------------------------------------------------------------------------- helpers

_tensors = tensors_of


def _inner(obj: Any, *names: str) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint (first of ``names`` present), ``module.`` stripped."""
    if isinstance(obj, dict):
        for n in names:
            if isinstance(obj.get(n), dict):
                obj = obj[n]
                break
    return strip_prefix(_tensors(obj), "module.")


def _pop_head(sd: dict[str, torch.Tensor], prefix: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    w = sd.pop(f"{prefix}.weight", None)
    b = sd.pop(f"{prefix}.bias", None)
    if w is not None and w.ndim != 2:
        raise OodbenchError(f"{prefix}.weight has shape {tuple(w.shape)}: expected (classes, dim).")
    return (w.float() if w is not None else None), (b.float() if b is not None else None)


def _strip_first(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Strip the first of ``prefixes`` that any key carries from the keys that carry it."""
    for p in prefixes:
        if any(k.startswith(p) for k in sd):
            return {(k[len(p):] if k.startswith(p) else k): v for k, v in sd.items()}
    return sd


def _tower_scope(ad: Adapted) -> Adapted:
    """A full-model file without the text transformer (WiSE-FT deletes it) is a visual load."""
    has_text = any(k.startswith("transformer.resblocks.") for k in ad.state_dict)
    has_visual = any(k.startswith("visual.") for k in ad.state_dict)
    if has_visual and not has_text:
        ad.partial, ad.scope = True, ("visual.",)
        ad.notes.append("no text transformer in the file: the text tower keeps the base weights")
    return ad


def _hints(obj: Any) -> tuple[bool | None, str]:
    """QuickGELU hints stored in a checkpoint: a ``quick_gelu`` flag or training args."""
    if not isinstance(obj, dict):
        return None, ""
    spots = [obj] + [obj[k] for k in ("args", "config", "__metadata__") if isinstance(obj.get(k), dict)]
    for d in spots:
        for key in ("quick_gelu", "force_quick_gelu"):
            if key in d and not isinstance(d[key], torch.Tensor):
                v = d[key]
                if isinstance(v, str):
                    v = v.strip().lower() in ("1", "true", "yes")
                if v:
                    return True, f"checkpoint {key}=True"
        model = d.get("model")
        if isinstance(model, str) and model.endswith("-quickgelu"):
            return True, f"checkpoint trained as {model}"
    return None, ""


def params_txt_hints(ckpt: Path) -> dict[str, str]:
    """open_clip training writes ``params.txt`` next to ``checkpoints/``: read model/pretrained."""
    for p in (ckpt.parent / "params.txt", ckpt.parent.parent / "params.txt"):
        if p.is_file():
            out = {}
            for line in p.read_text(errors="replace").splitlines():
                if ":" in line:
                    k, v = line.split(":", 1)
                    out[k.strip()] = v.strip()
            out["_path"] = str(p)
            return out
    return {}


# ----------------------------------------------------------------------------- adapters

@register_adapter("open_clip")
def open_clip_adapter(obj: Any, base: dict | None = None) -> Adapted:
    """open_clip state dicts and training checkpoints (``{'state_dict': ..., 'epoch': ...}``)."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict):
        raise OodbenchError("open_clip checkpoint must be a dict of tensors (or {'state_dict': ...}).")
    sd = strip_prefix(_tensors(sd), "module.")
    qg, why = _hints(obj)
    return Adapted(sd, format="open_clip", quick_gelu=qg, quick_gelu_reason=why)


@register_adapter("safetensors")
def safetensors_adapter(obj: Any, base: dict | None = None) -> Adapted:
    """A plain open_clip state dict stored as safetensors."""
    ad = open_clip_adapter(obj, base)
    ad.format = "safetensors"
    return ad


_VISUAL_ROOTS = ("conv1.weight", "class_embedding", "ln_pre.weight", "ln_post.weight", "proj",
                 "attnpool.positional_embedding", "trunk.")


@register_adapter("visual_only")
def visual_only_adapter(obj: Any, base: dict | None = None) -> Adapted:
    """CLIPood: ``clip_model.visual.state_dict()`` (fp16, no ``visual.`` prefix); text keeps base."""
    sd = _inner(obj, "state_dict", "model")
    if any(k.startswith("visual.") for k in sd):
        if any(k.startswith(("transformer.", "token_embedding")) for k in sd):
            raise OodbenchError("visual_only checkpoint also holds text-tower keys: use --ckpt-format open_clip.")
        prefixed = sd
    else:
        prefixed = {f"visual.{k}": v for k, v in sd.items()}
    fp16 = any(v.dtype == torch.float16 for v in sd.values())
    ad = Adapted(prefixed, partial=True, scope=("visual.",), format="visual_only",
                 notes=["visual tower only: the text tower keeps the base weights"])
    if fp16 and prefixed is not sd:
        ad.quick_gelu, ad.quick_gelu_reason = True, "fp16 visual-only state dict as saved by CLIPood (OpenAI CLIP)"
        ad.notes.append("weights stored in float16")
    return ad


@register_adapter("wiseft")
def wiseft_adapter(obj: Any, base: dict | None = None) -> Adapted:
    """WiSE-FT ``ImageClassifier`` / model-soups ``ModelWrapper`` state dicts.

    Both normalise the image embedding before ``classification_head`` (WiSE-FT's
    ``ClassificationHead(normalize=True)``; soups' ``ModelWrapper(normalize=True)``), so the head
    reads L2-normalised embeddings; zero-shot-initialised heads already include the logit scale.
    """
    sd = dict(_inner(obj, "state_dict", "model_state_dict"))
    w, b = _pop_head(sd, "classification_head")
    sd = _strip_first(sd, ("image_encoder.model.", "model."))
    ad = Adapted(sd, head_weight=w, head_bias=b, head_input="embeds", format="wiseft",
                 quick_gelu=True, quick_gelu_reason="WiSE-FT / model soups fine-tune OpenAI CLIP (the `clip` package)")
    return _tower_scope(ad)


@register_adapter("lpft")
def lpft_adapter(obj: Any, base: dict | None = None) -> Adapted:
    """LP-FT (AnanyaKumar/transfer_learning ``ClipModel``): ``_model.*`` + ``_classifier``.

    ``ClipModel.forward`` feeds ``encode_image`` straight into ``_classifier`` (no L2 norm).
    """
    sd = dict(_inner(obj, "state_dict", "model_state_dict"))
    w, b = _pop_head(sd, "_classifier")
    sd = _strip_first(sd, ("_model.",))
    ad = Adapted(sd, head_weight=w, head_bias=b, head_input="embeds_raw", format="lpft",
                 quick_gelu=True, quick_gelu_reason="LP-FT fine-tunes OpenAI CLIP (the `clip` package)")
    return _tower_scope(ad)


FLYP_ACTIVATION = (
    "FLYP fine-tunes LAION open_clip weights (nn.GELU) for ViT-B-16 and ViT-L-14 and OpenAI CLIP (QuickGELU) "
    "for the other models, and this file does not say which: pass --model NAME for a LAION run or "
    "--model NAME-quickgelu for an OpenAI run (the model and its fine-tuning command tell)"
)


@register_adapter("flyp")
def flyp_adapter(obj: Any, base: dict | None = None) -> Adapted:
    """FLYP / CaRot ``CLIPEncoder`` (``model.*``, both towers).

    FLYP's ``CLIPEncoder`` wraps ``open_clip.create_model_and_transforms(..., 'laion400m_e31')``
    for ViT-B-16/ViT-L-14 and ``clip.load`` (OpenAI, QuickGELU) otherwise. A pickled encoder names
    its classes, so the activation is read from them (:func:`pickle_activation`); a bare state
    dict does not say, which is warned about at load.
    """
    sd = dict(_inner(obj, "state_dict", "model_state_dict"))
    w, b = _pop_head(sd, "classification_head")
    sd = _strip_first(sd, ("model.",))
    ad = Adapted(sd, head_weight=w, head_bias=b, head_input="embeds", format="flyp",
                 quick_gelu_ambiguous=FLYP_ACTIVATION)
    return _tower_scope(ad)


@register_adapter("cma")
def cma_adapter(obj: Any, base: dict | None = None) -> Adapted:
    """CMA (ma-kjh/CMA): ``{'epoch', 'model_state_dict', 'optimizer_state_dict'}`` of OpenAI CLIP.

    ``clip.load`` (QuickGELU), ``module.`` prefixes when trained under ``nn.DataParallel``.
    """
    sd = dict(_inner(obj, "model_state_dict", "state_dict"))
    w = b = None
    for head in ("classification_head", "classifier", "head"):
        if f"{head}.weight" in sd:
            w, b = _pop_head(sd, head)
            break
    sd = _strip_first(sd, ("model.", "clip_model.", "clip."))
    ad = Adapted(sd, head_weight=w, head_bias=b, head_input="embeds", format="cma",
                 quick_gelu=True, quick_gelu_reason="CMA fine-tunes OpenAI CLIP (the `clip` package)")
    if w is not None:
        ad.notes.append("head input assumed to be L2-normalised embeddings")
    return _tower_scope(ad)


# ----------------------------------------------------------------------------- detection

def _flat_keys(obj: Any) -> list[str]:
    if not isinstance(obj, dict):
        return []
    sd = obj.get("state_dict") if isinstance(obj.get("state_dict"), dict) else obj
    keys = [k for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)]
    if keys and all(k.startswith("module.") for k in keys):
        keys = [k[len("module."):] for k in keys]
    return keys


def detect_format(obj: Any, path: Path | None = None) -> str:
    """Guess the adapter from the keys of a loaded checkpoint (and the file suffix)."""
    for name, pred in DETECTORS:
        try:
            if pred(obj):
                return name
        except Exception:  # noqa: BLE001 - a plug-in detector must not break detection
            continue
    if not isinstance(obj, dict):
        return "open_clip"
    if "peft_config" in obj:
        return "peft_lora"
    if "hf_config" in obj:
        return "hf_clip"
    if isinstance(obj.get("weights"), dict) and isinstance(obj.get("metadata"), dict):
        return "clip_lora"
    if isinstance(obj.get("model_state_dict"), dict):
        return "cma"
    keys = _flat_keys(obj)
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft_lora"
    if "ctx" in keys or any(k.endswith("prompt_learner.ctx") for k in keys):
        return "coop"
    if any(k.startswith(("_model.", "_classifier.")) for k in keys):
        return "lpft"
    if any(k.startswith(("image_encoder.", "classification_head.")) for k in keys):
        return "wiseft"
    if any(k.startswith("model.") for k in keys):
        return "flyp"
    if keys and "token_embedding.weight" not in keys and (
        any(k in _VISUAL_ROOTS or k.startswith("trunk.") for k in keys)
        or all(k.startswith("visual.") for k in keys)
    ):
        return "visual_only"
    if path is not None and Path(path).suffix == ".safetensors":
        return "safetensors"
    return "open_clip"


def _call(fn: Adapter, obj: Any, base: dict | None) -> Adapted:
    params = inspect.signature(fn).parameters
    if "base" in params or len(params) >= 2:
        return fn(obj, base=base)
    return fn(obj)


def adapt(path: Path, fmt: str = "auto", base: dict[str, torch.Tensor] | None = None,
          trust_pickle: bool = False) -> Adapted:
    """Read ``path`` and turn it into open_clip weights with the ``fmt`` adapter (or detect it)."""
    obj, file = read_checkpoint(Path(path), trust_pickle)
    return adapt_object(obj, file, fmt, base)


def needs_base(obj: Any, file: Path, fmt: str = "auto") -> bool:
    """Whether the checkpoint read into ``obj`` changes pretrained weights rather than replacing them."""
    return (detect_format(obj, file) if fmt == "auto" else fmt) in BASE_FORMATS


def adapt_object(obj: Any, file: Path, fmt: str = "auto", base: dict[str, torch.Tensor] | None = None) -> Adapted:
    """Turn what :func:`read_checkpoint` read from ``file`` into open_clip weights."""
    detected = detect_format(obj, file)
    if fmt == "auto":
        fmt = detected
    if fmt not in ADAPTERS:
        raise suggest(fmt, ADAPTERS, "checkpoint format")
    ad = _call(ADAPTERS[fmt], obj, base)
    ad.format = ad.format or fmt
    ad.needs_base = ad.needs_base or fmt in BASE_FORMATS
    ad.meta.setdefault("file", str(file))
    if fmt != detected:
        ad.meta["detected_format"] = detected
    if isinstance(obj, dict) and isinstance(obj.get("quick_gelu"), bool):  # the file says what it was
        ad.quick_gelu, ad.quick_gelu_reason = obj["quick_gelu"], "checkpoint's quick_gelu entry"
    classes = obj.get(CLASSES_KEY) if isinstance(obj, dict) else None
    if classes:
        ad.meta["pickle_classes"] = [c for c in classes if not c.startswith("torch.")][:12]
        qg, why = pickle_activation(classes)
        if qg is not None:
            ad.quick_gelu, ad.quick_gelu_reason, ad.quick_gelu_ambiguous = qg, why, ""
    if fmt in ("open_clip", "safetensors") and ad.quick_gelu is None:
        params = params_txt_hints(file)
        if params:
            ad.meta["params_txt"] = {k: params[k] for k in ("model", "pretrained", "force_quick_gelu", "_path")
                                     if k in params}
            model = params.get("model", "")
            if (model.endswith("-quickgelu") or params.get("force_quick_gelu") == "True"
                    or params.get("pretrained") == "openai"):
                ad.quick_gelu, ad.quick_gelu_reason = True, f"{params['_path']}: model {model}, pretrained {params.get('pretrained')}"
            elif model:
                ad.quick_gelu, ad.quick_gelu_reason = False, f"{params['_path']}: model {model}"
    return ad


def pickle_activation(classes: list[str]) -> tuple[bool | None, str]:
    """The MLP activation a pickled model was built with, from the classes its pickle names.

    OpenAI's ``clip`` package (``clip.model.*``) always uses its own QuickGELU; open_clip pickles
    name ``open_clip.transformer.QuickGELU`` or ``torch.nn.GELU`` for the MLP's activation.
    """
    quick = [c for c in classes if c.rsplit(".", 1)[-1] == "QuickGELU"]
    if quick:
        openai = " (OpenAI's clip package)" if quick[0].startswith("clip.") else ""
        return True, f"the pickled model's MLP uses {quick[0]}{openai}"
    if any(c.startswith("clip.model.") for c in classes):
        return True, "the pickled model is OpenAI's clip package (clip.model.CLIP, QuickGELU)"
    if "torch.nn.modules.activation.GELU" in classes:
        return False, "the pickled model's MLP uses torch.nn.GELU"
    return None, ""


def load_into(model: torch.nn.Module, adapted: Adapted, source: str) -> dict[str, int]:
    """Load adapted weights strictly; on mismatch say how many keys are missing/unexpected.

    Partial files (``adapted.partial``) may leave keys out, except under ``adapted.scope``.
    Returns ``{'loaded': n, 'kept': m}`` (keys taken from the file / kept from the base model).
    """
    own = model.state_dict()
    sd = adapted.state_dict
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if adapted.partial:
        missing = [k for k in missing if adapted.scope and k.startswith(adapted.scope)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} with wrong shape (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})")
        fmt = f" (read as {adapted.format})" if adapted.format else ""
        raise OodbenchError(
            f"Checkpoint {source}{fmt} does not fit this architecture: {'; '.join(parts)} keys. "
            "It was trained for another architecture (pass that --model) or is another format (--ckpt-format)."
        )
    check_finite(adapted, source)
    if sd:
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=not adapted.partial)
    return {"loaded": len(sd), "kept": len(own) - len(sd)}


def check_finite(adapted: Adapted, source: str) -> None:
    """Refuse weights holding NaN or inf (a diverged run or a damaged file) before they are used."""
    items = list(adapted.state_dict.items()) + [
        ("head weight", adapted.head_weight), ("head bias", adapted.head_bias), ("prompt context", adapted.text_ctx)]
    for k, v in items:
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            n = int((~torch.isfinite(v)).sum())
            raise OodbenchError(
                f"Checkpoint {source}: {k} holds {n} NaN/inf value(s) of {v.numel()}: the run diverged or the file "
                "is damaged; use an earlier checkpoint of the run."
            )


def mix_states(theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor],
               alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT: (1 - alpha) * theta0 + alpha * theta1 over matching floating-point keys.

    Keys only in ``theta1`` and non-float tensors come from ``theta1``; alpha 0 and 1 give the
    endpoints bit for bit.
    """
    out = {}
    for k, v1 in theta1.items():
        v0 = theta0.get(k)
        if v0 is None or not v1.is_floating_point() or v0.shape != v1.shape:
            out[k] = v1
        elif alpha == 0:
            out[k] = v0.to(v1.dtype)
        elif alpha == 1:
            out[k] = v1
        else:
            out[k] = ((1 - alpha) * v0.float() + alpha * v1.float()).to(v1.dtype)
    return out
