"""Learned prompt contexts (CoOp, LoCoOp): read them, and encode class names with them.

CoOp's prompt learner stores ``ctx`` (n_ctx, W) — or (C, n_ctx, W) with class-specific
contexts — and encodes class c as ``[SOS] ctx_1 ... ctx_n <tokens of c> . [EOS]``: the token
embeddings of the placeholder prompt ``"X X ... X {c}."`` with the X embeddings replaced by ctx.
The weights of CLIP do not change, so the adapter returns no state dict, only ``text_ctx``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import OodbenchError
from .checkpoints import Adapted, register_adapter, strip_prefix


@register_adapter("coop")
def coop_adapter(obj: Any, base: dict | None = None) -> Adapted:
    """CoOp / LoCoOp ``prompt_learner/model.pth.tar-N``: ``{'state_dict': {'ctx', ...}, 'epoch'}``."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict):
        raise OodbenchError("CoOp checkpoint must be {'state_dict': {'ctx': ...}}.")
    sd = strip_prefix({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, "module.")
    sd = {k.removeprefix("prompt_learner."): v for k, v in sd.items()}
    if any(k.startswith("meta_net.") for k in sd):
        raise OodbenchError(
            "This prompt learner has a meta_net (CoCoOp): its prompts depend on each image and cannot be "
            "stored as one text bank; only CoOp-style static contexts are supported."
        )
    ctx = sd.get("ctx")
    if ctx is None:
        raise OodbenchError(f"CoOp checkpoint has no 'ctx' tensor (keys: {', '.join(list(sd)[:5])}).")
    if ctx.ndim not in (2, 3):
        raise OodbenchError(f"CoOp ctx has shape {tuple(ctx.shape)}: expected (n_ctx, dim) or (classes, n_ctx, dim).")
    meta: dict[str, Any] = {"n_ctx": int(ctx.shape[-2]), "class_specific": ctx.ndim == 3}
    if isinstance(sd.get("token_prefix"), torch.Tensor):
        meta["n_classes_trained"] = int(sd["token_prefix"].shape[0])
    if isinstance(obj, dict) and isinstance(obj.get("epoch"), int):
        meta["epoch"] = obj["epoch"]
    notes = [f"learned text context: {meta['n_ctx']} tokens"
             + (f", class-specific for {ctx.shape[0]} classes" if ctx.ndim == 3 else "")
             + "; image and text weights unchanged"]
    return Adapted({}, partial=True, format="coop", text_ctx=ctx.detach().float(), notes=notes, meta=meta,
                   quick_gelu=True, quick_gelu_reason="CoOp/LoCoOp learn prompts for OpenAI CLIP (the `clip` package)")


def _placeholder_id(tokenizer) -> int:
    t = tokenizer(["X"])[0].tolist()
    ids = [i for i in t if i != 0]
    if len(ids) != 3:
        raise OodbenchError("encode_with_context needs open_clip's CLIP BPE tokenizer ([SOS] x [EOS]).")
    return ids[1]


@torch.no_grad()
def encode_with_context(model, tokenizer, classnames: list[str], ctx: torch.Tensor,
                        normalize: bool = False, batch_size: int = 256) -> torch.Tensor:
    """Text embeddings (C, D) of ``classnames`` with CoOp context vectors ``ctx`` as the prompt.

    Follows open_clip's ``CLIP.encode_text`` with the token embeddings of "X X ... X {name}."
    at positions 1..n_ctx replaced by ``ctx`` ((n_ctx, W) shared, or (C, n_ctx, W) per class).
    Class names have ``_`` replaced by spaces, as CoOp does.
    """
    from open_clip.transformer import text_global_pool

    if not hasattr(model, "token_embedding") or not hasattr(model, "transformer"):
        raise OodbenchError("Learned prompt contexts need an open_clip CLIP with its own text transformer.")
    if ctx.ndim not in (2, 3):
        raise OodbenchError(f"ctx has shape {tuple(ctx.shape)}: expected (n_ctx, dim) or (classes, n_ctx, dim).")
    width = model.token_embedding.weight.shape[1]
    if ctx.shape[-1] != width:
        raise OodbenchError(f"ctx vectors have width {ctx.shape[-1]} but this model's text width is {width}: "
                            "the prompt learner was trained for another model.")
    if ctx.ndim == 3 and ctx.shape[0] != len(classnames):
        raise OodbenchError(f"Class-specific ctx is for {ctx.shape[0]} classes but {len(classnames)} names were given.")
    n_ctx = ctx.shape[-2]
    x_id = _placeholder_id(tokenizer)
    names = [c.replace("_", " ") for c in classnames]
    prompts = [" ".join(["X"] * n_ctx) + " " + n + "." for n in names]
    device = model.token_embedding.weight.device
    cast = model.transformer.get_cast_dtype()
    out = []
    for s in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[s:s + batch_size]).to(device)
        if not bool((tokens[:, 1:1 + n_ctx] == x_id).all()):
            raise OodbenchError("The tokenizer did not place the context placeholders at positions 1..n_ctx.")
        emb = model.token_embedding(tokens).to(cast)
        c = ctx.to(device=device, dtype=cast)
        c = c.unsqueeze(0).expand(tokens.shape[0], -1, -1) if c.ndim == 2 else c[s:s + batch_size]
        x = torch.cat([emb[:, :1], c, emb[:, 1 + n_ctx:]], dim=1)
        x = x + model.positional_embedding.to(cast)
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
        out.append(x)
    emb = torch.cat(out).float()
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb
