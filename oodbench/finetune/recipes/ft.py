"""``ft`` and ``lpft``: the image tower and a linear head on normalised embeddings, cross-entropy.

``ft`` starts the head from the zero-shot text classifier (logit scale x normalised class text
embeddings); ``lpft`` from the linear probe (Kumar et al., ICLR 2022).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..common import zero_shot_head
from ..registry import register_recipe
from .base import Recipe

if TYPE_CHECKING:
    from ..data import ImageSet
    from ..trainer import Trainer


class FT(Recipe):
    """Image tower + linear head on normalised embeddings, cross-entropy."""

    uses_text_head = False

    def __init__(self, t: Trainer, w0: torch.Tensor, b0: torch.Tensor) -> None:
        super().__init__(t)
        self.w0, self.b0 = w0.detach().clone().float(), b0.detach().clone().float()
        self.lin = nn.Linear(w0.shape[1], w0.shape[0]).to(t.device)
        with torch.no_grad():
            self.lin.weight.copy_(w0)
            self.lin.bias.copy_(b0)
        for n, p in t.model.named_parameters():
            p.requires_grad_(n.startswith("visual."))

    def named_parameters(self):
        own = [(n, p) for n, p in self.t.model.named_parameters() if n.startswith("visual.")]
        return own + [(f"head.{n}", p) for n, p in self.lin.named_parameters()]

    def drift(self):
        return [p - self.t.init_params[n] for n, p in self.t.model.named_parameters() if n.startswith("visual.")]

    def loss(self, x, y):
        z = self.t.model.encode_image(x)
        logits = self.lin(F.normalize(z.float(), dim=-1))
        return F.cross_entropy(logits, y, label_smoothing=self.t.cfg.label_smoothing), z

    def logits(self, x):
        return self.lin(F.normalize(self.t.model.encode_image(x).float(), dim=-1))

    def head(self):
        return self.lin.weight.detach().float().cpu().clone(), self.lin.bias.detach().float().cpu().clone()

    def head_init(self):
        return self.w0.cpu(), self.b0.cpu()

    def state_dict(self):
        return {"head": self.lin.state_dict()}

    def load_state_dict(self, state):
        self.lin.load_state_dict(state["head"])


@register_recipe("ft", lr=1e-4)
def _ft(t: Trainer, train: ImageSet, val: ImageSet | None) -> FT:
    w0 = zero_shot_head(t.model, t.tokens, t.n_templates, t.n_classes)
    return FT(t, w0, torch.zeros(t.n_classes, device=t.device))


@register_recipe("lpft", lr=1e-4)
def _lpft(t: Trainer, train: ImageSet, val: ImageSet | None) -> FT:
    w, b = t.linear_probe(train, val)
    return FT(t, w.to(t.device), b.to(t.device))
