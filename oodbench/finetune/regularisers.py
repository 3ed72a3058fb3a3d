"""Representation-preserving regularisers (``reg`` of a config, any gradient recipe), weight ``reg_weight``.

* ``l2sp``: λ Σ‖θ − θ0‖² over the fine-tuned weights (Li, Grandvalet & Davoine, ICML 2018;
  for LoRA the merged updates ‖scale·BA‖²);
* ``feature``: λ · mean ‖ẑ(x) − ẑ0(x)‖², ẑ the L2-normalised image embedding of the
  fine-tuned / frozen zero-shot model (feature distillation towards the pre-trained features);
* ``ldifs``: LDIFS (Mukhoti et al., "Fine-tuning can cripple your foundation model; preserving
  features may be the solution", TMLR 2024, arXiv:2308.13320): the same distance summed over the
  outputs of every block of the image transformer (channel-normalised tokens, squared distance
  summed over channels, averaged over tokens, LPIPS-style) plus the final embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OodbenchError

REGULARISERS = ("none", "l2sp", "feature", "ldifs")
DEFAULT_REG_WEIGHT = {"none": 0.0, "l2sp": 1.0, "feature": 10.0, "ldifs": 10.0}


class _BlockTap:
    """Forward hooks collecting the output of every block of an image transformer."""

    def __init__(self, model: nn.Module) -> None:
        blocks = getattr(getattr(model.visual, "transformer", None), "resblocks", None)
        if blocks is None:
            raise OodbenchError("ldifs needs a transformer image tower (visual.transformer.resblocks).")
        self.out: list[torch.Tensor] = []
        self.handles = [b.register_forward_hook(self._hook) for b in blocks]

    def _hook(self, module, args, output) -> None:
        self.out.append(output[0] if isinstance(output, tuple) else output)

    def take(self) -> list[torch.Tensor]:
        out, self.out = self.out, []
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _feature_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample squared distance of channel-normalised features (tokens averaged)."""
    d = (F.normalize(a.float(), dim=-1) - F.normalize(b.float(), dim=-1)).pow(2).sum(-1)
    return d.reshape(d.shape[0], -1).mean(1) if d.ndim > 1 else d


class Regulariser:
    """``reg`` of the config: a penalty added to the recipe's loss."""

    def __init__(self, kind: str, weight: float, model: nn.Module, reference: nn.Module | None,
                 drift: callable) -> None:
        self.kind, self.weight, self.drift = kind, weight, drift
        self.ref = reference
        self.tap = self.ref_tap = None
        if kind == "ldifs":
            self.tap, self.ref_tap = _BlockTap(model), _BlockTap(reference)

    def __call__(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "l2sp":
            return self.weight * sum(d.float().pow(2).sum() for d in self.drift())
        with torch.no_grad():
            z0 = self.ref.encode_image(x)
        dist = _feature_distance(z, z0)
        if self.kind == "ldifs":
            feats, feats0 = self.tap.take(), self.ref_tap.take()
            for a, b in zip(feats, feats0, strict=True):
                dist = dist + _feature_distance(a, b)
        return self.weight * dist.mean()

    def reset(self) -> None:
        if self.tap is not None:
            self.tap.take()
            self.ref_tap.take()
