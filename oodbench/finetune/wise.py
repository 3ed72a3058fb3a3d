"""WiSE-FT (Wortsman et al., CVPR 2022): weight-space ensembles of a fine-tuned model and its base.

``θ(α) = (1 − α) θ0 + α θ1`` over every floating-point tensor of the open_clip weights
(:func:`oodbench.models.checkpoints.mix_states`: α = 0 and 1 give the endpoints bit for bit).
The linear head is kept as it is in the fine-tuned file (``head="keep"``, what
``load_model(ckpt, wise_alpha=α)`` does when the base has no head) or mixed with the head the
run started from (``head="mix"``: the zero-shot text head for FT, the LP head for LP-FT, stored
as ``head_init`` in checkpoints written by :func:`oodbench.finetune.finetune`), which is the
WiSE-FT paper's recipe: there θ0 includes the zero-shot classifier, so α = 0 is the zero-shot
model exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..console import info, warn
from ..errors import OodbenchError
from ..models import load_model
from ..models.checkpoints import adapt, mix_states
from .common import _jsonable, _save_atomic, _state_fingerprint

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def wise_path(ckpt: str | Path, alpha: float, out_dir: str | Path | None = None) -> Path:
    ckpt = Path(ckpt)
    stem = ckpt.name[: -len(ckpt.suffix)] if ckpt.suffix else ckpt.name
    return Path(out_dir or ckpt.parent) / f"{stem}-wise{alpha:g}.pt"


def wise_mix(ckpt: str | Path, alphas: Sequence[float] = DEFAULT_ALPHAS, out_dir: str | Path | None = None, *,
             head: str = "keep", model: str | None = None, pretrained: str | None = "auto",
             seed: int | None = None, trust_pickle: bool = False) -> list[Path]:
    """Write ``<stem>-wise<α>.pt`` for every α: the WiSE-FT mix of ``ckpt`` with its base model.

    The base is read from the checkpoint's ``oodbench`` metadata (model, pretrained tag, init
    seed; its fingerprint is checked), or from ``model``/``pretrained`` for other files (any
    format the checkpoint adapters read). Files are written in the fine-tuned file's layout:
    ``wiseft`` (state dict + ``classification_head``) when it has a head, else a plain open_clip
    state dict, each with an ``oodbench`` entry recording ``wise_alpha``.
    """
    if head not in ("keep", "mix"):
        raise OodbenchError(f"WiSE-FT head must be 'keep' or 'mix', got {head!r}.")
    ckpt = Path(ckpt)
    obj = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.is_file() else {}
    meta = dict(obj.get("oodbench", {})) if isinstance(obj, dict) else {}
    model = model or meta.get("model")
    if pretrained == "auto":
        pretrained = meta.get("pretrained") if meta else None
        if not meta and model is None:
            raise OodbenchError(f"{ckpt.name} was not written by oodbench finetune: give --model and --pretrained "
                                "of the base it was fine-tuned from.")
    if model is None:
        raise OodbenchError(f"{ckpt.name}: give --model (the base model it was fine-tuned from).")
    seed = int(meta.get("init_seed", 0)) if seed is None else seed
    bundle = load_model(model, pretrained, seed=seed)
    if meta.get("base_fingerprint") and bundle.fingerprint != meta["base_fingerprint"]:
        raise OodbenchError(f"{ckpt.name} was fine-tuned from a base with fingerprint {meta['base_fingerprint'][:12]}, "
                            f"but {model} / {pretrained} is {bundle.fingerprint[:12]}: WiSE-FT needs the same base.")
    theta0 = {k: v.detach().cpu() for k, v in bundle.model.state_dict().items()}
    ad = adapt(ckpt, "auto", base=theta0, trust_pickle=trust_pickle)
    theta1 = dict(theta0) if ad.partial else {}
    theta1.update({k: v.detach().cpu() for k, v in ad.state_dict.items()})
    unknown = [k for k in theta1 if k not in theta0]
    if unknown:
        raise OodbenchError(f"{ckpt.name} has {len(unknown)} tensors the base model lacks (e.g. {unknown[0]}): "
                            "check --model.")
    if ad.head_weight is not None and ad.head_input != "embeds":
        raise OodbenchError(f"{ckpt.name}: its head reads {ad.head_input} features; WiSE-FT files are written in the "
                            "wiseft layout, whose head reads L2-normalised embeddings.")
    h1 = (ad.head_weight, ad.head_bias if ad.head_bias is not None else None)
    if h1[0] is not None and h1[1] is None:
        h1 = (h1[0], torch.zeros(h1[0].shape[0]))
    h0 = None
    if head == "mix" and h1[0] is not None:
        init = obj.get("head_init") if isinstance(obj, dict) else None
        if isinstance(init, dict) and init.get("weight") is not None and init["weight"].shape == h1[0].shape:
            h0 = (init["weight"].float(), init["bias"].float())
        else:
            warn(f"{ckpt.name} records no initial head: its head is kept as is (head='keep').")
    paths = []
    for alpha in alphas:
        alpha = float(alpha)
        if not math.isfinite(alpha):
            raise OodbenchError(f"WiSE-FT alpha must be finite, got {alpha}.")
        sd = mix_states(theta0, theta1, alpha)
        w = b = None
        if h1[0] is not None:
            if h0 is not None:
                mixed = mix_states({"w": h0[0], "b": h0[1]}, {"w": h1[0].float(), "b": h1[1].float()}, alpha)
                w, b = mixed["w"], mixed["b"]
            else:
                w, b = h1[0].float(), h1[1].float()
        fp = _state_fingerprint(sd, w, b, model)
        state = dict(sd)
        if w is not None:
            state["classification_head.weight"], state["classification_head.bias"] = w, b
        out_meta = _jsonable({**meta, "model": model, "pretrained": pretrained, "init_seed": seed,
                              "base_fingerprint": bundle.fingerprint, "fingerprint": fp, "wise_alpha": alpha,
                              "wise_of": str(ckpt), "wise_head": "mix" if h0 is not None else "keep",
                              "head_input": ad.head_input if w is not None else None})
        out: dict = {"state_dict": state, "oodbench": out_meta}
        if isinstance(obj, dict) and "quick_gelu" in obj:
            out["quick_gelu"] = obj["quick_gelu"]
        paths.append(_save_atomic(out, wise_path(ckpt, alpha, out_dir)))
    info(f"WiSE-FT: wrote {len(paths)} mixes of {ckpt.name} (alphas {', '.join(f'{a:g}' for a in alphas)})")
    return paths
