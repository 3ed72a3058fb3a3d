"""The scorer interface: named hyperparameters, ``fit`` on a declared split, ``score``.

Convention: every scorer returns one float per sample, **higher = more in-distribution**.

A scorer never reads files or loops over data loaders: the engine hands it an
:class:`~oodbench.scorers.inputs.Inputs` view of one split (arrays loaded lazily from the
feature store) and the scorer computes with numpy/torch on those arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import OodbenchError, suggest


@dataclass(frozen=True)
class Param:
    """A declared hyperparameter: default, type and allowed range or choices."""

    default: Any
    kind: type = float
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    doc: str = ""
    optional: bool = False  # None allowed

    def describe(self) -> str:
        name = {float: "a float", int: "an int", str: "a string", bool: "a bool"}[self.kind]
        if self.choices:
            return f"one of {', '.join(map(repr, self.choices))}"
        if self.low is not None and self.high is not None:
            return f"{name} in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"{name} ≥ {self.low}"
        return name

    def coerce(self, scorer: str, name: str, value: Any) -> Any:
        """Convert a value (possibly a CLI string) to the declared type, or explain what's wrong."""
        bad = OodbenchError(
            f"The {name!r} parameter of {scorer} must be {self.describe()}. Got {value!r} instead."
        )
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if self.optional:
                return None
            raise bad
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise bad
                    value = value.lower() in ("true", "1", "yes")
                else:
                    value = bool(value)
            elif self.kind is int:
                f = float(value)
                if not f.is_integer():
                    raise bad
                value = int(f)
            elif self.kind is float:
                value = float(value)
                if not math.isfinite(value):
                    raise bad
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise bad from None
        if self.choices and value not in self.choices and not (
            self.kind is str and str(value).startswith(tuple(c for c in self.choices if c.endswith(":")))
        ):
            raise bad
        if self.low is not None and value < self.low:
            raise bad
        if self.high is not None and value > self.high:
            raise bad
        return value


FEATURE_SPACES = ("embeds", "embeds_raw", "penultimate", "layer:")
"""Feature spaces a scorer can read: ``embeds`` (L2-normalised projected image embedding),
``embeds_raw`` (unnormalised), ``penultimate`` (pooled feature before the projection),
``layer:K`` (CLS token after vision block K, pre-``ln_post``)."""


def feature_param(default: str = "embeds") -> Param:
    return Param(default, str, choices=FEATURE_SPACES, doc="feature space (embeds, embeds_raw, penultimate, layer:K)")


class Scorer:
    """Base class of all scorers.

    Subclasses set the class attributes below and implement :meth:`score` (and :meth:`fit`
    when ``fit_split`` is not None). ``__init__`` only validates and stores parameters;
    learned state lives in attributes ending in ``_`` (scikit-learn style).
    """

    name: ClassVar[str] = ""
    """Registry key, lower case (``"energy"``)."""
    needs: ClassVar[tuple[str, ...]] = ()
    """What the scorer reads: any of ``logits``, ``head`` (W, b of the head), ``features``,
    ``embeds``, ``text``, ``local``, ``negatives``, ``labels``."""
    fit_split: ClassVar[str | None] = None
    """``"train"`` (ID train split), ``"val"`` (ID validation) or None (nothing to fit)."""
    reference: ClassVar[str] = ""
    """Paper, venue, year."""
    params: ClassVar[dict[str, Param]] = {}
    """Declared hyperparameters with the reference defaults."""
    search_space: ClassVar[dict[str, tuple]] = {}
    """Values tried by ``--tune`` for each hyperparameter."""
    relu_assumption: ClassVar[bool] = False
    """True for scores designed for ReLU (non-negative) features (ASH, ReAct, GradNorm...)."""

    def __init__(self, **params: Any) -> None:
        for key in params:
            if key not in self.params:
                raise suggest(key, self.params, f"parameter of {self.name}")
        self.hparams: dict[str, Any] = {
            k: p.coerce(self.name, k, params.get(k, p.default)) if k in params else p.default
            for k, p in self.params.items()
        }
        self.fitted_ = self.fit_split is None

    def __getattr__(self, item: str) -> Any:
        hp = self.__dict__.get("hparams")
        if hp is not None and item in hp:
            return hp[item]
        raise AttributeError(item)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"

    # -- the interface ----------------------------------------------------------------
    def fit(self, data: Any) -> Scorer:
        """Learn state from the split named by ``fit_split``. Returns self."""
        self.fitted_ = True
        return self

    def score(self, data: Any) -> np.ndarray:
        """One float64 per sample of ``data``, higher = more in-distribution."""
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------
    def check_fitted(self) -> None:
        if not self.fitted_:
            raise OodbenchError(f"{self.name} must be fitted on the ID {self.fit_split} split before scoring.")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "needs": ", ".join(cls.needs),
            "fit": cls.fit_split or "-",
            "defaults": ", ".join(f"{k}={p.default}" for k, p in cls.params.items()) or "-",
            "reference": cls.reference,
        }


@dataclass
class ScorerSpec:
    """A scorer name with parameter overrides, as given on the command line."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
