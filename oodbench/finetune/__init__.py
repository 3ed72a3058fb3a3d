"""Fine-tuning recipes whose checkpoints ``oodbench extract --ckpt`` reads, and the study pipeline.

    from oodbench.finetune import FinetuneConfig, finetune, wise_mix, run_study
    res = finetune(FinetuneConfig("ft", steps=200, reg="ldifs"), out_dir="runs")
    wise_mix(res.path, [0.25, 0.5, 0.75], head="mix")
    study = run_study("digits", recipes=["lp", "ft", "flyp", "lora"], store="study_store")

Recipes: ``lp``, ``ft``, ``lpft``, ``flyp``, ``lora`` (see :mod:`oodbench.finetune.recipes`);
regularisers ``l2sp``, ``feature``, ``ldifs``; WiSE-FT mixing in :mod:`oodbench.finetune.wise`.
"""

from .lora import apply_lora, load_adapter, merged_state_dict, save_adapter
from .recipes import (
    DEFAULT_LR,
    RECIPES,
    REGULARISERS,
    FinetuneConfig,
    FinetuneResult,
    describe_checkpoint,
    finetune,
    fit_linear_probe,
)
from .study import StudyResult, parse_recipe, run_study
from .wise import DEFAULT_ALPHAS, wise_mix, wise_path

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_LR",
    "RECIPES",
    "REGULARISERS",
    "FinetuneConfig",
    "FinetuneResult",
    "StudyResult",
    "apply_lora",
    "describe_checkpoint",
    "finetune",
    "fit_linear_probe",
    "load_adapter",
    "merged_state_dict",
    "parse_recipe",
    "run_study",
    "save_adapter",
    "wise_mix",
    "wise_path",
]
