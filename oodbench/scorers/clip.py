"""CLIP-native scorers that read image embeddings and text banks."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

from .base import Param, Scorer
from .inputs import l2_normalize
from .registry import register_scorer


def cosine_to_names(embeds: np.ndarray, name_embeds: np.ndarray) -> np.ndarray:
    """(N, C) cosine similarities of image embeddings to L2-normalised name embeddings."""
    return l2_normalize(embeds.astype(np.float32)) @ name_embeds.T.astype(np.float32)


@register_scorer
class MCM(Scorer):
    """Maximum concept matching: max_c softmax(cos(x, t_c) / T).

    T = 1 on raw cosine similarities (the paper's default). ``templates``: ``"first"`` (the
    benchmark's first prompt template, `a photo of a {}.`) or ``"ensemble"`` (all templates).
    """

    name = "mcm"
    needs = ("embeds", "text")
    reference = "Ming et al., Delving into OoD Detection with Vision-Language Representations, NeurIPS 2022"
    params = {
        "temperature": Param(1.0, float, low=1e-6, doc="softmax temperature on cosine similarity"),
        "templates": Param("first", str, doc="'first', 'ensemble' or a template index"),
    }
    search_space = {"temperature": (0.01, 0.1, 0.5, 1.0, 2.0)}

    def score(self, data) -> np.ndarray:
        names = data.text_bank("classes").name_embeds(self.templates)
        cos = cosine_to_names(data.array("image_embeds"), names).astype(np.float64)
        return softmax(cos / self.temperature, axis=1).max(1)
