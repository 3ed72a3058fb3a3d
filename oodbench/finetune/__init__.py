"""Fine-tuning recipes whose checkpoints ``oodbench extract --ckpt`` reads, and the study pipeline.

    from oodbench.finetune import FinetuneConfig, finetune, wise_mix, run_study
    res = finetune(FinetuneConfig("ft", steps=200, reg="ldifs"), out_dir="runs")
    wise_mix(res.path, [0.25, 0.5, 0.75], head="mix")
    study = run_study("digits", recipes=["lp", "ft", "flyp", "lora"], store="study_store")

Recipes: ``lp``, ``ft``, ``lpft``, ``flyp``, ``lora``, ``lipsum``, one module each in
:mod:`oodbench.finetune.recipes`, registered in :mod:`oodbench.finetune.registry`; the shared
loop in :mod:`oodbench.finetune.trainer`; regularisers ``l2sp``, ``feature``, ``ldifs`` in
:mod:`oodbench.finetune.regularisers`; WiSE-FT mixing in :mod:`oodbench.finetune.wise`; model soups in :mod:`oodbench.finetune.soup`.
"""

from .lora import apply_lora, load_adapter, merged_state_dict, save_adapter
from .recipes import (
    DEFAULT_LR,
    RECIPES,
    REGULARISERS,
    FinetuneConfig,
    FinetuneResult,
    Recipe,
    describe_checkpoint,
    finetune,
    fit_linear_probe,
    get_recipe,
    recipe_names,
    register_recipe,
)
from .soup import greedy_soup, soup, uniform_soup
from .study import StudyResult, parse_recipe, run_study
from .wise import DEFAULT_ALPHAS, wise_mix, wise_path

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_LR",
    "RECIPES",
    "REGULARISERS",
    "FinetuneConfig",
    "FinetuneResult",
    "Recipe",
    "StudyResult",
    "apply_lora",
    "describe_checkpoint",
    "finetune",
    "fit_linear_probe",
    "greedy_soup",
    "get_recipe",
    "load_adapter",
    "merged_state_dict",
    "parse_recipe",
    "recipe_names",
    "register_recipe",
    "run_study",
    "save_adapter",
    "soup",
    "uniform_soup",
    "wise_mix",
    "wise_path",
]
