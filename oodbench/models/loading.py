"""Build an open_clip model from a name + pretrained tag or a local checkpoint."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import OodbenchError, suggest
from .checkpoints import Adapted, adapt, load_into
from .tiny import TINY_MODEL, TINY_TAG, ensure_tiny, register_configs


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

    @property
    def key(self) -> str:
        """Store directory name: model name, weights label and fingerprint prefix."""
        label = Path(self.ckpt).stem if self.ckpt else (self.pretrained or "random")
        return f"{self.name}-{label}-{self.fingerprint[:10]}".replace("/", "_")

    @property
    def label(self) -> str:
        return Path(self.ckpt).stem if self.ckpt else (self.pretrained or "random")


def fingerprint_state(model: torch.nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every tensor in the state dict."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_model(model: str = TINY_MODEL, pretrained: str | None = TINY_TAG, ckpt: str | Path | None = None,
               ckpt_format: str = "auto", device: str = "cpu") -> ModelBundle:
    """Create ``model`` (an open_clip config name) with ``pretrained`` weights, then ``ckpt``.

    ``pretrained`` is an open_clip tag (downloads on first use, for real users) or, for
    ``oodbench-tiny``, ``digits`` (trained locally). ``ckpt`` is a local fine-tuned file read by
    a checkpoint adapter (format detected, or ``ckpt_format``).
    """
    import open_clip

    register_configs()
    if model not in open_clip.list_models():
        raise suggest(model, open_clip.list_models(), "model")
    if model == TINY_MODEL and pretrained == TINY_TAG:
        pretrained_arg: str | None = str(ensure_tiny())
    else:
        pretrained_arg = pretrained
        if pretrained and not Path(pretrained).exists():
            tags = [t for m, t in open_clip.list_pretrained() if m == model]
            if pretrained not in tags:
                raise suggest(pretrained, tags or ["(none)"], f"pretrained tag for {model}")
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained_arg)
    head = None
    if ckpt is not None:
        adapted = adapt(Path(ckpt), ckpt_format)
        load_into(net, adapted, Path(ckpt).name)
        if adapted.head_weight is not None:
            head = adapted
    net.eval().to(device)
    return ModelBundle(
        model=net,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(model),
        name=model,
        pretrained=pretrained,
        ckpt=str(ckpt) if ckpt else None,
        fingerprint=fingerprint_state(net),
        head=head,
    )


def check_device(device: str) -> str:
    """Resolve ``auto`` to cuda when available; refuse cuda when it is not."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OodbenchError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu.")
    return device
