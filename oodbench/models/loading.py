"""Build an open_clip model from a name + pretrained tag or a local checkpoint."""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..console import warn
from ..errors import OodbenchError, suggest
from .checkpoints import adapt, adapt_object, load_into, mix_states, needs_base, read_checkpoint
from .prompts import class_token_position as read_class_token_position
from .registry import Adapted
from .tiny import TINY_MODEL, TINY_TAG, ensure_tiny, register_configs


def ckpt_label(ckpt: str | Path) -> str:
    """A readable name for a checkpoint path; generic file names borrow their folder's name."""
    p = Path(ckpt)
    name = p.name
    if p.is_dir():
        return name
    if name.startswith("adapter_model"):
        return p.parent.name
    m = re.fullmatch(r"model(?:\.pth\.tar-(\d+)|-best\.pth\.tar)", name)
    if m:  # CoOp: <run>/prompt_learner/model.pth.tar-50
        run = p.parent.parent.name if p.parent.name == "prompt_learner" else p.parent.name
        return f"{run}-{'ep' + m.group(1) if m.group(1) else 'best'}"
    for suffix in (".safetensors", ".pth.tar", ".ckpt", ".pth", ".pt", ".bin"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


@dataclass
class ModelBundle:
    """A loaded CLIP and everything needed to describe it in the store."""

    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    name: str
    pretrained: str | None
    ckpt: str | None
    fingerprint: str
    head: Adapted | None = None
    info: dict[str, Any] = field(default_factory=dict)
    text_ctx: torch.Tensor | None = None  # learned prompt context (CoOp): see prompts.encode_with_context
    class_token_position: str = "end"  # CoOp: where the class name sits among the context tokens

    @property
    def key(self) -> str:
        """Store directory name: model name, weights label and fingerprint prefix."""
        return f"{self.name}-{self.label}-{self.fingerprint[:10]}".replace("/", "_")

    @property
    def label(self) -> str:
        if self.ckpt:
            label = ckpt_label(self.info.get("ckpt_file") or self.ckpt)
        elif self.pretrained and ("/" in self.pretrained or "\\" in self.pretrained):
            label = Path(self.pretrained).stem
        else:
            label = self.pretrained or "random"
        alpha = self.info.get("wise_alpha")
        return f"{label}-wise{alpha:g}" if alpha is not None else label


def fingerprint_state(model: torch.nn.Module, extra: dict[str, torch.Tensor | None] | None = None,
                      arch: str | None = None) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every tensor in the state dict.

    ``extra`` tensors (a checkpoint's head, a learned prompt context) are hashed after them
    under their own names, so they are part of the identity too. ``arch`` (a description of the
    architecture that the weights alone do not pin down, e.g. the model config with its
    activation) is hashed first: ViT-B-16 and ViT-B-16-quickgelu with equal weights differ.
    """
    h = hashlib.sha256()
    if arch is not None:
        h.update(f"arch|{arch}|".encode())
    items = sorted(model.state_dict().items())
    items += [(f"extra:{k}", v) for k, v in sorted((extra or {}).items()) if v is not None]
    for k, v in items:
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def arch_id(model_name: str, **more: Any) -> str:
    """The architecture as hashed into the fingerprint: open_clip's model config (+ ``more``)."""
    import json

    import open_clip

    cfg = open_clip.get_model_config(model_name) or {"name": model_name}
    return json.dumps({"config": cfg, **more}, sort_keys=True, default=str)


def has_quick_gelu(model: torch.nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def check_quick_gelu(net: torch.nn.Module, model: str, pretrained: str | None,
                     adapted: Adapted | None = None) -> dict[str, Any]:
    """Compare the activation of the built model with what the weights were trained with.

    The expectation comes from the checkpoint (its format or metadata) when it says, else from
    open_clip's pretrained tag. A mismatch gives features that look plausible but are wrong, so
    it is warned about loudly. Returns what was found (for ``ModelBundle.info``).
    """
    import open_clip

    has = has_quick_gelu(net)
    expected, why, openai = None, "", False
    if adapted is not None and adapted.quick_gelu is not None:
        expected, why = adapted.quick_gelu, adapted.quick_gelu_reason
        openai = "OpenAI" in why or "openai" in why
    elif adapted is not None and adapted.quick_gelu_ambiguous:
        act = "QuickGELU" if has else "nn.GELU"
        warn(f"Activation of {Path(adapted.meta.get('file', 'the checkpoint')).name} is ambiguous: "
             f"{adapted.quick_gelu_ambiguous}; {model} uses {act}.")
        return {"model_quick_gelu": has, "expected_quick_gelu": None, "source": "ambiguous"}
    elif pretrained and not Path(pretrained).exists():
        cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
        if cfg:
            expected, why = bool(cfg.get("quick_gelu", False)), f"pretrained tag {pretrained!r}"
            openai = pretrained.lower() == "openai"
    if expected is True and not has:
        alt = f"{model}-quickgelu"
        fix = f"use {alt}" if alt in open_clip.list_models() else "use a config with quick_gelu=true"
        who = "OpenAI weights" if openai else "These weights"
        warn(f"{who} expect QuickGELU: {fix} ({why}); {model} uses nn.GELU, which gives plausible but "
             "wrong features.")
    elif expected is False and has:
        alt = model.removesuffix("-quickgelu")
        fix = f"use {alt}" if alt != model and alt in open_clip.list_models() else "use a config without quick_gelu"
        warn(f"These weights were trained with nn.GELU ({why}) but {model} uses QuickGELU: {fix}.")
    return {"model_quick_gelu": has, "expected_quick_gelu": expected, "source": why}


def _embed_dim(net: torch.nn.Module) -> int | None:
    proj = getattr(getattr(net, "visual", None), "proj", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    return getattr(getattr(net, "visual", None), "output_dim", None)


def _check_head(net: torch.nn.Module, ad: Adapted, source: str) -> None:
    w = ad.head_weight
    if ad.head_bias is not None and ad.head_bias.shape != (w.shape[0],):
        raise OodbenchError(f"{source}: head bias has shape {tuple(ad.head_bias.shape)} for {w.shape[0]} classes.")
    d = _embed_dim(net)
    if d is not None and w.shape[1] != d:
        width = getattr(getattr(net.visual, "ln_post", None), "normalized_shape", (None,))[0]
        if ad.head_input in ("embeds", "embeds_raw") and w.shape[1] == width:
            ad.head_input = "penultimate"
            ad.notes.append(f"head reads {width}-d penultimate features (not the {d}-d embedding)")
        else:
            raise OodbenchError(f"{source}: head expects {w.shape[1]}-d inputs but this model's embedding is {d}-d: "
                                "check --model.")


def load_model(model: str = TINY_MODEL, pretrained: str | None = TINY_TAG, ckpt: str | Path | None = None,
               ckpt_format: str = "auto", device: str = "cpu", *, trust_pickle: bool = False,
               wise_alpha: float | None = None, wise_base: str | Path | None = None,
               seed: int = 0, class_token_position: str | None = None) -> ModelBundle:
    """Create ``model`` (an open_clip config name) with ``pretrained`` weights, then ``ckpt``.

    ``pretrained`` is an open_clip tag (downloads on first use, for real users), a local file,
    ``None`` (random init, seeded by ``seed`` so that it is reproducible) or, for
    ``oodbench-tiny``, ``digits`` (trained locally). ``ckpt`` is a local fine-tuned file (or a
    PEFT/HF/CoOp directory) read by a checkpoint adapter (format detected, or ``ckpt_format``).
    A checkpoint that holds the whole model is loaded onto the bare architecture: ``pretrained``
    is then not loaded (nor downloaded); it still sets the preprocessing and the activation
    check. Partial, LoRA and prompt checkpoints apply on top of the ``pretrained`` weights.

    ``trust_pickle`` unpickles checkpoints for real (runs code: only for files you trust);
    without it pickled objects are read with their classes stubbed. ``wise_alpha`` mixes
    weights WiSE-FT style, (1 - a) * base + a * ckpt, where the base is the ``pretrained`` model
    or, if given, the ``wise_base`` checkpoint (e.g. WiSE-FT's zero-shot ``ImageClassifier``,
    whose head then mixes with the fine-tuned head). ``class_token_position`` (``end``,
    ``middle``, ``front``) is CoOp's, for runs whose log does not record it.
    """
    import open_clip

    register_configs()
    if model not in open_clip.list_models():
        raise suggest(model, open_clip.list_models(), "model")
    is_tag = bool(pretrained) and not Path(pretrained).exists() and not (model == TINY_MODEL and pretrained == TINY_TAG)
    if is_tag:
        tags = [t for m, t in open_clip.list_pretrained() if m == model]
        if pretrained not in tags:
            raise suggest(pretrained, tags or ["(none)"], f"pretrained tag for {model}")
    if wise_alpha is not None:
        if ckpt is None:
            raise OodbenchError("--wise-alpha mixes a fine-tuned checkpoint with its base: give --ckpt too.")
        if not math.isfinite(wise_alpha):
            raise OodbenchError(f"--wise-alpha must be a finite number, got {wise_alpha}.")
        if not 0 <= wise_alpha <= 1:
            warn(f"--wise-alpha {wise_alpha:g} is outside [0, 1]: extrapolating between the weights.")
    elif wise_base is not None:
        raise OodbenchError("--wise-base is only used with --wise-alpha.")
    adapted = read = None
    if ckpt is not None:  # read the file first: a whole model needs no pretrained weights
        read = read_checkpoint(Path(ckpt), trust_pickle)
        if not needs_base(*read, ckpt_format):
            adapted = adapt_object(*read, ckpt_format, base=None)
    whole = adapted is not None and not adapted.partial and not adapted.needs_base
    skip_base = bool(pretrained) and whole and (wise_alpha is None or wise_base is not None)
    net, preprocess = _create(model, None if skip_base else pretrained, seed, style=pretrained if skip_base else None)
    info: dict[str, Any] = {}
    if not pretrained:
        info["init"] = f"random (seed {seed})"
    elif skip_base:
        info["base_weights"] = f"{pretrained} not loaded: the checkpoint holds the whole model"
    head: Adapted | None = None
    text_ctx = None
    position = None
    if ckpt is not None:
        source = Path(ckpt).name
        clone = wise_alpha is not None
        base = {k: (v.detach().clone() if clone else v.detach()) for k, v in net.state_dict().items()}
        if adapted is None:
            adapted = adapt_object(*read, ckpt_format, base=base)
        report = load_into(net, adapted, source)
        if not pretrained and (adapted.partial or adapted.needs_base):
            warn(f"{source} ({adapted.format}) applies on top of base weights, but pretrained is None: the base "
                 f"is random (seed {seed}). Give the pretrained tag it was fine-tuned from.")
        info.update({"ckpt_file": adapted.meta.get("file", str(ckpt)), "ckpt_format": adapted.format, "ckpt_notes": list(adapted.notes), "partial": adapted.partial,
                     "keys_loaded": report["loaded"], "keys_kept_from_base": report["kept"],
                     "ckpt_meta": {k: v for k, v in adapted.meta.items() if k != "file"}})
        if adapted.head_weight is not None:
            _check_head(net, adapted, source)
            head = adapted
            info["head"] = {"classes": int(adapted.head_weight.shape[0]), "input": adapted.head_input}
        if adapted.text_ctx is not None:
            text_ctx = adapted.text_ctx
            width = net.token_embedding.weight.shape[1] if hasattr(net, "token_embedding") else None
            if width is not None and text_ctx.shape[-1] != width:
                raise OodbenchError(f"{source}: prompt context width {text_ctx.shape[-1]} does not match this "
                                    f"model's text width {width}: check --model.")
            position, where = read_class_token_position(Path(adapted.meta.get("file", ckpt)), class_token_position)
            info["text_ctx"] = {"n_ctx": int(text_ctx.shape[-2]), "class_specific": text_ctx.ndim == 3,
                                "class_token_position": position, "position_source": where}
        if wise_alpha is not None:
            head = _wise(net, base, adapted, head, wise_alpha, wise_base, trust_pickle, info)
    elif class_token_position is not None:
        raise OodbenchError("--class-token-position is for CoOp prompt checkpoints: give --ckpt too.")
    info["quick_gelu"] = check_quick_gelu(net, model, pretrained, adapted)
    net.eval().to(device)
    extra = {}
    if head is not None:
        extra = {"head_weight": head.head_weight, "head_bias": head.head_bias}
    extra["text_ctx"] = text_ctx
    arch = arch_id(model, **({"class_token_position": position} if position not in (None, "end") else {}))
    return ModelBundle(
        model=net,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(model),
        name=model,
        pretrained=pretrained,
        ckpt=str(ckpt) if ckpt else None,
        fingerprint=fingerprint_state(net, extra, arch=arch),
        head=head,
        info=info,
        text_ctx=text_ctx,
        class_token_position=position or "end",
    )


def _create(model: str, pretrained: str | None, seed: int, style: str | None = None) -> tuple[torch.nn.Module, Any]:
    """open_clip's model and eval preprocess; ``style``: a tag whose preprocessing to use without its weights."""
    import open_clip

    kwargs: dict[str, Any] = {}
    if style and not Path(style).exists():
        cfg = open_clip.get_pretrained_cfg(model, style) or {}
        kwargs = {k: cfg[c] for k, c in (("image_mean", "mean"), ("image_std", "std"),
                                         ("image_interpolation", "interpolation"),
                                         ("image_resize_mode", "resize_mode")) if cfg.get(c)}
    if model == TINY_MODEL and pretrained == TINY_TAG:
        pretrained = str(ensure_tiny())
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # open_clip logs its failures on the root logger before raising them
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if pretrained and str(exc).startswith("Failed to download weights"):
            raise missing_weights(model, pretrained, exc) from None
        raise
    finally:
        root.setLevel(max(level, logging.ERROR))
    return net, preprocess


def missing_weights(model: str, tag: str, exc: BaseException) -> OodbenchError:
    """One line for pretrained weights that are neither cached nor downloadable here."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag) or {}
    hub = str(cfg.get("hf_hub") or "").strip("/")
    if hub:
        from huggingface_hub import constants

        repo = hub.split("/")[0] + "/" + hub.split("/")[1] if hub.count("/") >= 1 else hub
        cache = constants.HF_HUB_CACHE
        what = f"Hugging Face repo {repo}"
        copy = f"copy its {cache}/models--{repo.replace('/', '--')} folder here (or point HF_HUB_CACHE at a copied cache)"
    else:
        cache = str(Path("~/.cache/clip").expanduser())
        what = cfg.get("url") or "its download URL"
        copy = f"copy the downloaded file into {cache}"
    cause = " ".join(str(exc).split(": ", 1)[-1].split())[:120]
    return OodbenchError(
        f"Pretrained weights {model} {tag!r} ({what}) are not in the cache {cache} and could not be downloaded "
        f"({cause}). On a machine with internet run: python -c \"import open_clip; "
        f"open_clip.create_model_and_transforms('{model}', pretrained='{tag}')\", then {copy}; or pass "
        "--pretrained PATH with a local weights file (--pretrained '' for random weights)."
    )


def _wise(net: torch.nn.Module, base: dict[str, torch.Tensor], adapted: Adapted, head: Adapted | None,
          alpha: float, wise_base: str | Path | None, trust_pickle: bool, info: dict[str, Any]) -> Adapted | None:
    """Replace the loaded fine-tuned weights in ``net`` by their WiSE-FT mix with the base."""
    theta1 = {k: v.detach().clone() for k, v in net.state_dict().items()}
    theta0, head0 = base, None
    if wise_base is not None:
        net.load_state_dict(base)
        ad0 = adapt(Path(wise_base), "auto", base=base, trust_pickle=trust_pickle)
        load_into(net, ad0, Path(wise_base).name)
        theta0 = {k: v.detach().clone() for k, v in net.state_dict().items()}
        head0 = ad0 if ad0.head_weight is not None else None
        info["wise_base"] = str(wise_base)
    net.load_state_dict(mix_states(theta0, theta1, alpha))
    info["wise_alpha"] = alpha
    if head is None:
        return None
    if head0 is not None and head0.head_weight.shape == head.head_weight.shape:
        mixed = mix_states({"w": head0.head_weight, "b": _bias(head0)}, {"w": head.head_weight, "b": _bias(head)}, alpha)
        info["wise_head"] = "mixed"
        return Adapted({}, head_weight=mixed["w"], head_bias=mixed["b"], head_input=head.head_input,
                       format=head.format, notes=head.notes + [f"head mixed with alpha {alpha:g}"], meta=head.meta)
    info["wise_head"] = "checkpoint head kept as is (the base has none)"
    return head


def _bias(ad: Adapted) -> torch.Tensor:
    return ad.head_bias if ad.head_bias is not None else torch.zeros(ad.head_weight.shape[0])


def check_device(device: str) -> str:
    """Resolve ``auto`` to cuda when available; refuse cuda when it is not."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise OodbenchError(f"--device {device!r} is not a device oodbench runs on: use auto, cpu, cuda or cuda:N.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OodbenchError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu.")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise OodbenchError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                            f"(cuda:0..cuda:{torch.cuda.device_count() - 1}).")
    return device
