"""What defines a fine-tuning run (:class:`FinetuneConfig`) and what it returns (:class:`FinetuneResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import OodbenchError, suggest
from . import lora as lora_mod
from .data import AUGMENTS, MAX_IN_MEMORY
from .registry import DEFAULT_LR, get_recipe
from .regularisers import DEFAULT_REG_WEIGHT, REGULARISERS

STATE_FORMAT = "oodbench-finetune-state-v2"
CKPT_FORMAT_VERSION = 1


@dataclass
class FinetuneConfig:
    """Everything that defines one fine-tuning run (recorded in its checkpoints)."""

    recipe: str
    benchmark: str = "digits"
    model: str | None = None  # open_clip name; None: the benchmark's model
    pretrained: str | None = "auto"  # "auto": the benchmark's tag; None: random init (seed)
    steps: int = 200
    batch_size: int = 64
    lr: float | None = None  # None: DEFAULT_LR[recipe]
    weight_decay: float = 0.1
    warmup: float = 0.1  # fraction of steps with linear warm-up, then cosine to 0
    seed: int = 0
    reg: str = "none"
    reg_weight: float | None = None  # None: DEFAULT_REG_WEIGHT[reg]
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lora_towers: str = "both"  # visual | text | both
    lora_targets: str = "q,k,v,out"
    lp_c: float | None = None  # None: chosen on ID val from LP_GRID
    augment: str = "shift"  # none (eval preprocess) | shift (±augment_shift px) | rrc (RandomResizedCrop + flip)
    augment_shift: int = 2  # augment shift: random ±pixels translation of training images
    rrc_scale: float = 0.08  # augment rrc: smallest crop area fraction (CoOp / CLIP-LoRA: 0.08)
    shots: int | None = None  # K images per class drawn from the ID train split (None: all)
    epochs: float | None = None  # train this many passes over the split instead of ``steps``
    accum_steps: int = 1  # micro-batches per optimizer step (batch_size is the global batch)
    grad_clip: float | None = None  # clip the global gradient norm to this (None: off)
    keep_best: bool = False  # export the weights of the evaluation with the best ID val accuracy
    lipsum_texts: int = 80  # lipsum: random texts per step (Lipsum-FT token_k_ways)
    lipsum_length: int = 8  # lipsum: random tokens per text (Lipsum-FT token_length)
    lipsum_weight: float = 1.0  # lipsum: weight of the energy-matching term (feat_regularization)
    label_smoothing: float = 0.0
    flyp_head: bool = False  # FLYP: also write the rebuilt text head (wiseft format)
    name: str | None = None  # file stem; default recipe[-reg]
    # run-time knobs: not part of the run's identity (may differ when resuming)
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 (autocast on CUDA; auto: bf16 if supported)
    eval_every: int = 25
    save_every: int = 50
    benchmarks: str | None = None  # a benchmarks YAML (default: the shipped one)
    data_root: str | None = None
    workers: int = 2  # DataLoader workers of a split too large for memory
    max_in_memory: int = MAX_IN_MEMORY  # larger training splits stream through the DataLoader

    RUNTIME = ("device", "precision", "eval_every", "save_every", "benchmarks", "data_root", "workers",
               "max_in_memory")

    def __post_init__(self) -> None:
        self.recipe = self.recipe.lower().replace("-", "")
        spec = get_recipe(self.recipe)
        if self.reg not in REGULARISERS:
            raise suggest(self.reg, REGULARISERS, "regulariser")
        if self.reg != "none" and not spec.trains_towers:
            raise OodbenchError(f"{self.recipe} trains no weights of the towers: a representation regulariser "
                                "does not apply.")
        if self.lora_towers not in lora_mod.TOWERS:
            raise suggest(self.lora_towers, lora_mod.TOWERS, "LoRA towers option")
        if self.augment not in AUGMENTS:
            raise suggest(self.augment, AUGMENTS, "augmentation")
        if not 0 < self.rrc_scale <= 1:
            raise OodbenchError(f"rrc_scale is a crop area fraction in (0, 1], got {self.rrc_scale}.")
        if self.shots is not None and int(self.shots) < 1:
            raise OodbenchError(f"shots must be ≥ 1 (or unset for the full split), got {self.shots}.")
        if self.epochs is not None and not float(self.epochs) > 0:
            raise OodbenchError(f"epochs must be > 0, got {self.epochs}.")
        if self.grad_clip is not None and not float(self.grad_clip) > 0:
            raise OodbenchError(f"grad_clip must be > 0, got {self.grad_clip}.")
        if self.batch_size % max(1, int(self.accum_steps)) != 0:
            raise OodbenchError(f"batch_size {self.batch_size} is not a multiple of accum_steps {self.accum_steps}.")
        if int(self.workers) < 0:
            raise OodbenchError(f"workers must be ≥ 0, got {self.workers}.")
        for k in ("steps", "batch_size", "lora_rank", "eval_every", "save_every", "accum_steps", "lipsum_texts",
                  "lipsum_length", "max_in_memory"):
            if int(getattr(self, k)) < 1:
                raise OodbenchError(f"{k} must be ≥ 1, got {getattr(self, k)}.")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise OodbenchError("precision must be auto, fp32, fp16 or bf16.")
        if not 0 <= self.warmup < 1:
            raise OodbenchError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}.")

    @property
    def run_name(self) -> str:
        return self.name or (self.recipe if self.reg == "none" else f"{self.recipe}-{self.reg}")

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps: ``steps``, or ceil(epochs x N / batch_size) when ``epochs`` is set."""
        if self.epochs is None:
            return int(self.steps)
        return max(1, math.ceil(float(self.epochs) * n_train / self.batch_size))

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR.get(self.recipe, 0.0))

    @property
    def regulariser_weight(self) -> float:
        return float(self.reg_weight if self.reg_weight is not None else DEFAULT_REG_WEIGHT[self.reg])

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def identity(self) -> dict[str, Any]:
        """The fields that change the trained weights (they must match to resume)."""
        d = {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME and k != "name"}
        d["lr"], d["reg_weight"] = self.learning_rate, self.regulariser_weight
        return d


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the checkpoint file(s) and the in-memory fine-tuned model."""

    path: Path
    config: FinetuneConfig
    model: nn.Module  # eval mode; LoRA runs keep their (unmerged) LoRA modules
    head_weight: torch.Tensor | None
    head_bias: torch.Tensor | None
    preprocess: Any
    tokenizer: Any
    base_fingerprint: str
    fingerprint: str  # the fingerprint load_model(ckpt=path) gives (store key suffix)
    step: int
    val_accuracy: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    adapter_path: Path | None = None  # LoRA: the unmerged adapter file
    resumed_from: int = 0
    seconds: float = 0.0
    cached: bool = False
