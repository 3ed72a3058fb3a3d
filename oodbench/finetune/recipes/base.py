"""The interface every gradient recipe implements on top of the trainer's model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..trainer import Trainer


class Recipe:
    """One recipe's trainable parameters, loss and classifier, on top of the trainer's model."""

    uses_text_head = True  # the classifier is the text tower's zero-shot head (no linear head)
    writes_adapter = False  # also writes <name>.lora.pt (see save_adapter)
    loss_is_global = False  # torchrun: loss() returns world x the global batch's loss on every rank (FLYP)

    def __init__(self, t: Trainer) -> None:
        self.t = t

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        raise NotImplementedError

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, unnormalised image embeddings of x)."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def begin_eval(self) -> None:
        """Called (under no_grad) before an evaluation pass: cache what does not depend on the images."""

    def end_eval(self) -> None:
        pass

    def drift(self) -> list[torch.Tensor]:
        """Tensors whose squared norm is the L2-SP penalty (fine-tuned minus initial weights)."""
        return [p - self.t.init_params[n] for n, p in self.named_parameters() if n in self.t.init_params]

    def head(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def export_head(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The (weight (C, D), bias (C,)) head written to the checkpoint; default :meth:`head`."""
        return self.head()

    def head_init(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to clamp a parameter)."""

    def export_meta(self) -> dict[str, Any]:
        """Extra entries of the checkpoint's ``oodbench`` metadata."""
        return {}

    def save_adapter(self, path: Path) -> None:
        """Write the unmerged adapter next to the checkpoint (``writes_adapter`` recipes)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def export_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in self.t.model.state_dict().items()}
