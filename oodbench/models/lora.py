"""LoRA checkpoints merged into open_clip weights: HF PEFT (for HF CLIP) and CLIP-LoRA.

Both add ``scale * B @ A`` to a linear weight. open_clip keeps q, k and v in one
``attn.in_proj_weight`` of shape (3W, W): q is rows [0:W], k [W:2W], v [2W:3W]. Name mapping
from Hugging Face CLIP::

    vision_model.encoder.layers.N.self_attn.{q,k,v}_proj -> visual.transformer.resblocks.N.attn.in_proj_*
    vision_model.encoder.layers.N.self_attn.out_proj     -> visual.transformer.resblocks.N.attn.out_proj
    vision_model.encoder.layers.N.mlp.fc1 / fc2          -> visual.transformer.resblocks.N.mlp.c_fc / c_proj
    text_model.encoder.layers.N...                       -> transformer.resblocks.N...
    visual_projection (Linear, D x W)                    -> visual.proj (W x D), transposed
    text_projection                                      -> text_projection, transposed
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..errors import OodbenchError
from .registry import Adapted, register_adapter

_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
_HF_MODULE = re.compile(
    r"^(?:.*?\.)?(?P<mod>(?P<tower>vision_model|text_model)\.encoder\.layers\.(?P<layer>\d+)\."
    r"(?P<sub>self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|mlp\.fc1|mlp\.fc2)"
    r"|visual_projection|text_projection)\.(?P<rest>.+)$"
)


class _Target:
    """One open_clip tensor (or a row slice of it) that a LoRA pair or bias updates."""

    def __init__(self, key: str, part: int | None = None, transpose: bool = False) -> None:
        self.key, self.part, self.transpose = key, part, transpose

    def __repr__(self) -> str:  # for error messages
        return self.key + (f"[{'qkv'[self.part]}]" if self.part is not None else "")


def hf_to_open_clip(module: str, kind: str = "weight") -> _Target:
    """Map a HF CLIP linear module path to the open_clip tensor it corresponds to."""
    m = _HF_MODULE.match(module + ".x")
    if m is None:
        raise OodbenchError(f"LoRA module {module!r} has no open_clip counterpart that oodbench can merge.")
    if m.group("mod") == "visual_projection":
        return _Target("visual.proj", transpose=True)
    if m.group("mod") == "text_projection":
        return _Target("text_projection", transpose=True)
    root = ("visual.transformer.resblocks." if m.group("tower") == "vision_model" else "transformer.resblocks.")
    root += m.group("layer") + "."
    sub = m.group("sub").split(".")[-1]
    if sub in _QKV:
        return _Target(f"{root}attn.in_proj_{kind}", _QKV[sub])
    name = {"out_proj": "attn.out_proj", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}[sub]
    return _Target(f"{root}{name}.{kind}")


class _Merger:
    """Accumulates deltas on float32 copies of the touched base tensors."""

    def __init__(self, base: dict[str, torch.Tensor], fmt: str) -> None:
        self.base, self.fmt, self.work = base, fmt, {}

    def _tensor(self, t: _Target) -> torch.Tensor:
        if t.key not in self.base:
            raise OodbenchError(
                f"{self.fmt}: the adapter updates {t.key}, which this model does not have: check --model "
                "(layer count and tower widths must match the model the adapter was trained on)."
            )
        if t.key not in self.work:
            self.work[t.key] = self.base[t.key].detach().float().clone()
        return self.work[t.key]

    def _view(self, t: _Target) -> torch.Tensor:
        w = self._tensor(t)
        if t.part is not None:
            n = w.shape[0] // 3
            w = w[t.part * n:(t.part + 1) * n]
        return w.T if t.transpose else w

    def add(self, t: _Target, delta: torch.Tensor, what: str) -> None:
        view = self._view(t)
        if view.shape != delta.shape:
            raise OodbenchError(
                f"{self.fmt}: {what} gives a {tuple(delta.shape)} update but {t!r} is {tuple(view.shape)}: "
                "check --model."
            )
        view += delta

    def set(self, t: _Target, value: torch.Tensor, what: str) -> None:
        view = self._view(t)
        if view.shape != value.shape:
            raise OodbenchError(f"{self.fmt}: {what} has shape {tuple(value.shape)} but {t!r} is {tuple(view.shape)}.")
        view.copy_(value.float())

    def result(self) -> dict[str, torch.Tensor]:
        out = dict(self.base)
        for k, v in self.work.items():
            out[k] = v.to(self.base[k].dtype)
        return out


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * B @ A`` in float32 (A: r x in, B: out x r)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise OodbenchError(f"LoRA pair with shapes A {tuple(a.shape)}, B {tuple(b.shape)} is not a linear LoRA.")
    return scale * (b.float() @ a.float())


def _pattern_value(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern: regex keys matched at the end of the module name."""
    for pat, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pat})$", module):
            return value
    return default


