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

    loss_is_global = True  # under torchrun every rank computes the loss of the whole global batch

    def loss(self, x, y):
        t = self.t
        n, world = x.shape[0], t.world
        # templates drawn for the whole global batch, this rank's slice taken (as one process draws them)
        tmpl = torch.randint(0, t.n_templates, (n * world,), generator=t.rng("flyp"))[t.rank * n:(t.rank + 1) * n]
        cap = tmpl.to(y.device) * t.n_classes + y  # index into the (T*C) prompt tokens
        uniq, inv = torch.unique(cap, return_inverse=True)
        txt = F.normalize(t.model.encode_text(t.tokens[uniq]).float(), dim=-1)[inv]
        z = t.model.encode_image(x)
        img = F.normalize(z.float(), dim=-1)
        scale = t.model.logit_scale.exp().float()
        if world > 1:  # open_clip's gather_features (no grad through the others' features)
            img, txt, y = _gather(img), _gather(txt), _gather(y)
            # each rank backpropagates the whole loss through its own features; summed over ranks that is
            # the loss' gradient, except for the logit scale, which every rank sees whole: 1/world of it each
            scale = scale.detach() + (scale - scale.detach()) / world
        logits = scale * img @ txt.T
        # same-class captions are positives too (a batch of a few classes repeats captions)
        target = (y[:, None] == y[None, :]).float()
        target = target / target.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        return loss * world, z  # the trainer weighs each rank's loss by 1/world

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


def _gather(v: torch.Tensor) -> torch.Tensor:
    """All ranks' ``v`` concatenated in rank order; this rank's part keeps its gradient."""
    import torch.distributed as dist

    parts = [torch.empty_like(v) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, v.detach().contiguous())
    parts[dist.get_rank()] = v
    return torch.cat(parts)


@register_recipe("flyp", lr=1e-4)
def _flyp(t: Trainer, train: ImageSet, val: ImageSet | None) -> FLYP:
    return FLYP(t)
