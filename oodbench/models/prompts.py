"""Learned prompt contexts (CoOp, LoCoOp): read them, and encode class names with them.

CoOp's prompt learner (KaiyangZhou/CoOp ``trainers/coop.py``, ``PromptLearner.forward``) stores
``ctx`` (n_ctx, W) — or (C, n_ctx, W) with class-specific contexts — and builds class c from
the token embeddings of the placeholder prompt ``"X X ... X {c}."``: ``[SOS]`` (prefix), the
context, then the suffix (the name's tokens, ``.``, ``[EOS]``, padding). Its
``CLASS_TOKEN_POSITION`` moves the name: ``end`` ``[SOS] ctx name . [EOS]``; ``middle``
``[SOS] ctx[:n/2] name ctx[n/2:] . [EOS]``; ``front`` ``[SOS] name ctx . [EOS]``. The sequence
length, and so the [EOS] position the text tower pools at, is the same in all three.
The position is read from the Dassl log CoOp writes next to the run (``log.txt``, which prints
the whole config); where there is none it must be given. CLIP's weights do not change, so the
adapter returns no state dict, only ``text_ctx``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import OodbenchError
from .registry import Adapted, register_adapter, strip_prefix


@register_adapter("coop", needs_base=True)
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


POSITIONS = ("end", "middle", "front")
_CTP = re.compile(r"^\s*CLASS_TOKEN_POSITION:\s*(\S+)\s*$", re.MULTILINE)


def run_dir(ckpt_file: Path) -> Path:
    """The Dassl output dir of ``<run>/prompt_learner/model.pth.tar-N``."""
    return ckpt_file.parent.parent if ckpt_file.parent.name == "prompt_learner" else ckpt_file.parent


def class_token_position(ckpt_file: Path, given: str | None = None) -> tuple[str, str]:
    """CoOp's class-token position for a run: from its Dassl ``log.txt*`` or ``given``; never guessed.

    Returns ``(position, where it came from)``. Dassl's ``setup_logger`` writes ``log.txt`` (a
    second run in the same dir: ``log.txt-<time>``) and CoOp's ``train.py`` prints the config
    there, including ``TRAINER.COOP.CLASS_TOKEN_POSITION`` (LoCoOp: ``TRAINER.LOCOOP``).
    """
    if given is not None and given not in POSITIONS:
        raise OodbenchError(f"--class-token-position must be one of {', '.join(POSITIONS)}, got {given!r}.")
    run = run_dir(ckpt_file)
    found: dict[str, str] = {}
    for log in sorted(run.glob("log.txt*")):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        for value in _CTP.findall(text):
            found.setdefault(value, log.name)
    if len(found) > 1:
        raise OodbenchError(f"{run}: the run's logs give several CLASS_TOKEN_POSITION values "
                            f"({', '.join(f'{v} in {f}' for v, f in found.items())}): keep the log of the run "
                            "that wrote the checkpoint.")
    if found:
        (value, log), = found.items()
        if value not in POSITIONS:
            raise OodbenchError(f"{run / log}: CLASS_TOKEN_POSITION {value!r} is not end, middle or front.")
        if given is not None and given != value:
            raise OodbenchError(f"--class-token-position {given} contradicts {run / log}, which says {value}.")
        return value, str(run / log)
    if given is None:
        raise OodbenchError(
            f"CoOp checkpoint {ckpt_file}: the run's class-token position is not recorded (no Dassl log.txt with "
            f"CLASS_TOKEN_POSITION in {run}): pass --class-token-position end, middle or front "
            "(TRAINER.COOP.CLASS_TOKEN_POSITION of the run; CoOp's default is end)."
        )
    return given, "given"


def _placeholder_id(tokenizer) -> int:
    t = tokenizer(["X"])[0].tolist()
    ids = [i for i in t if i != 0]
    if len(ids) != 3:
        raise OodbenchError("encode_with_context needs open_clip's CLIP BPE tokenizer ([SOS] x [EOS]).")
    return ids[1]


def _name_lengths(tokenizer, names: list[str]) -> list[int]:
    """BPE token count of each name (CoOp's ``len(_tokenizer.encode(name))``): without SOS/EOS."""
    return [int((tokenizer([n])[0] != 0).sum()) - 2 for n in names]


def _place(emb: torch.Tensor, ctx: torch.Tensor, n_ctx: int, name_lens: list[int], position: str) -> torch.Tensor:
    """CoOp's prompt assembly: (B, L, W) token embeddings, (B, n_ctx, W) context -> (B, L, W)."""
    prefix, suffix = emb[:, :1], emb[:, 1 + n_ctx:]
    if position == "end":
        return torch.cat([prefix, ctx, suffix], dim=1)
    rows = []
    half = n_ctx // 2
    for i, n in enumerate(name_lens):
        name, rest = suffix[i:i + 1, :n], suffix[i:i + 1, n:]
        c = ctx[i:i + 1]
        parts = [prefix[i:i + 1], c[:, :half], name, c[:, half:], rest] if position == "middle" else \
            [prefix[i:i + 1], name, c, rest]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows)


@torch.no_grad()
def encode_with_context(model, tokenizer, classnames: list[str], ctx: torch.Tensor,
                        normalize: bool = False, batch_size: int = 256, position: str = "end") -> torch.Tensor:
    """Text embeddings (C, D) of ``classnames`` with CoOp context vectors ``ctx`` as the prompt.

    Follows open_clip's ``CLIP.encode_text`` on CoOp's prompt (see the module docstring):
    ``ctx`` (n_ctx, W) shared or (C, n_ctx, W) per class, placed as ``position`` (end, middle,
    front) says. Class names have ``_`` replaced by spaces, as CoOp does.
    """
    from open_clip.transformer import text_global_pool

    if not hasattr(model, "token_embedding") or not hasattr(model, "transformer"):
        raise OodbenchError("Learned prompt contexts need an open_clip CLIP with its own text transformer.")
    if position not in POSITIONS:
        raise OodbenchError(f"class-token position must be one of {', '.join(POSITIONS)}, got {position!r}.")
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
        lens = _name_lengths(tokenizer, names[s:s + batch_size]) if position != "end" else []
        x = _place(emb, c, n_ctx, lens, position)
        x = x + model.positional_embedding.to(cast)
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
        out.append(x)
    emb = torch.cat(out).float()
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb
