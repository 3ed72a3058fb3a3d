"""``lora``: LoRA on the attention q, k, v, out projections of the chosen towers, CE over the text
classifier of the (adapted) text tower, as CLIP-LoRA (Zanella & Ben Ayed, 2024); merged on
save, the adapter also saved unmerged."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...models.loading import has_quick_gelu
from .. import lora as lora_mod
from ..common import class_text_embeddings
from ..registry import register_recipe
from .base import Recipe

if TYPE_CHECKING:
    from ..data import ImageSet
    from ..trainer import Trainer


class LoRA(Recipe):
    """LoRA modules on the attention projections; CE over the (adapted) text tower's classifier."""

    def __init__(self, t: Trainer) -> None:
        super().__init__(t)
        cfg = t.cfg
        targets = tuple(s.strip() for s in cfg.lora_targets.split(",") if s.strip())
        self.blocks = lora_mod.apply_lora(t.model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_towers, targets,
                                          seed=cfg.seed)
        self.text_trains = cfg.lora_towers in ("text", "both")
        self.fixed_text = self._eval_text = None
        # training prompts: the template ensemble, or (many classes x templates) the first template only,
        # as CLIP-LoRA encodes one prompt per class at every step
        self.n_train_templates = t.n_templates if t.n_templates * t.n_classes <= 1024 else 1
        if not self.text_trains:
            with torch.no_grad():
                self.fixed_text = class_text_embeddings(t.model, t.tokens, t.n_templates, t.n_classes)

    def named_parameters(self):
        return [(n, p) for n, p in self.t.model.named_parameters() if "lora_" in n]

    def drift(self):
        return [m.delta() for m in self.t.model.modules() if isinstance(m, lora_mod.LoRAPair)]

    def _text(self, train: bool = True):
        t = self.t
        if self.fixed_text is not None:
            return self.fixed_text
        if not train:
            if self._eval_text is not None:
                return self._eval_text
            return class_text_embeddings(t.model, t.tokens, t.n_templates, t.n_classes)
        n = self.n_train_templates
        return class_text_embeddings(t.model, t.tokens[: n * t.n_classes], n, t.n_classes)

    def begin_eval(self):
        if self.fixed_text is None:
            t = self.t
            self._eval_text = class_text_embeddings(t.model, t.tokens, t.n_templates, t.n_classes)

    def end_eval(self):
        self._eval_text = None

    def loss(self, x, y):
        z = self.t.model.encode_image(x)
        logits = self.t.model.logit_scale.exp().float() * F.normalize(z.float(), dim=-1) @ self._text().T
        return F.cross_entropy(logits, y, label_smoothing=self.t.cfg.label_smoothing), z

    def logits(self, x):
        return self.t.model.logit_scale.exp().float() * F.normalize(
            self.t.model.encode_image(x).float(), dim=-1) @ self._text(train=False).T

    writes_adapter = True

    def export_meta(self):
        return {"lora_blocks": self.blocks}

    def save_adapter(self, path: Path) -> None:
        t, cfg = self.t, self.t.cfg
        lora_mod.save_adapter(t.model, path, rank=cfg.lora_rank, alpha=cfg.lora_alpha, towers=cfg.lora_towers,
                              meta={"base_fingerprint": t.base_fingerprint, "model": t.model_name,
                                    "pretrained": t.pretrained, "oodbench_run": cfg.run_name},
                              quick_gelu=has_quick_gelu(t.model))

    def export_state(self):
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in lora_mod.merged_state_dict(self.t.model).items()}


@register_recipe("lora", lr=1e-3)
def _lora(t: Trainer, train: ImageSet, val: ImageSet | None) -> LoRA:
    return LoRA(t)