def _need_base(base: dict | None, fmt: str) -> dict[str, torch.Tensor]:
    if base is None:
        raise OodbenchError(f"{fmt} adapters are merged into base weights: load them through load_model().")
    return base


def _hf_quick_gelu(cfg: dict) -> tuple[bool | None, str]:
    name = str(cfg.get("base_model_name_or_path") or "")
    if name.startswith("openai/"):
        return True, f"PEFT base model {name} (OpenAI CLIP)"
    if name.startswith("laion/"):
        return False, f"PEFT base model {name}"
    return None, ""


@register_adapter("peft_lora", needs_base=True)
def peft_lora_adapter(obj: Any, base: dict[str, torch.Tensor] | None = None) -> Adapted:
    """HF PEFT LoRA on HF CLIP (``adapter_config.json`` + ``adapter_model.*``), merged into open_clip."""
    base = _need_base(base, "peft_lora")
    cfg = obj.get("peft_config") if isinstance(obj, dict) else None
    if cfg is None:
        raise OodbenchError(
            "peft_lora needs adapter_config.json next to the adapter weights (r, lora_alpha, use_rslora): "
            "pass the adapter directory as --ckpt."
        )
    sd = obj["state_dict"]
    if cfg.get("peft_type", "LORA") != "LORA":
        raise OodbenchError(f"PEFT adapter type {cfg.get('peft_type')!r} is not LoRA: only LoRA can be merged.")
    if cfg.get("use_dora"):
        raise OodbenchError("DoRA adapters (use_dora=true) are not supported: only plain LoRA can be merged.")
    r0, alpha0, rs = cfg.get("r", 8), cfg.get("lora_alpha", 8), bool(cfg.get("use_rslora", False))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    biases: dict[str, torch.Tensor] = {}
    unsupported = []
    for key, value in sd.items():
        m = _HF_MODULE.match(key)
        if m is None:
            unsupported.append(key)
            continue
        rest = m.group("rest")
        mod = key[: len(key) - len(rest) - 1]
        part = re.fullmatch(r"lora_(A|B)(?:\.[\w-]+)?\.weight", rest)
        if part:
            pairs.setdefault(mod, {})[part.group(1)] = value
        elif rest in ("bias", "base_layer.bias"):
            biases[mod] = value
        else:
            unsupported.append(key)
    if unsupported:
        raise OodbenchError(
            f"PEFT adapter has {len(unsupported)} tensors oodbench cannot map to open_clip "
            f"(e.g. {', '.join(unsupported[:3])}): only LoRA on q/k/v/out_proj, fc1/fc2 and the projections "
            "of a Hugging Face CLIPModel is supported (not PEFT applied to open_clip's own modules, "
            "modules_to_save, embeddings or DoRA); merge such an adapter and pass the merged state dict."
        )
    if not pairs:
        raise OodbenchError("PEFT adapter holds no lora_A/lora_B weights.")
    merger = _Merger(base, "peft_lora")
    scales = set()
    for mod, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise OodbenchError(f"PEFT adapter: {mod} has lora_{''.join(ab)} but not both lora_A and lora_B.")
        name = re.sub(r"^(base_model\.model\.)+", "", mod)
        r = int(_pattern_value(cfg.get("rank_pattern"), name, ab["A"].shape[0]))
        if r != ab["A"].shape[0]:
            raise OodbenchError(f"PEFT adapter: {mod} has rank {ab['A'].shape[0]} but the config says {r}.")
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), name, alpha0))
        scale = alpha / math.sqrt(r) if rs else alpha / r
        scales.add(round(scale, 6))
        merger.add(hf_to_open_clip(mod), lora_delta(ab["A"], ab["B"], scale), f"LoRA {name}")
    for mod, value in biases.items():
        merger.set(hf_to_open_clip(mod, "bias"), value, f"bias of {mod}")
    qg, why = _hf_quick_gelu(cfg)
    notes = [f"merged {len(pairs)} LoRA pairs (scale {', '.join(f'{s:g}' for s in sorted(scales))}"
             f"{', rsLoRA' if rs else ''})"]
    if biases:
        notes.append(f"replaced {len(biases)} biases")
    meta = {"r": r0, "lora_alpha": alpha0, "use_rslora": rs, "target_modules": cfg.get("target_modules"),
            "base_model_name_or_path": cfg.get("base_model_name_or_path")}
    return Adapted(merger.result(), format="peft_lora", notes=notes, meta=meta,
                   quick_gelu=qg, quick_gelu_reason=why)


