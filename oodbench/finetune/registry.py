"""The one registry of fine-tuning recipes: ``@register_recipe("name")`` on a builder.

A gradient recipe registers a builder ``fn(trainer, train, val) -> Recipe`` (the trainable
parameters, loss and classifier, see :class:`oodbench.finetune.recipes.base.Recipe`) and its
default learning rate; the shared loop of :func:`oodbench.finetune.trainer.finetune` trains
it. A recipe that is not a gradient loop (the linear probe) registers ``runs_itself=True`` and
a function ``fn(trainer, train, val, t0, resume, overwrite) -> FinetuneResult``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import suggest


@dataclass(frozen=True)
class RecipeSpec:
    """A registered recipe: its function, default learning rate and what it trains."""

    name: str
    fn: Callable[..., Any]
    lr: float | None = None
    runs_itself: bool = False  # fn runs the whole recipe (no shared gradient loop)
    trains_towers: bool = True  # False: a representation regulariser does not apply
    needs_reference: bool = False  # the trainer keeps a frozen copy of the base model (t.reference)


_REGISTRY: dict[str, RecipeSpec] = {}
DEFAULT_LR: dict[str, float] = {}
"""Default learning rate per gradient recipe (filled by :func:`register_recipe`)."""


def register_recipe(name: str, *, lr: float | None = None, runs_itself: bool = False,
                    trains_towers: bool = True, needs_reference: bool = False) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as recipe ``name``; a second recipe of that name is refused."""

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"a fine-tuning recipe named {name!r} is already registered "
                             f"({_REGISTRY[name].fn.__module__})")
        _REGISTRY[name] = RecipeSpec(name, fn, lr, runs_itself, trains_towers, needs_reference)
        if lr is not None:
            DEFAULT_LR[name] = float(lr)
        return fn

    return wrap


def recipe_names() -> tuple[str, ...]:
    """Registered recipe names, in registration order."""
    return tuple(_REGISTRY)


def get_recipe(name: str) -> RecipeSpec:
    """The spec of recipe ``name``; an unknown name gets a close-match suggestion."""
    if name not in _REGISTRY:
        raise suggest(name, _REGISTRY, "fine-tuning recipe")
    return _REGISTRY[name]
