"""The fine-tuning recipe registry: one home per recipe family, one registry, old names kept."""

from __future__ import annotations

import pytest

from oodbench.errors import OodbenchError
from oodbench.finetune import DEFAULT_LR, RECIPES, FinetuneConfig, get_recipe, register_recipe
from oodbench.finetune.registry import _REGISTRY


def test_builtins_registered_in_order_with_their_defaults():
    assert RECIPES == ("lp", "ft", "lpft", "flyp", "lora", "lipsum")
    assert DEFAULT_LR == {"ft": 1e-4, "lpft": 1e-4, "flyp": 1e-4, "lora": 1e-3, "lipsum": 1e-4}
    assert get_recipe("lipsum").needs_reference and not get_recipe("ft").needs_reference
    assert get_recipe("lp").runs_itself and not get_recipe("lp").trains_towers
    modules = {name: get_recipe(name).fn.__module__ for name in RECIPES}
    assert modules == {
        "lp": "oodbench.finetune.recipes.lp",
        "ft": "oodbench.finetune.recipes.ft",
        "lpft": "oodbench.finetune.recipes.ft",
        "flyp": "oodbench.finetune.recipes.flyp",
        "lora": "oodbench.finetune.recipes.lora",
        "lipsum": "oodbench.finetune.recipes.lipsum",
    }


def test_duplicate_refused_and_typo_suggested():
    with pytest.raises(ValueError, match="'ft' is already registered"):
        register_recipe("ft")(lambda t, train, val: None)
    assert _REGISTRY["ft"].fn.__module__ == "oodbench.finetune.recipes.ft"  # unchanged
    with pytest.raises(OodbenchError, match="Did you mean 'lora'"):
        FinetuneConfig("lroa")
    with pytest.raises(OodbenchError, match="lp trains no weights of the towers"):
        FinetuneConfig("lp", reg="l2sp")


def test_old_import_path_keeps_working():
    from oodbench.finetune.recipes import (  # noqa: F401  (the names of the former recipes.py)
        DEFAULT_LR,
        RECIPES,
        REGULARISERS,
        FinetuneConfig,
        FinetuneResult,
        describe_checkpoint,
        finetune,
        fit_linear_probe,
    )

    assert REGULARISERS == ("none", "l2sp", "feature", "ldifs")
