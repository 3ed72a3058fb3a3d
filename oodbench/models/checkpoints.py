"""Checkpoint formats: each adapter turns a file into an open_clip state dict (+ optional head).

Loading is safe by default: tensors only (``torch.load(weights_only=True)``) or safetensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import OodbenchError, suggest


@dataclass
class Adapted:
    """What an adapter gives back: weights in open_clip names, and a linear head if shipped."""

    state_dict: dict[str, torch.Tensor]
    head_weight: torch.Tensor | None = None  # (C, D)
    head_bias: torch.Tensor | None = None  # (C,)
    head_input: str = "embeds"
    partial: bool = False  # True when the file holds only part of the model (e.g. visual only)
    notes: list[str] = field(default_factory=list)


Adapter = Callable[[dict[str, torch.Tensor]], Adapted]
ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str) -> Callable[[Adapter], Adapter]:
    def deco(fn: Adapter) -> Adapter:
        if name in ADAPTERS:
            raise ValueError(f"checkpoint adapter {name!r} already registered")
        ADAPTERS[name] = fn
        return fn

    return deco


def read_tensors(path: Path) -> dict:
    """Read a checkpoint file without executing code: safetensors or a weights-only pickle."""
    if not path.exists():
        raise OodbenchError(f"Checkpoint {str(path)!r} does not exist: check the --ckpt path.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise OodbenchError(
            f"Checkpoint {path.name} is not a plain tensor file ({type(exc).__name__}): it may be a pickled "
            "Python object; oodbench only loads such files when you pass --trust-pickle."
        ) from None


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


@register_adapter("open_clip")
def open_clip_adapter(obj: dict) -> Adapted:
    """open_clip state dicts and training checkpoints (``{'state_dict': ..., 'epoch': ...}``)."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict):
        raise OodbenchError("open_clip checkpoint must be a dict of tensors (or {'state_dict': ...}).")
    sd = strip_prefix(sd, "module.")
    return Adapted({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)})


def detect_format(obj: dict) -> str:
    """Guess the adapter from the keys of a loaded checkpoint."""
    return "open_clip"


def adapt(path: Path, fmt: str = "auto") -> Adapted:
    obj = read_tensors(path)
    if fmt == "auto":
        fmt = detect_format(obj)
    if fmt not in ADAPTERS:
        raise suggest(fmt, ADAPTERS, "checkpoint format")
    return ADAPTERS[fmt](obj)


def load_into(model: torch.nn.Module, adapted: Adapted, source: str) -> None:
    """Load adapted weights strictly; on mismatch say how many keys are missing/unexpected."""
    own = model.state_dict()
    sd = adapted.state_dict
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if adapted.partial:
        missing = []
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} with wrong shape (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})")
        raise OodbenchError(
            f"Checkpoint {source} does not fit this architecture: {'; '.join(parts)} keys. "
            "Check --model (and -quickgelu for OpenAI weights) or --ckpt-format."
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=not adapted.partial)
