"""``lp``: a logistic-regression head on L2-normalised image embeddings (scikit-learn), C chosen
on ID val (accuracy, then log-loss); the towers stay frozen. Not a gradient loop: it runs itself."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from ...console import info
from ...errors import OodbenchError
from ..common import _jsonable, zero_shot_head
from ..config import FinetuneResult
from ..registry import register_recipe

if TYPE_CHECKING:
    from ..data import ImageSet
    from ..trainer import Trainer


@register_recipe("lp", runs_itself=True, trains_towers=False)
def _run_lp(t: Trainer, train: ImageSet, val: ImageSet | None, t0: float, resume: bool = True,
            overwrite: bool = False) -> FinetuneResult:
    if t.ckpt_path.exists() and not overwrite:
        obj = torch.load(t.ckpt_path, map_location="cpu", weights_only=True)
        meta = obj.get("oodbench", {}) if isinstance(obj, dict) else {}
        same = meta.get("identity") == _jsonable(t.cfg.identity()) and meta.get("base_fingerprint") == t.base_fingerprint
        if not same:
            raise OodbenchError(f"{t.ckpt_path} was written by another configuration or base model: pass --overwrite "
                                "to replace it, or choose another --name / --out.")
        if resume:
            info(f"[dim]cached[/] {t.cfg.run_name}: {t.ckpt_path}")
            sd = obj["state_dict"]
            w, b = sd["classification_head.weight"], sd["classification_head.bias"]
            t.lp_info = meta.get("linear_probe")
            return FinetuneResult(path=t.ckpt_path, config=t.cfg, model=t.model.eval(), head_weight=w, head_bias=b,
                                  preprocess=t.preprocess, tokenizer=t.tokenizer, base_fingerprint=t.base_fingerprint,
                                  fingerprint=meta.get("fingerprint", ""), step=0, val_accuracy=meta.get("val_accuracy"),
                                  seconds=float(meta.get("train_seconds") or 0.0), cached=True)
    w, b = t.linear_probe(train, val)
    trial = next(r for r in t.lp_info["trials"] if r["C"] == t.lp_info["chosen_C"])
    val_acc = trial.get("val_accuracy")
    sd = {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
          for k, v in t.model.state_dict().items()}
    zs = zero_shot_head(t.model, t.tokens, t.n_templates, t.n_classes).cpu()
    path, fp = t.export(sd, (w, b), (zs, torch.zeros(t.n_classes)), 0, val_acc,
                        {"train_seconds": round(time.time() - t0, 2)})
    info(f"lp: wrote {path}")
    return FinetuneResult(path=path, config=t.cfg, model=t.model.eval(), head_weight=w, head_bias=b,
                          preprocess=t.preprocess, tokenizer=t.tokenizer, base_fingerprint=t.base_fingerprint,
                          fingerprint=fp, step=0, val_accuracy=val_acc, seconds=round(time.time() - t0, 2))
