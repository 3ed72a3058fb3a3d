"""The checkpoint-adapter registry and the small helpers every adapter shares.

This module sits below the adapters: ``checkpoints``, ``lora``, ``prompts`` and ``hf_clip``
import it and register into it; ``models/__init__`` imports them all, so that every built-in
format is registered once the package is imported. Imports run one way (adapters -> registry).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import OodbenchError


@dataclass
class Adapted:
    """What an adapter gives back: weights in open_clip names, and a linear head if shipped."""

    state_dict: dict[str, torch.Tensor]
    head_weight: torch.Tensor | None = None  # (C, D)
    head_bias: torch.Tensor | None = None  # (C,)
    head_input: str = "embeds"  # "embeds" (L2-normalised), "embeds_raw" or "penultimate"
    partial: bool = False  # True when the file holds only part of the model (e.g. visual only)
    notes: list[str] = field(default_factory=list)
    format: str = ""
    scope: tuple[str, ...] = ()  # for partial files: key prefixes the file must cover completely
    text_ctx: torch.Tensor | None = None  # CoOp context vectors: (n_ctx, W) or (C, n_ctx, W)
    class_token_position: str = "end"  # CoOp: where the class name sits (end, middle, front)
    quick_gelu: bool | None = None  # activation the weights were trained with, when known
    quick_gelu_reason: str = ""
    quick_gelu_ambiguous: str = ""  # when unknown and it matters: how to choose (warned at load)
    needs_base: bool = False  # the state dict is a delta on pretrained weights (LoRA, prompts)
    meta: dict[str, Any] = field(default_factory=dict)


Adapter = Callable[..., Adapted]
ADAPTERS: dict[str, Adapter] = {}
DETECTORS: list[tuple[str, Callable[[Any], bool]]] = []
BASE_FORMATS: set[str] = set()  # formats that always apply on top of the pretrained weights


def register_adapter(name: str, detect: Callable[[Any], bool] | None = None,
                     needs_base: bool = False) -> Callable[[Adapter], Adapter]:
    """Register ``fn(obj, base=None) -> Adapted`` under ``name``.

    ``detect(obj) -> bool``, if given, is consulted by ``detect_format`` before the built-in
    rules, so a plug-in format can be auto-detected. ``needs_base`` marks formats whose files
    hold a change to pretrained weights (LoRA, prompt contexts), never a whole model.
    """

    def deco(fn: Adapter) -> Adapter:
        if name in ADAPTERS:
            raise ValueError(f"checkpoint adapter {name!r} already registered")
        ADAPTERS[name] = fn
        if detect is not None:
            DETECTORS.append((name, detect))
        if needs_base:
            BASE_FORMATS.add(name)
        return fn

    return deco


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` when every key has it (e.g. ``module.`` after DDP)."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def tensors_of(sd: Any) -> dict[str, torch.Tensor]:
    """The string-keyed tensors of a mapping (other entries dropped)."""
    if not isinstance(sd, dict):
        raise OodbenchError("Checkpoint must be a dict of tensors (or {'state_dict': ...}).")
    return {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
