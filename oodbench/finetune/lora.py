"""LoRA on open_clip's attention projections, as ``torch.nn.utils.parametrize`` parametrisations.

open_clip's ``ResidualAttentionBlock`` uses ``nn.MultiheadAttention``, which keeps q, k and v in
one fused ``in_proj_weight`` of shape (3W, W): q is rows [0:W], k [W:2W], v [2W:3W]; the output
projection is ``out_proj.weight`` (W, W). LoRA (Hu et al., ICLR 2022) adds ``scale * B @ A``
(A: r x W, B: W x r, B initialised to zero, scale = alpha / r) to each chosen weight; for the
fused weight each of q, k, v has its own (A, B) pair that updates its row slice only. Because
``nn.MultiheadAttention`` reads ``self.in_proj_weight`` / ``self.out_proj.weight`` on every call,
a parametrisation of those attributes is seen by every code path (including the fast path).

Saving: :func:`merged_state_dict` is a plain open_clip state dict (W + scale * B @ A, computed
exactly as the forward computes it, so the merged model gives the same outputs);
:func:`save_adapter` writes the unmerged pairs in CLIP-LoRA's file layout (``weights`` /
``metadata``; Zanella & Ben Ayed, CVPRW 2024), which ``oodbench extract --ckpt`` merges onto the
base weights with the ``clip_lora`` adapter (we store ``scaling`` explicitly, so its own
alpha/sqrt(r) convention does not apply); :func:`load_adapter` re-applies such a file as live
(unmerged) LoRA modules.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import OodbenchError

TARGETS = ("q", "k", "v", "out")
TOWERS = ("visual", "text", "both")
_ROOTS = {"text": "transformer.resblocks.", "visual": "visual.transformer.resblocks."}
# CLIP-LoRA part names: q_proj/k_proj/v_proj -> rows of in_proj_weight, proj -> out_proj.weight
_PART_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "proj"}
_TARGET_OF = {v: k for k, v in _PART_NAMES.items()}


class LoRAPair(nn.Module):
    """One low-rank update ``scale * B @ A`` of an (out, in) weight."""

    def __init__(self, d_out: int, d_in: int, rank: int, scale: float, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        a = torch.empty(rank, d_in, dtype=dtype)
        # PEFT / loralib: A ~ kaiming_uniform(a=sqrt(5)) (= U(-1/sqrt(in), 1/sqrt(in))), B = 0
        bound = 1 / math.sqrt(d_in)
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, dtype=dtype))
        self.scale = float(scale)

    def delta(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A)


class FusedQKVLoRA(nn.Module):
    """Parametrisation of ``in_proj_weight`` (3W, W): W + [dq; dk; dv] with a pair per chosen slice."""

    def __init__(self, width: int, parts: tuple[str, ...], rank: int, scale: float,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.width, self.parts = width, tuple(p for p in ("q", "k", "v") if p in parts)
        self.pairs = nn.ModuleDict({p: LoRAPair(width, width, rank, scale, generator, dtype) for p in self.parts})

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        zeros = None
        rows = []
        for p in ("q", "k", "v"):
            if p in self.pairs:
                rows.append(self.pairs[p].delta().to(w.dtype))
            else:
                zeros = zeros if zeros is not None else w.new_zeros(self.width, w.shape[1])
                rows.append(zeros)
        return w + torch.cat(rows, 0)


class LinearLoRA(nn.Module):
    """Parametrisation of a linear weight (out, in): W + scale * B @ A."""

    def __init__(self, d_out: int, d_in: int, rank: int, scale: float,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.pair = LoRAPair(d_out, d_in, rank, scale, generator, dtype)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.pair.delta().to(w.dtype)


def _towers(towers: str) -> list[str]:
    if towers not in TOWERS:
        raise OodbenchError(f"LoRA towers must be one of {', '.join(TOWERS)}, got {towers!r}.")
    return ["text", "visual"] if towers == "both" else [towers]


def attention_blocks(model: nn.Module, towers: str) -> list[tuple[str, nn.MultiheadAttention]]:
    """(state-dict prefix of the block, its nn.MultiheadAttention) in CLIP-LoRA order: text, then vision."""
    out = []
    for tower in _towers(towers):
        root = model.visual.transformer if tower == "visual" else getattr(model, "transformer", None)
        blocks = getattr(root, "resblocks", None)
        if blocks is None:
            raise OodbenchError(f"LoRA on the {tower} tower needs an open_clip transformer tower (resblocks); "
                                f"{type(root).__name__} has none.")
        for i, blk in enumerate(blocks):
            attn = getattr(blk, "attn", None)
            if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                raise OodbenchError(f"{_ROOTS[tower]}{i}.attn is not an nn.MultiheadAttention with a fused "
                                    "in_proj_weight: this LoRA implementation supports open_clip's standard blocks.")
            out.append((f"{_ROOTS[tower]}{i}.", attn))
    return out


def apply_lora(model: nn.Module, rank: int = 4, alpha: float = 8.0, towers: str = "both",
               targets: tuple[str, ...] = TARGETS, seed: int = 0) -> list[str]:
    """Add LoRA parametrisations to the attention projections; freeze everything else.

    Returns the block prefixes that got LoRA. The base weights stay (frozen) under
    ``parametrizations.<name>.original``; only ``lora_A``/``lora_B`` require grad.
    """
    if rank < 1:
        raise OodbenchError(f"LoRA rank must be ≥ 1, got {rank}.")
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise OodbenchError(f"LoRA targets must be a non-empty subset of {', '.join(TARGETS)}, got {targets!r}.")
    if has_lora(model):
        raise OodbenchError("This model already has LoRA modules.")
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    scale = alpha / rank
    blocks = attention_blocks(model, towers)
    for _, attn in blocks:
        w = attn.embed_dim
        dtype = attn.in_proj_weight.dtype
        dev = attn.in_proj_weight.device
        qkv = tuple(t for t in targets if t in ("q", "k", "v"))
        if qkv:
            parametrize.register_parametrization(attn, "in_proj_weight",
                                                 FusedQKVLoRA(w, qkv, rank, scale, gen, dtype).to(dev))
        if "out" in targets:
            parametrize.register_parametrization(attn.out_proj, "weight",
                                                 LinearLoRA(w, w, rank, scale, gen, dtype).to(dev))
    for p in lora_parameters(model):
        p.requires_grad_(True)
    return [b for b, _ in blocks]


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, (FusedQKVLoRA, LinearLoRA)) for m in model.modules())


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRAPair) for p in (m.lora_A, m.lora_B)]


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain open_clip state dict with every LoRA update merged (W + scale * B @ A)."""
    sd = model.state_dict()
    out = {k: v.detach().clone() for k, v in sd.items() if ".parametrizations." not in k}
    for name, module in model.named_modules():
        plist = getattr(module, "parametrizations", None)
        if plist is None or not parametrize.is_parametrized(module):
            continue
        for attr in plist:
            key = f"{name}.{attr}" if name else attr
            with torch.no_grad():
                out[key] = getattr(module, attr).detach().clone()
    return out


