"""Fine-tuning recipes for open_clip CLIPs, one module per family, all in one registry.

=========  ===============================================================================  ==========
recipe     what trains, with which loss                                                      file format
=========  ===============================================================================  ==========
``lp``     logistic-regression head on L2-normalised image embeddings (scikit-learn),       ``wiseft``
           C chosen on ID val (accuracy, then log-loss); towers frozen (:mod:`.lp`)
``ft``     image tower + a linear head initialised from the zero-shot text classifier        ``wiseft``
           (logit scale x normalised class text embeddings), cross-entropy (:mod:`.ft`)
``lpft``   ``lp``, then ``ft`` starting from the LP head (Kumar et al., ICLR 2022)          ``wiseft``
``flyp``   both towers (and the logit scale), CLIP contrastive loss between images and       ``open_clip``
           class-prompt captions (Goyal et al., CVPR 2023); the classifier is the zero-shot  (``wiseft``
           head of the fine-tuned text tower (:mod:`.flyp`)                                  with head)
``lora``   LoRA on the attention q, k, v, out projections of the chosen towers, CE over      ``open_clip``
           the text classifier of the (adapted) text tower, as CLIP-LoRA (Zanella & Ben      merged +
           Ayed, 2024); merged on save, adapter also saved unmerged (:mod:`.lora`)           adapter
``lipsum`` ``ft`` + Lipsum-FT's energy matching on random texts against the zero-shot       ``wiseft``
           model (Nam et al., ICLR 2024) (:mod:`.lipsum`)
=========  ===============================================================================  ==========

A new recipe is one module here: a :class:`~.base.Recipe` subclass and a builder decorated with
:func:`~oodbench.finetune.registry.register_recipe`, imported below. The shared loop, resume and
export live in :mod:`oodbench.finetune.trainer`; the regularisers in
:mod:`oodbench.finetune.regularisers`; the linear probe fit in :mod:`oodbench.finetune.probe`.
"""

from ..common import describe_checkpoint
from ..config import FinetuneConfig, FinetuneResult
from ..probe import fit_linear_probe
from ..registry import DEFAULT_LR, get_recipe, recipe_names, register_recipe
from ..regularisers import REGULARISERS
from ..trainer import finetune

# isort: off
from . import lp, ft, flyp, lora, lipsum  # noqa: F401  (register the built-ins, in this order)
# isort: on
from .base import Recipe

RECIPES = recipe_names()

__all__ = ["DEFAULT_LR", "RECIPES", "REGULARISERS", "FinetuneConfig", "FinetuneResult", "Recipe",
           "describe_checkpoint", "finetune", "fit_linear_probe", "get_recipe", "recipe_names",
           "register_recipe"]