# CLIP-LoRA (MaxZanella/CLIP-LoRA, loralib/utils.py at 358f0d7, 2024-10): blocks that get LoRA,
# by "position". Commit e6bf706 (2024-09-12) changed ViT-L/14's table to its 24 blocks; files
# written before it used the ViT-B table with "all" = blocks 0..20 (CLIP_LORA_VISION_LEGACY).
CLIP_LORA_TEXT_POSITIONS = {
    "top1": [11], "top2": [10, 11], "top3": [9, 10, 11], "bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7],
    "up": [8, 9, 10, 11], "half-up": [6, 7, 8, 9, 10, 11], "half-bottom": [0, 1, 2, 3, 4, 5],
    "all": list(range(12)),
}
_B_POSITIONS = {"bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7], "up": [8, 9, 10, 11],
                "half-up": [6, 7, 8, 9, 10, 11], "half-bottom": [0, 1, 2, 3, 4, 5], "all": list(range(12))}
CLIP_LORA_VISION_POSITIONS = {
    "ViT-B/16": {"top": [11], "top3": [9, 10, 11], **_B_POSITIONS},
    "ViT-B/32": dict(_B_POSITIONS),
    "ViT-L/14": {"half-up": list(range(12, 24)), "half-bottom": list(range(12)), "all": list(range(24))},
}
CLIP_LORA_VISION_LEGACY = {"ViT-L/14": {**_B_POSITIONS, "all": list(range(21))}}  # before e6bf706
_CLIP_LORA_PARTS = {"q_proj": ("attn.in_proj_weight", 0), "k_proj": ("attn.in_proj_weight", 1),
                    "v_proj": ("attn.in_proj_weight", 2), "proj": ("attn.out_proj.weight", None)}


def _n_blocks(base: dict[str, torch.Tensor], root: str) -> int:
    pat = re.compile(re.escape(root) + r"(\d+)\.attn\.in_proj_weight$")
    return len([k for k in base if pat.match(k)])


def clip_lora_blocks(base: dict[str, torch.Tensor], encoder: str, position: str,
                     legacy: bool = False) -> list[str]:
    """Block prefixes in CLIP-LoRA's ``layer_i`` order: text blocks first, then vision blocks.

    ``apply_lora`` walks each tower's resblocks and wraps block i when i is in the position's
    index list, so indices beyond the model's depth are simply absent. The vision table is
    chosen by depth (24 blocks: ViT-L/14; ``legacy``: its table before upstream's e6bf706).
    """
    if encoder not in ("text", "vision", "both"):
        raise OodbenchError(f"clip_lora: metadata encoder {encoder!r} is not text, vision or both.")
    blocks = []
    if encoder in ("text", "both"):
        if position not in CLIP_LORA_TEXT_POSITIONS:
            raise OodbenchError(f"clip_lora: unknown text position {position!r} "
                                f"(CLIP-LoRA knows: {', '.join(CLIP_LORA_TEXT_POSITIONS)}).")
        n = _n_blocks(base, "transformer.resblocks.")
        blocks += [f"transformer.resblocks.{i}." for i in range(n) if i in CLIP_LORA_TEXT_POSITIONS[position]]
    if encoder in ("vision", "both"):
        n = _n_blocks(base, "visual.transformer.resblocks.")
        backbone = "ViT-L/14" if n == 24 else "ViT-B/16"
        table = (CLIP_LORA_VISION_LEGACY if legacy else CLIP_LORA_VISION_POSITIONS)[backbone]
        if position not in table:
            raise OodbenchError(f"clip_lora: position {position!r} is not in CLIP-LoRA's {backbone} table "
                                f"(it has: {', '.join(table)}).")
        blocks += [f"visual.transformer.resblocks.{i}." for i in range(n) if i in table[position]]
    return blocks


