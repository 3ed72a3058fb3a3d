"""Scores computed from the head's logits alone."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax

from .base import Param, Scorer
from .registry import register_scorer


@register_scorer
class MSP(Scorer):
    """Maximum softmax probability: max_c softmax(z)_c."""

    name = "msp"
    needs = ("logits",)
    reference = "Hendrycks & Gimpel, A Baseline for Detecting Misclassified and OoD Examples, ICLR 2017"

    def score(self, data) -> np.ndarray:
        return softmax(data.logits.astype(np.float64), axis=1).max(1)


@register_scorer
class MaxLogit(Scorer):
    """Maximum logit: max_c z_c."""

    name = "maxlogit"
    needs = ("logits",)
    reference = "Hendrycks et al., Scaling OoD Detection to Real-World Settings, ICML 2022"

    def score(self, data) -> np.ndarray:
        return data.logits.astype(np.float64).max(1)


@register_scorer
class Energy(Scorer):
    """Negative free energy: T * logsumexp(z / T)."""

    name = "energy"
    needs = ("logits",)
    reference = "Liu et al., Energy-based Out-of-distribution Detection, NeurIPS 2020"
    params = {"temperature": Param(1.0, float, low=1e-6, doc="temperature T")}
    search_space = {"temperature": (0.1, 0.5, 1.0, 2.0, 10.0)}

    def score(self, data) -> np.ndarray:
        t = self.temperature
        return t * logsumexp(data.logits.astype(np.float64) / t, axis=1)
