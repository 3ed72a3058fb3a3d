"""Post-hoc OoD scorers (higher score = more in-distribution) and their registry."""

from . import classwise, clip, distance, logit, native, shaping  # noqa: F401  (register built-ins)
from .base import FEATURE_SPACES, Param, Scorer, feature_param
from .inputs import Head, Inputs, TextBank, VisualParams, l2_normalize
from .registry import get_scorer, load_plugin, make_scorer, register_scorer, scorer_names

__all__ = [
    "FEATURE_SPACES",
    "Head",
    "Inputs",
    "Param",
    "Scorer",
    "TextBank",
    "VisualParams",
    "feature_param",
    "get_scorer",
    "l2_normalize",
    "load_plugin",
    "make_scorer",
    "register_scorer",
    "scorer_names",
]
