"""What a scorer sees: a lazy view of one split's arrays, the head and the text banks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import OodbenchError


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """x / max(||x||, eps) along ``axis``, in float32 (float64 in, float64 out)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


@dataclass
class Head:
    """A linear classification head ``z = h @ weight.T + bias`` on feature space ``input``.

    The zero-shot CLIP head is linear on the L2-normalised image embedding:
    ``weight = logit_scale * normalised class text embeddings``, ``bias = 0``.
    """

    name: str
    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    input: str = "embeds"

    def logits(self, h: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``h @ weight.T + bias`` in h's dtype (float32 for stored features), by row blocks
        into one output array (``out`` if given; no (N, C) temporary for the bias). numpy's
        GEMM, not torch's: on small shapes torch's float32 ``addmm`` (MKL) errs ~4x more
        against a float64 product (4.3e-5 vs 9.8e-6 on the test world's 60 x 288 x 6)."""
        h = np.asarray(h)
        w = self.weight.T.astype(h.dtype, copy=False)
        b = self.bias.astype(h.dtype, copy=False)
        if h.ndim != 2:
            return h @ w + b
        if out is None:
            out = np.empty((h.shape[0], w.shape[1]), np.result_type(h.dtype, w.dtype))
        for s in range(0, h.shape[0], 8192):
            np.matmul(h[s : s + 8192], w, out=out[s : s + 8192])
            out[s : s + 8192] += b
        return out

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class TextBank:
    """Per-template text embeddings of a list of names (class names or negative labels).

    ``embeds`` has shape (T, C, D): template t, name c; unnormalised, as the text tower gives.
    """

    names: list[str]
    templates: list[str]
    embeds: np.ndarray

    def name_embeds(self, templates: str | int = "ensemble") -> np.ndarray:
        """(C, D) L2-normalised embeddings of the names.

        ``"ensemble"``: CLIP's prompt ensemble (normalise per template, average, renormalise);
        an int ``t`` or a numeric string: template ``t`` alone; ``"first"``: template 0.
        """
        e = l2_normalize(self.embeds.astype(np.float32))
        if templates == "ensemble":
            return l2_normalize(e.mean(0))
        if templates == "first":
            templates = 0
        try:
            t = int(templates)
        except (TypeError, ValueError):
            raise OodbenchError(
                f"templates must be 'ensemble', 'first' or a template index; got {templates!r}."
            ) from None
        if not 0 <= t < e.shape[0]:
            raise OodbenchError(f"template index {t} out of range: this bank has {e.shape[0]} templates.")
        return e[t]


@dataclass
class VisualParams:
    """What the store keeps of the vision tower to re-project internal features."""

    proj: np.ndarray | None = None  # (W, D)
    ln_post_weight: np.ndarray | None = None  # (W,)
    ln_post_bias: np.ndarray | None = None  # (W,)
    ln_eps: float = 1e-5
    logit_scale: float = 100.0

    def project(self, tokens: np.ndarray) -> np.ndarray:
        """ln_post then projection of pre-``ln_post`` tokens (..., W) -> (..., D)."""
        if self.proj is None or self.ln_post_weight is None:
            raise OodbenchError("This store has no ln_post/projection: re-extract with a ViT model.")
        x = tokens.astype(np.float32)
        mu = x.mean(-1, keepdims=True)
        var = x.var(-1, keepdims=True)
        x = (x - mu) / np.sqrt(var + self.ln_eps) * self.ln_post_weight + self.ln_post_bias
        return x @ self.proj


Loader = Callable[[], np.ndarray]


@dataclass
class Inputs:
    """A lazy view of one split for scorers.

    Arrays are produced on first access by loaders (from the feature store, or given directly
    for tests via :meth:`from_arrays`) and cached. ``labels`` are class indices, -1 = unknown.
    """

    split: str
    loaders: Mapping[str, Loader]
    head: Head | None = None
    text: Mapping[str, TextBank] = field(default_factory=dict)
    visual: VisualParams = field(default_factory=VisualParams)
    extra: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_arrays(
        cls,
        split: str = "test",
        *,
        head: Head | None = None,
        text: Mapping[str, TextBank] | None = None,
        visual: VisualParams | None = None,
        **arrays: np.ndarray,
    ) -> Inputs:
        loaders = {k: (lambda v=v: np.asarray(v)) for k, v in arrays.items()}
        return cls(split, loaders, head, dict(text or {}), visual or VisualParams())

    def has(self, key: str) -> bool:
        return key in self.loaders

    def array(self, key: str) -> np.ndarray:
        if key not in self._cache:
            if key not in self.loaders:
                raise OodbenchError(
                    f"The {self.split} split has no {key!r} in the store: {_HOW_TO_GET.get(key.split('/')[0], 're-extract it')}."
                )
            self._cache[key] = self.loaders[key]()
        return self._cache[key]

    # -- common views ----------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def labels(self) -> np.ndarray:
        return self.array("labels")

    @property
    def ids(self) -> np.ndarray:
        return self.array("ids") if self.has("ids") else np.arange(len(self.labels)).astype(str)

    def features(self, space: str = "embeds") -> np.ndarray:
        """(N, D) float32 features in a named space (see ``scorers.base.FEATURE_SPACES``)."""
        key = f"features:{space}"
        if key in self._cache:
            return self._cache[key]
        if space == "embeds":
            out = self._float32_rows("image_embeds", normalize=True)
        elif space == "embeds_raw":
            out = self._float32_rows("image_embeds")
        elif space == "penultimate":
            out = self._float32_rows("penultimate")
        elif space.startswith("layer:"):
            try:
                k = int(space.split(":", 1)[1])
            except ValueError:
                raise OodbenchError(f"Bad feature space {space!r}: use layer:K with an integer K.") from None
            loader = self.loaders.get("layers/cls")
            part = getattr(loader, "part", None)
            if "layers/cls" in self._cache or part is None or getattr(loader, "shape", None) is None:
                cls_tokens = self.array("layers/cls")
                n_layers = cls_tokens.shape[1]
            else:  # read just the one block's column from the store (memory-bounded)
                cls_tokens, n_layers = None, loader.shape[1]
            blocks = list(self.extra.get("layer_indices") or range(n_layers))
            if k < 0:
                k = blocks[k] if -len(blocks) <= k else k
            if k not in blocks:
                raise OodbenchError(f"Layer {k} was not extracted; the store has layers {blocks}.")
            if cls_tokens is None:
                out = part((slice(None), blocks.index(k))).astype(np.float32, copy=False)
            else:
                out = cls_tokens[:, blocks.index(k)].astype(np.float32)
        else:
            raise OodbenchError(
                f"Unknown feature space {space!r}: use embeds, embeds_raw, penultimate or layer:K."
            )
        self._cache[key] = out
        return out

    def row_blocks(self, key: str, rows: int):
        """Yield (slice, block) of array ``key`` by ``rows``-row blocks.

        Streams from the store (nothing cached) when the loader can read row blocks and the
        array is not already held; else slices the (cached) array.
        """
        loader = self.loaders.get(key)
        blocks = getattr(loader, "iter_chunks", None)
        if key in self._cache or blocks is None or key not in self.loaders:
            x = self.array(key)
            for s in range(0, x.shape[0], rows):
                yield slice(s, min(x.shape[0], s + rows)), x[s : s + rows]
            return
        start = 0
        for block in blocks(rows):
            yield slice(start, start + len(block)), block
            start += len(block)

    def _float32_rows(self, key: str, normalize: bool = False) -> np.ndarray:
        """(N, D) float32 array ``key`` (rows L2-normalised if asked).

        When the loader can read row blocks (``loader.iter_chunks(rows)`` and ``loader.shape``,
        as the engine's store loaders do), the result is filled block by block and the raw
        array is not kept: memory is the result plus one block. Row-wise, so identical to the
        whole-array computation.
        """
        loader = self.loaders.get(key)
        blocks, shape = getattr(loader, "iter_chunks", None), getattr(loader, "shape", None)
        if key in self._cache or blocks is None or shape is None or len(shape) != 2:
            x = self.array(key).astype(np.float32)
            return l2_normalize(x) if normalize else x
        out = np.empty(shape, np.float32)
        start = 0
        for block in blocks(max(1, (64 * 2**20) // max(1, 4 * int(shape[1])))):
            b = np.asarray(block).astype(np.float32, copy=False)
            out[start : start + len(b)] = l2_normalize(b) if normalize else b
            start += len(b)
        if start != shape[0]:
            raise OodbenchError(f"{key}: read {start} rows of the {self.split} split, expected {shape[0]}.")
        return out

    def require_head(self) -> Head:
        if self.head is None:
            raise OodbenchError("No head is available: give class names (zero-shot) or a checkpoint with a linear head.")
        return self.head

    def head_features(self) -> np.ndarray:
        """The features the head reads (its ``input`` space)."""
        return self.features(self.require_head().input)

    @cached_property
    def logits(self) -> np.ndarray:
        """(N, C) logits of the head on this split."""
        return self.require_head().logits(self.head_features()).astype(np.float32, copy=False)

    def text_bank(self, name: str = "classes") -> TextBank:
        if name not in self.text:
            have = ", ".join(self.text) or "none"
            raise OodbenchError(
                f"No text bank {name!r} in the store (have: {have}): {_HOW_TO_GET.get(name, 're-extract it')}."
            )
        return self.text[name]


_HOW_TO_GET = {
    "layers": "re-run `oodbench extract` with --layers",
    "local_embeds": "re-run `oodbench extract` with --local",
    "penultimate": "re-run `oodbench extract`",
    "negatives": "re-run `oodbench extract` with --negatives",
    "classes": "the benchmark must name its classes",
}
