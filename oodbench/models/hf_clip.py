"""A fully fine-tuned Hugging Face ``CLIPModel`` (``save_pretrained`` / HF Trainer directory).

The names map mechanically onto open_clip's ``CLIP`` (checked against transformers 5.x
``modeling_clip``); HF keeps q, k and v apart where open_clip stacks them in ``in_proj``::

    vision_model.embeddings.class_embedding          -> visual.class_embedding
    vision_model.embeddings.patch_embedding.weight   -> visual.conv1.weight
    vision_model.embeddings.position_embedding.weight -> visual.positional_embedding
    vision_model.pre_layrnorm / post_layernorm       -> visual.ln_pre / visual.ln_post
    *.encoder.layers.N.layer_norm1 / layer_norm2     -> *.transformer.resblocks.N.ln_1 / ln_2
    *.encoder.layers.N.self_attn.{q,k,v}_proj        -> *.resblocks.N.attn.in_proj_{weight,bias} (stacked)
    *.encoder.layers.N.self_attn.out_proj            -> *.resblocks.N.attn.out_proj
    *.encoder.layers.N.mlp.fc1 / fc2                 -> *.resblocks.N.mlp.c_fc / c_proj
    text_model.embeddings.token_embedding.weight     -> token_embedding.weight
    text_model.embeddings.position_embedding.weight  -> positional_embedding
    text_model.final_layer_norm                      -> ln_final
    visual_projection.weight / text_projection.weight -> visual.proj / text_projection (transposed)
    logit_scale                                      -> logit_scale

The config's ``hidden_act`` says the activation (``quick_gelu`` for OpenAI CLIP, ``gelu``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import OodbenchError
from .registry import Adapted, register_adapter

_FIXED = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
_SKIP = re.compile(r"^(vision_model|text_model)\.embeddings\.position_ids$")
_LAYER = re.compile(r"^(?P<tower>vision_model|text_model)\.encoder\.layers\.(?P<n>\d+)\.(?P<sub>.+)$")
_SUB = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_QKV = ("q_proj", "k_proj", "v_proj")


def hf_clip_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a HF ``CLIPModel`` state dict to open_clip's ``CLIP`` layout (see the module docstring)."""
    sd = {k.removeprefix("clip."): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for k, v in sd.items():
        if _SKIP.match(k):
            continue
        if k in _FIXED:
            out[_FIXED[k]] = v
            continue
        if k in _TRANSPOSED:
            out[_TRANSPOSED[k]] = v.T.contiguous()
            continue
        m = _LAYER.match(k)
        if m is None:
            unknown.append(k)
            continue
        root = ("visual.transformer.resblocks." if m["tower"] == "vision_model" else "transformer.resblocks.") + m["n"] + "."
        sub, kind = m["sub"].rsplit(".", 1)
        if sub.startswith("self_attn.") and sub.split(".")[1] in _QKV:
            qkv.setdefault(f"{root}attn.in_proj_{kind}", {})[sub.split(".")[1]] = v
        elif sub in _SUB:
            out[f"{root}{_SUB[sub]}.{kind}"] = v
        else:
            unknown.append(k)
    if unknown:
        raise OodbenchError(f"hf_clip: {len(unknown)} tensors have no open_clip counterpart (e.g. "
                            f"{', '.join(unknown[:3])}): only a plain CLIPModel (no extra heads) can be converted.")
    for key, parts in qkv.items():
        if set(parts) != set(_QKV):
            raise OodbenchError(f"hf_clip: {key} needs q_proj, k_proj and v_proj but the file has {', '.join(sorted(parts))}.")
        out[key] = torch.cat([parts[p] for p in _QKV])
    return out


def _activation(cfg: dict[str, Any]) -> tuple[bool | None, str]:
    acts = {str((cfg.get(t) or {}).get("hidden_act", "quick_gelu")) for t in ("text_config", "vision_config")}
    if acts == {"quick_gelu"}:
        return True, "config.json: hidden_act quick_gelu"
    if acts == {"gelu"}:
        return False, "config.json: hidden_act gelu"
    raise OodbenchError(f"hf_clip: config.json gives hidden_act {', '.join(sorted(acts))}: open_clip builds "
                        "CLIP with QuickGELU or nn.GELU (exact) in both towers only.")


@register_adapter("hf_clip")
def hf_clip_adapter(obj: Any, base: dict | None = None) -> Adapted:
    """``{'hf_config': config.json, 'state_dict': model.safetensors}`` of a HF ``CLIPModel``."""
    cfg, sd = obj.get("hf_config") or {}, obj.get("state_dict") or {}
    arch = cfg.get("architectures") or []
    if cfg.get("model_type") not in (None, "clip") or (arch and not any("CLIP" in a for a in arch)):
        raise OodbenchError(f"hf_clip: config.json describes {cfg.get('model_type')!r} {arch}: only CLIPModel "
                            "directories are converted.")
    qg, why = _activation(cfg)
    return Adapted(hf_clip_to_open_clip(sd), format="hf_clip", quick_gelu=qg, quick_gelu_reason=why,
                   notes=["Hugging Face CLIPModel converted to open_clip names"],
                   meta={"architectures": arch, "transformers_version": cfg.get("transformers_version")})