def _clip_lora_layout(base: dict[str, torch.Tensor], encoder: str, position: str,
                      n_layers: int) -> tuple[list[str], str]:
    """The blocks the file's ``n_layers`` LoRA layers belong to: current table, else the legacy one."""
    try:
        blocks, unknown = clip_lora_blocks(base, encoder, position), None
    except OodbenchError as exc:  # e.g. "bottom": only in ViT-L/14's legacy table
        blocks, unknown = [], exc
    if unknown is None and len(blocks) == n_layers:
        return blocks, ""
    if _n_blocks(base, "visual.transformer.resblocks.") == 24 and encoder != "text":
        try:
            old = clip_lora_blocks(base, encoder, position, legacy=True)
        except OodbenchError:
            old = []
        if len(old) == n_layers:
            return old, "ViT-L/14 layer table of CLIP-LoRA before commit e6bf706 (2024-09)"
    if unknown is not None:
        raise unknown
    n_text = _n_blocks(base, "transformer.resblocks.")
    n_vis = _n_blocks(base, "visual.transformer.resblocks.")
    raise OodbenchError(
        f"clip_lora: the file has {n_layers} LoRA layers, but CLIP-LoRA's tables give {len(blocks)} for "
        f"encoder={encoder!r}, position={position!r} on this model ({n_text} text and {n_vis} vision blocks): "
        "the file was written for another backbone (pass its --model) or by a CLIP-LoRA version whose "
        "position table oodbench does not know."
    )


@register_adapter("clip_lora", needs_base=True)
def clip_lora_adapter(obj: Any, base: dict[str, torch.Tensor] | None = None) -> Adapted:
    """CLIP-LoRA ``save_lora`` files: ``{'weights': {'layer_i': {...}}, 'metadata': {r, alpha, ...}}``.

    Scaling follows CLIP-LoRA's ``LoRALayer``: ``alpha / sqrt(r)`` (its ``alpha / r`` line is
    commented out upstream).
    """
    base = _need_base(base, "clip_lora")
    meta, weights = obj.get("metadata") or {}, obj.get("weights") or {}
    try:
        r, alpha = int(meta["r"]), float(meta["alpha"])
    except (KeyError, TypeError, ValueError):
        raise OodbenchError("clip_lora: metadata must give r and alpha.") from None
    scale = float(meta["scaling"]) if "scaling" in meta else alpha / math.sqrt(r)
    encoder, position = str(meta.get("encoder", "both")), str(meta.get("position", "all"))
    layer_keys = sorted((k for k in weights if re.fullmatch(r"layer_\d+", k)), key=lambda k: int(k[6:]))
    blocks, layout = _clip_lora_layout(base, encoder, position, len(layer_keys))
    merger = _Merger(base, "clip_lora")
    n = 0
    for i, prefix in enumerate(blocks):
        for part, lw in weights[f"layer_{i}"].items():
            if part not in _CLIP_LORA_PARTS:
                raise OodbenchError(f"clip_lora: layer_{i} has unknown part {part!r} (expected q_proj, k_proj, v_proj, proj).")
            key, slot = _CLIP_LORA_PARTS[part]
            merger.add(_Target(prefix + key, slot), lora_delta(lw["w_lora_A"], lw["w_lora_B"], scale),
                       f"layer_{i}.{part}")
            n += 1
    return Adapted(
        merger.result(), format="clip_lora",
        notes=[f"merged {n} LoRA pairs over {len(blocks)} blocks (alpha/sqrt(r) = {scale:g})"]
        + ([f"layers placed by the {layout}"] if layout else []),
        meta={"r": r, "alpha": alpha, "encoder": encoder, "position": position, "params": meta.get("params")},
        quick_gelu=True, quick_gelu_reason="CLIP-LoRA fine-tunes OpenAI CLIP (its bundled `clip` package)",
    )