def _pairs(model: nn.Module, towers: str) -> dict[str, dict[str, LoRAPair]]:
    """Block prefix -> {target: LoRAPair} for every LoRA-equipped attention block."""
    found: dict[str, dict[str, LoRAPair]] = {}
    for prefix, attn in attention_blocks(model, towers):
        parts: dict[str, LoRAPair] = {}
        if parametrize.is_parametrized(attn, "in_proj_weight"):
            for p in attn.parametrizations.in_proj_weight:
                if isinstance(p, FusedQKVLoRA):
                    parts.update({k: v for k, v in p.pairs.items()})
        if parametrize.is_parametrized(attn.out_proj, "weight"):
            for p in attn.out_proj.parametrizations.weight:
                if isinstance(p, LinearLoRA):
                    parts["out"] = p.pair
        if parts:
            found[prefix] = parts
    return found


def save_adapter(model: nn.Module, path: str | Path, *, rank: int, alpha: float, towers: str,
                 meta: dict[str, Any] | None = None, quick_gelu: bool | None = None) -> Path:
    """Write the unmerged LoRA pairs in CLIP-LoRA's layout (``weights``/``metadata``).

    ``layer_i`` numbers the LoRA blocks text first, then vision, as CLIP-LoRA does; each holds
    ``{q_proj|k_proj|v_proj|proj: {w_lora_A, w_lora_B}}``. ``metadata.scaling`` is the scale used
    here (alpha / r); ``metadata.blocks`` names the open_clip blocks explicitly.
    """
    pairs = _pairs(model, towers)
    if not pairs:
        raise OodbenchError("The model has no LoRA modules to save.")
    weights = {}
    for i, parts in enumerate(pairs.values()):
        weights[f"layer_{i}"] = {_PART_NAMES[t]: {"w_lora_A": p.lora_A.detach().cpu().clone(),
                                                  "w_lora_B": p.lora_B.detach().cpu().clone()}
                                 for t, p in parts.items()}
    scales = {p.scale for parts in pairs.values() for p in parts.values()}
    metadata = {"r": int(rank), "alpha": float(alpha), "scaling": float(scales.pop()),
                "encoder": {"visual": "vision", "text": "text", "both": "both"}[towers], "position": "all",
                "params": sorted({_PART_NAMES[t][0] for parts in pairs.values() for t in parts}),
                "blocks": list(pairs), **(meta or {})}
    obj: dict[str, Any] = {"weights": weights, "metadata": metadata}
    if quick_gelu is not None:  # the activation the base was built with (QuickGELU or nn.GELU)
        obj["quick_gelu"] = bool(quick_gelu)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Apply a file written by :func:`save_adapter` to ``model`` as live (unmerged) LoRA modules."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "weights" not in obj or "metadata" not in obj:
        raise OodbenchError(f"{path} is not a LoRA adapter file (weights + metadata).")
    meta, weights = obj["metadata"], obj["weights"]
    rank, alpha = int(meta["r"]), float(meta["alpha"])
    towers = {"vision": "visual", "text": "text", "both": "both"}[meta.get("encoder", "both")]
    names = {k for lw in weights.values() for k in lw}
    targets = tuple(t for t in TARGETS if _PART_NAMES[t] in names)
    apply_lora(model, rank, alpha, towers, targets)
    pairs = _pairs(model, towers)
    blocks = meta.get("blocks") or list(pairs)
    if list(pairs) != list(blocks):
        raise OodbenchError(f"{path}: adapter blocks {blocks} do not match this model's {list(pairs)}.")
    scaling = float(meta.get("scaling", alpha / rank))
    with torch.no_grad():
        for i, prefix in enumerate(blocks):
            for part, lw in weights[f"layer_{i}"].items():
                pair = pairs[prefix][_TARGET_OF[part]]
                pair.lora_A.copy_(lw["w_lora_A"])
                pair.lora_B.copy_(lw["w_lora_B"])
                pair.scale = scaling
    return model
