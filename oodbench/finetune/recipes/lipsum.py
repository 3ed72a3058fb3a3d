"""``lipsum``: Lipsum-FT (Nam et al., "Lipsum-FT: Robust fine-tuning of zero-shot models using
random text guidance", ICLR 2024; code: github.com/cs-giung/lipsum-ft, ``scripts/Lipsum-FT.py``).

``ft`` (image tower + linear head, cross-entropy) plus an energy-matching term that keeps the
vision-language connection of the zero-shot model: every step draws ``lipsum_texts`` (K, default
80) random texts ``[SOT] t_1..t_L [EOT]`` of ``lipsum_length`` (L, default 8) tokens uniform in
[0, vocab - 2) (the ids below SOT), embeds them with the frozen text tower, and penalises

    R = mean_i  sum_k (s * <f(x_i), u_k> - s * <f0(x_i), u_k>)^2 / (2K)

with f / f0 the unit-norm image embeddings of the fine-tuned / zero-shot image tower, u_k the
unit-norm text embeddings and s = exp(logit_scale) of the zero-shot model; the loss is
CE + ``lipsum_weight`` (default 1, upstream's ``feat_regularization``) x R.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..common import zero_shot_head
from ..data import step_generator
from ..registry import register_recipe
from .ft import FT

if TYPE_CHECKING:
    from ..data import ImageSet
    from ..trainer import Trainer


def random_text_tokens(n: int, length: int, vocab_size: int, context_length: int,
                       gen: torch.Generator) -> torch.Tensor:
    """(n, context_length) int64: SOT (vocab-2), ``length`` ids uniform in [0, vocab-2), EOT (vocab-1), zeros."""
    if length + 2 > context_length:
        from ...errors import OodbenchError

        raise OodbenchError(f"lipsum_length {length} + 2 exceeds the text context length {context_length}.")
    tok = torch.zeros(n, context_length, dtype=torch.long)
    tok[:, 0] = vocab_size - 2
    tok[:, 1:1 + length] = torch.randint(0, vocab_size - 2, (n, length), generator=gen)
    tok[:, 1 + length] = vocab_size - 1
    return tok


def lipsum_energy_gap(img: torch.Tensor, img0: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """R above, from unit-norm image embeddings (B, D) / (B, D), text embeddings (K, D) and s."""
    gap = scale * img @ txt.T - scale * img0 @ txt.T
    return (gap.pow(2).sum(-1) / (2 * txt.shape[0])).mean()


class Lipsum(FT):
    """FT with Lipsum-FT's random-text energy matching against the zero-shot model."""

    def __init__(self, t: Trainer, w0: torch.Tensor, b0: torch.Tensor) -> None:
        super().__init__(t, w0, b0)
        self.ref: nn.Module = t.reference
        emb = self.ref.token_embedding
        self.vocab = int(getattr(self.ref, "vocab_size", emb.num_embeddings))
        self.context = int(getattr(self.ref, "context_length", 77))
        self.last_reg: float | None = None
        self._txt: tuple[int, torch.Tensor] | None = None

    def texts(self, gen: torch.Generator) -> torch.Tensor:
        """(K, D) unit-norm embeddings of this step's random texts by the frozen text tower."""
        cfg = self.t.cfg
        tok = random_text_tokens(cfg.lipsum_texts, cfg.lipsum_length, self.vocab, self.context, gen)
        with torch.no_grad():
            return F.normalize(self.ref.encode_text(tok.to(self.t.device)).float(), dim=-1)

    def loss(self, x, y):
        ce, z = super().loss(x, y)
        if self._txt is None or self._txt[0] != self.t.step:  # one draw per step, shared by its micro-batches
            self._txt = (self.t.step, self.texts(step_generator(self.t.cfg.seed, self.t.step, "lipsum")))
        txt = self._txt[1]
        with torch.no_grad():
            z0 = F.normalize(self.ref.encode_image(x).float(), dim=-1)
            scale = self.ref.logit_scale.exp().float()
        reg = lipsum_energy_gap(F.normalize(z.float(), dim=-1), z0, txt, scale)
        self.last_reg = float(reg.detach())
        return ce + self.t.cfg.lipsum_weight * reg, z

    def export_meta(self):
        cfg = self.t.cfg
        return {"lipsum": {"texts": cfg.lipsum_texts, "length": cfg.lipsum_length, "weight": cfg.lipsum_weight}}


@register_recipe("lipsum", lr=1e-4, needs_reference=True)
def _lipsum(t: Trainer, train: ImageSet, val: ImageSet | None) -> Lipsum:
    w0 = zero_shot_head(t.model, t.tokens, t.n_templates, t.n_classes)
    return Lipsum(t, w0, torch.zeros(t.n_classes, device=t.device))
