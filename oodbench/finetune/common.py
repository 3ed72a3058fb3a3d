"""Helpers shared by the recipes, the trainer and WiSE-FT: heads, embeddings, atomic saves."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import fingerprint_state
from .data import ImageSet


def amp_dtype(device: str, precision: str) -> torch.dtype | None:
    """The autocast dtype: None on CPU / fp32; on CUDA bf16 where supported (auto) else fp16."""
    if not device.startswith("cuda") or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def class_text_embeddings(model: nn.Module, tokens: torch.Tensor, n_templates: int, n_classes: int) -> torch.Tensor:
    """(C, D) unit-norm template-ensemble class embeddings (per-template normalise, mean, renormalise),
    as oodbench's zero-shot head (``TextBank.name_embeds('ensemble')``)."""
    t = F.normalize(model.encode_text(tokens).float(), dim=-1).view(n_templates, n_classes, -1)
    return F.normalize(t.mean(0), dim=-1)


def zero_shot_head(model: nn.Module, tokens: torch.Tensor, n_templates: int, n_classes: int) -> torch.Tensor:
    """logit_scale x class text embeddings: oodbench's zero-shot head as a (C, D) weight."""
    with torch.no_grad():
        return model.logit_scale.exp().float() * class_text_embeddings(model, tokens, n_templates, n_classes)


@torch.no_grad()
def embed_images(model: nn.Module, data: ImageSet, device: str, amp: torch.dtype | None,
                 batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image embeddings (N, D) float32 on the CPU, and the labels."""
    model.eval()
    out, labels = [], []
    for x, y in data.all(batch_size):
        with torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
            out.append(F.normalize(model.encode_image(x.to(device)).float(), dim=-1).cpu())
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


def _state_fingerprint(sd: dict[str, torch.Tensor], head_w: torch.Tensor | None, head_b: torch.Tensor | None,
                       model_name: str) -> str:
    """The fingerprint load_model() computes for these weights + head on ``model_name`` (see fingerprint_state)."""
    from ..models.loading import arch_id

    shim = types.SimpleNamespace(state_dict=lambda: sd)
    extra = {"text_ctx": None}
    if head_w is not None:
        extra = {"head_weight": head_w.float(), "head_bias": head_b.float() if head_b is not None else None,
                 "text_ctx": None}
    return fingerprint_state(shim, extra, arch=arch_id(model_name))


def _save_atomic(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary name unique to this process, then renamed into place."""
    from ..fsutil import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_checkpoint_file(path: str | Path, fix: str = "write it again") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; an unreadable file is one line.

    Raises:
        OodbenchError: the file is missing, empty, truncated or not a torch checkpoint.
    """
    import pickle

    from ..errors import OodbenchError

    path = Path(path)
    if not path.is_file():
        raise OodbenchError(f"{path} does not exist: {fix}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise OodbenchError(f"{path} is not a readable checkpoint ({reason}): it is truncated or damaged; "
                            f"{fix}.") from None


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``oodbench`` metadata entry of a checkpoint written by :func:`finetune` (or {})."""
    obj = load_checkpoint_file(path)
    return dict(obj.get("oodbench", {})) if isinstance(obj, dict) else {}
