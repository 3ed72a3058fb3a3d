"""``flyp``: both towers (and the logit scale), CLIP contrastive loss between images and
class-prompt captions (Goyal et al., CVPR 2023); the classifier is the zero-shot head of the
fine-tuned text tower."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..common import class_text_embeddings, zero_shot_head
from ..registry import register_recipe
from .base import Recipe

if TYPE_CHECKING:
    from ..data import ImageSet
    from ..trainer import Trainer


class FLYP(Recipe):
    """Both towers, CLIP loss between images and class-prompt captions of their labels."""

    def __init__(self, t: Trainer) -> None:
        super().__init__(t)
        for p in t.model.parameters():
            p.requires_grad_(True)

    def named_parameters(self):
        return list(self.t.model.named_parameters())

    def loss(self, x, y):
        t = self.t
        tmpl = torch.randint(0, t.n_templates, (x.shape[0],), generator=t.rng("flyp")).to(y.device)
        cap = tmpl * t.n_classes + y  # index into the (T*C) prompt tokens
        uniq, inv = torch.unique(cap, return_inverse=True)
        txt = F.normalize(t.model.encode_text(t.tokens[uniq]).float(), dim=-1)[inv]
        z = t.model.encode_image(x)
        img = F.normalize(z.float(), dim=-1)
        logits = t.model.logit_scale.exp().float() * img @ txt.T
        # same-class captions are positives too (a batch of a few classes repeats captions)
        target = (y[:, None] == y[None, :]).float()
        target = target / target.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)), z

    def after_step(self):
        with torch.no_grad():
            self.t.model.logit_scale.clamp_(0, math.log(100))

    def export_head(self):
        """No head (open_clip layout), or with ``flyp_head`` the fine-tuned text tower's zero-shot head."""
        t = self.t
        if not t.cfg.flyp_head:
            return self.head()
        return zero_shot_head(t.model, t.tokens, t.n_templates, t.n_classes).cpu(), torch.zeros(t.n_classes)

    def begin_eval(self):
        t = self.t
        self._eval_text = class_text_embeddings(t.model, t.tokens, t.n_templates, t.n_classes)

    def end_eval(self):
        self._eval_text = None

    def logits(self, x):
        t = self.t
        text = getattr(self, "_eval_text", None)
        if text is None:
            text = class_text_embeddings(t.model, t.tokens, t.n_templates, t.n_classes)
        return t.model.logit_scale.exp().float() * F.normalize(t.model.encode_image(x).float(), dim=-1) @ text.T


@register_recipe("flyp", lr=1e-4)
def _flyp(t: Trainer, train: ImageSet, val: ImageSet | None) -> FLYP:
    return FLYP(t)
