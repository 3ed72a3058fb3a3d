"""Fine-tuning recipes for open_clip CLIPs, writing checkpoints that ``oodbench extract --ckpt`` reads.

=========  ===============================================================================  ==========
recipe     what trains, with which loss                                                      file format
=========  ===============================================================================  ==========
``lp``     logistic-regression head on L2-normalised image embeddings (scikit-learn),       ``wiseft``
           C chosen on ID val (accuracy, then log-loss); towers frozen
``ft``     image tower + a linear head initialised from the zero-shot text classifier        ``wiseft``
           (logit scale x normalised class text embeddings), cross-entropy
``lpft``   ``lp``, then ``ft`` starting from the LP head (Kumar et al., ICLR 2022)          ``wiseft``
``flyp``   both towers (and the logit scale), CLIP contrastive loss between images and       ``open_clip``
           class-prompt captions (Goyal et al., CVPR 2023); the classifier is the zero-shot  (``wiseft``
           head of the fine-tuned text tower                                                 with head)
``lora``   LoRA on the attention q, k, v, out projections of the chosen towers, CE over      ``open_clip``
           the text classifier of the (adapted) text tower, as CLIP-LoRA (Zanella & Ben      merged +
           Ayed, 2024); merged on save, adapter also saved unmerged                          adapter
=========  ===============================================================================  ==========

Representation-preserving regularisers (``reg``, any gradient recipe), weight ``reg_weight``:

* ``l2sp``: λ Σ‖θ − θ0‖² over the fine-tuned weights (Li, Grandvalet & Davoine, ICML 2018;
  for LoRA the merged updates ‖scale·BA‖²);
* ``feature``: λ · mean ‖ẑ(x) − ẑ0(x)‖², ẑ the L2-normalised image embedding of the
  fine-tuned / frozen zero-shot model (feature distillation towards the pre-trained features);
* ``ldifs``: LDIFS (Mukhoti et al., "Fine-tuning can cripple your foundation model; preserving
  features may be the solution", TMLR 2024, arXiv:2308.13320): the same distance summed over the
  outputs of every block of the image transformer (channel-normalised tokens, squared distance
  summed over channels, averaged over tokens, LPIPS-style) plus the final embedding.

Every gradient recipe is seeded (batches, augmentation, head/LoRA init), runs under autocast on
CUDA (bf16 where supported, else fp16 with a GradScaler), shows a rich progress bar with the loss
and the ID validation accuracy, saves a resume state every ``save_every`` steps
(``<name>.state.pt``: weights, optimizer, schedule, sampler RNG) and resumes from it. Exported
checkpoints (``<name>.pt``) carry an ``oodbench`` entry with the recipe, the full config, the
base model's fingerprint (:func:`oodbench.models.fingerprint_state`) and the fingerprint the
fine-tuned model will have in the store.
"""

from __future__ import annotations

import copy
import json
import math
import time
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..config import Catalogue, load_catalogue
from ..console import info, progress, warn
from ..errors import OodbenchError, suggest
from ..models import check_device, fingerprint_state, load_model
from ..models.loading import has_quick_gelu
from . import lora as lora_mod
from .data import BatchSampler, ImageSet, load_split, random_shift

RECIPES = ("lp", "ft", "lpft", "flyp", "lora")
REGULARISERS = ("none", "l2sp", "feature", "ldifs")
DEFAULT_LR = {"ft": 1e-4, "lpft": 1e-4, "flyp": 1e-4, "lora": 1e-3}
DEFAULT_REG_WEIGHT = {"none": 0.0, "l2sp": 1.0, "feature": 10.0, "ldifs": 10.0}
LP_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
STATE_FORMAT = "oodbench-finetune-state-v1"
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
    augment_shift: int = 2  # random ±pixels translation of training images (0: off)
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

    RUNTIME = ("device", "precision", "eval_every", "save_every", "benchmarks", "data_root")

    def __post_init__(self) -> None:
        self.recipe = self.recipe.lower().replace("-", "")
        if self.recipe not in RECIPES:
            raise suggest(self.recipe, RECIPES, "fine-tuning recipe")
        if self.reg not in REGULARISERS:
            raise suggest(self.reg, REGULARISERS, "regulariser")
        if self.reg != "none" and self.recipe == "lp":
            raise OodbenchError("lp trains no weights of the towers: a representation regulariser does not apply.")
        if self.lora_towers not in lora_mod.TOWERS:
            raise suggest(self.lora_towers, lora_mod.TOWERS, "LoRA towers option")
        for k in ("steps", "batch_size", "lora_rank", "eval_every", "save_every"):
            if int(getattr(self, k)) < 1:
                raise OodbenchError(f"{k} must be ≥ 1, got {getattr(self, k)}.")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise OodbenchError("precision must be auto, fp32, fp16 or bf16.")
        if not 0 <= self.warmup < 1:
            raise OodbenchError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}.")

    @property
    def run_name(self) -> str:
        return self.name or (self.recipe if self.reg == "none" else f"{self.recipe}-{self.reg}")

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


# ----------------------------------------------------------------------------- helpers

def _resolve_model(cfg: FinetuneConfig, cat: Catalogue) -> tuple[str, str | None]:
    bench = cat.benchmark(cfg.benchmark)
    model = cfg.model or bench.model.get("name")
    if not model:
        raise OodbenchError(f"Benchmark {cfg.benchmark!r} names no model: pass --model.")
    pretrained = cfg.pretrained
    if pretrained == "auto":
        pretrained = bench.model.get("pretrained") if model == bench.model.get("name") else None
        if pretrained is None and model != bench.model.get("name"):
            raise OodbenchError(f"Give --pretrained for {model} (the benchmark's model is {bench.model.get('name')}).")
    return model, pretrained


def amp_dtype(device: str, precision: str) -> torch.dtype | None:
    """The autocast dtype: None on CPU / fp32; on CUDA bf16 where supported (auto) else fp16."""
    if not device.startswith("cuda") or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def class_text_embeddings(model: nn.Module, tokens: torch.Tensor, n_templates: int, n_classes: int) -> torch.Tensor:
    """(C, D) unit-norm template-ensemble class embeddings (per-template normalise, mean, renormalise),
    as oodbench's zero-shot head (``TextBank.name_embeds('ensemble')``)."""
    t = F.normalize(model.encode_text(tokens).float(), dim=-1).view(n_templates, n_classes, -1)
    return F.normalize(t.mean(0), dim=-1)


def zero_shot_head(model: nn.Module, tokens: torch.Tensor, n_templates: int, n_classes: int) -> torch.Tensor:
    """logit_scale x class text embeddings: oodbench's zero-shot head as a (C, D) weight."""
    with torch.no_grad():
        return model.logit_scale.exp().float() * class_text_embeddings(model, tokens, n_templates, n_classes)


@torch.no_grad()
def embed_images(model: nn.Module, data: ImageSet, device: str, amp: torch.dtype | None,
                 batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image embeddings (N, D) float32 on the CPU, and the labels."""
    model.eval()
    out, labels = [], []
    for x, y in data.all(batch_size):
        with torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
            out.append(F.normalize(model.encode_image(x.to(device)).float(), dim=-1).cpu())
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


def _state_fingerprint(sd: dict[str, torch.Tensor], head_w: torch.Tensor | None, head_b: torch.Tensor | None) -> str:
    """The fingerprint load_model() computes for these weights + head (see fingerprint_state)."""
    shim = types.SimpleNamespace(state_dict=lambda: sd)
    extra = {"text_ctx": None}
    if head_w is not None:
        extra = {"head_weight": head_w.float(), "head_bias": head_b.float() if head_b is not None else None,
                 "text_ctx": None}
    return fingerprint_state(shim, extra)


def _save_atomic(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def fit_linear_probe(train_z: torch.Tensor, train_y: torch.Tensor, val_z: torch.Tensor | None,
                     val_y: torch.Tensor | None, n_classes: int, c: float | None = None, seed: int = 0,
                     grid: tuple[float, ...] = LP_GRID) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Multinomial logistic regression on unit-norm embeddings; (W (C, D), b (C,), info).

    ``c`` None: the inverse regularisation strength is chosen on the validation split (highest
    accuracy, ties broken by the lower log-loss); without a validation split C = 1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    xt, yt = train_z.numpy().astype(np.float64), train_y.numpy()
    present = np.unique(yt)
    if len(present) < 2:
        raise OodbenchError("A linear probe needs at least two classes in the training split.")
    candidates = [c] if c is not None else (list(grid) if val_z is not None else [1.0])
    trials, best = [], None
    for cand in candidates:
        clf = LogisticRegression(C=float(cand), max_iter=2000, random_state=seed)
        clf.fit(xt, yt)
        row: dict[str, Any] = {"C": float(cand)}
        if val_z is not None:
            xv, yv = val_z.numpy().astype(np.float64), val_y.numpy()
            proba = clf.predict_proba(xv)
            row["val_accuracy"] = float((clf.classes_[proba.argmax(1)] == yv).mean())
            row["val_log_loss"] = float(log_loss(yv, proba, labels=clf.classes_))
            key = (row["val_accuracy"], -row["val_log_loss"])
        else:
            key = (0.0, 0.0)
        trials.append(row)
        if best is None or key > best[0]:
            best = (key, clf, row)
    _, clf, row = best
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: softmax-equivalent two-row head
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    w = torch.zeros(n_classes, coef.shape[1])
    b = torch.full((n_classes,), -1e4)  # classes absent from the training split are never predicted
    w[torch.as_tensor(clf.classes_)] = torch.as_tensor(coef, dtype=torch.float32)
    b[torch.as_tensor(clf.classes_)] = torch.as_tensor(intercept, dtype=torch.float32)
    if len(present) < n_classes:
        warn(f"linear probe: {n_classes - len(present)} class(es) have no training image; they get bias -1e4.")
    return w, b, {"chosen_C": row["C"], "trials": trials}


# ----------------------------------------------------------------------------- regularisers

class _BlockTap:
    """Forward hooks collecting the output of every block of an image transformer."""

    def __init__(self, model: nn.Module) -> None:
        blocks = getattr(getattr(model.visual, "transformer", None), "resblocks", None)
        if blocks is None:
            raise OodbenchError("ldifs needs a transformer image tower (visual.transformer.resblocks).")
        self.out: list[torch.Tensor] = []
        self.handles = [b.register_forward_hook(self._hook) for b in blocks]

    def _hook(self, module, args, output) -> None:
        self.out.append(output[0] if isinstance(output, tuple) else output)

    def take(self) -> list[torch.Tensor]:
        out, self.out = self.out, []
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _feature_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample squared distance of channel-normalised features (tokens averaged)."""
    d = (F.normalize(a.float(), dim=-1) - F.normalize(b.float(), dim=-1)).pow(2).sum(-1)
    return d.reshape(d.shape[0], -1).mean(1) if d.ndim > 1 else d


class Regulariser:
    """``reg`` of the config: a penalty added to the recipe's loss."""

    def __init__(self, kind: str, weight: float, model: nn.Module, reference: nn.Module | None,
                 drift: callable) -> None:
        self.kind, self.weight, self.drift = kind, weight, drift
        self.ref = reference
        self.tap = self.ref_tap = None
        if kind == "ldifs":
            self.tap, self.ref_tap = _BlockTap(model), _BlockTap(reference)

    def __call__(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "l2sp":
            return self.weight * sum(d.float().pow(2).sum() for d in self.drift())
        with torch.no_grad():
            z0 = self.ref.encode_image(x)
        dist = _feature_distance(z, z0)
        if self.kind == "ldifs":
            feats, feats0 = self.tap.take(), self.ref_tap.take()
            for a, b in zip(feats, feats0, strict=True):
                dist = dist + _feature_distance(a, b)
        return self.weight * dist.mean()

    def reset(self) -> None:
        if self.tap is not None:
            self.tap.take()
            self.ref_tap.take()


# ----------------------------------------------------------------------------- recipes

class _Recipe:
    """One recipe's trainable parameters, loss and classifier, on top of the trainer's model."""

    uses_text_head = True  # the classifier is the text tower's zero-shot head (no linear head)

    def __init__(self, t: Trainer) -> None:
        self.t = t

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        raise NotImplementedError

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, unnormalised image embeddings of x)."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def begin_eval(self) -> None:
        """Called (under no_grad) before an evaluation pass: cache what does not depend on the images."""

    def end_eval(self) -> None:
        pass

    def drift(self) -> list[torch.Tensor]:
        """Tensors whose squared norm is the L2-SP penalty (fine-tuned minus initial weights)."""
        return [p - self.t.init_params[n] for n, p in self.named_parameters() if n in self.t.init_params]

    def head(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def head_init(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def export_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in self.t.model.state_dict().items()}


class FT(_Recipe):
    """Image tower + linear head on normalised embeddings, cross-entropy."""

    uses_text_head = False

    def __init__(self, t: Trainer, w0: torch.Tensor, b0: torch.Tensor) -> None:
        super().__init__(t)
        self.w0, self.b0 = w0.detach().clone().float(), b0.detach().clone().float()
        self.lin = nn.Linear(w0.shape[1], w0.shape[0]).to(t.device)
        with torch.no_grad():
            self.lin.weight.copy_(w0)
            self.lin.bias.copy_(b0)
        for n, p in t.model.named_parameters():
            p.requires_grad_(n.startswith("visual."))

    def named_parameters(self):
        own = [(n, p) for n, p in self.t.model.named_parameters() if n.startswith("visual.")]
        return own + [(f"head.{n}", p) for n, p in self.lin.named_parameters()]

    def drift(self):
        return [p - self.t.init_params[n] for n, p in self.t.model.named_parameters() if n.startswith("visual.")]

    def loss(self, x, y):
        z = self.t.model.encode_image(x)
        logits = self.lin(F.normalize(z.float(), dim=-1))
        return F.cross_entropy(logits, y, label_smoothing=self.t.cfg.label_smoothing), z

    def logits(self, x):
        return self.lin(F.normalize(self.t.model.encode_image(x).float(), dim=-1))

    def head(self):
        return self.lin.weight.detach().float().cpu().clone(), self.lin.bias.detach().float().cpu().clone()

    def head_init(self):
        return self.w0.cpu(), self.b0.cpu()

    def state_dict(self):
        return {"head": self.lin.state_dict()}

    def load_state_dict(self, state):
        self.lin.load_state_dict(state["head"])


class FLYP(_Recipe):
    """Both towers, CLIP loss between images and class-prompt captions of their labels."""

    def __init__(self, t: Trainer) -> None:
        super().__init__(t)
        for p in t.model.parameters():
            p.requires_grad_(True)

    def named_parameters(self):
        return list(self.t.model.named_parameters())

    def loss(self, x, y):
        t = self.t
        tmpl = torch.randint(0, t.n_templates, (x.shape[0],), generator=t.sampler.gen).to(y.device)
        cap = tmpl * t.n_classes + y  # index into the (T*C) prompt tokens
        uniq, inv = torch.unique(cap, return_inverse=True)
        txt = F.normalize(t.model.encode_text(t.tokens[uniq]).float(), dim=-1)[inv]
        z = t.model.encode_image(x)
        img = F.normalize(z.float(), dim=-1)
        logits = t.model.logit_scale.exp().float() * img @ txt.T
        # same-class captions are positives too (a batch of a few classes repeats captions)
        target = (y[:, None] == y[None, :]).float()
        target = target / target.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)), z

    def begin_eval(self):
        t = self.t
        self._eval_text = class_text_embeddings(t.model, t.tokens, t.n_templates, t.n_classes)

    def end_eval(self):
        self._eval_text = None

    def logits(self, x):
        t = self.t
        text = getattr(self, "_eval_text", None)
        if text is None:
            text = class_text_embeddings(t.model, t.tokens, t.n_templates, t.n_classes)
        return t.model.logit_scale.exp().float() * F.normalize(t.model.encode_image(x).float(), dim=-1) @ text.T


class LoRA(_Recipe):
    """LoRA modules on the attention projections; CE over the (adapted) text tower's classifier."""

    def __init__(self, t: Trainer) -> None:
        super().__init__(t)
        cfg = t.cfg
        targets = tuple(s.strip() for s in cfg.lora_targets.split(",") if s.strip())
        self.blocks = lora_mod.apply_lora(t.model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_towers, targets,
                                          seed=cfg.seed)
        self.text_trains = cfg.lora_towers in ("text", "both")
        self.fixed_text = self._eval_text = None
        # training prompts: the template ensemble, or (many classes x templates) the first template only,
        # as CLIP-LoRA encodes one prompt per class at every step
        self.n_train_templates = t.n_templates if t.n_templates * t.n_classes <= 1024 else 1
        if not self.text_trains:
            with torch.no_grad():
                self.fixed_text = class_text_embeddings(t.model, t.tokens, t.n_templates, t.n_classes)

    def named_parameters(self):
        return [(n, p) for n, p in self.t.model.named_parameters() if "lora_" in n]

    def drift(self):
        return [m.delta() for m in self.t.model.modules() if isinstance(m, lora_mod.LoRAPair)]

    def _text(self, train: bool = True):
        t = self.t
        if self.fixed_text is not None:
            return self.fixed_text
        if not train:
            if self._eval_text is not None:
                return self._eval_text
            return class_text_embeddings(t.model, t.tokens, t.n_templates, t.n_classes)
        n = self.n_train_templates
        return class_text_embeddings(t.model, t.tokens[: n * t.n_classes], n, t.n_classes)

    def begin_eval(self):
        if self.fixed_text is None:
            t = self.t
            self._eval_text = class_text_embeddings(t.model, t.tokens, t.n_templates, t.n_classes)

    def end_eval(self):
        self._eval_text = None

    def loss(self, x, y):
        z = self.t.model.encode_image(x)
        logits = self.t.model.logit_scale.exp().float() * F.normalize(z.float(), dim=-1) @ self._text().T
        return F.cross_entropy(logits, y, label_smoothing=self.t.cfg.label_smoothing), z

    def logits(self, x):
        return self.t.model.logit_scale.exp().float() * F.normalize(
            self.t.model.encode_image(x).float(), dim=-1) @ self._text(train=False).T

    def export_state(self):
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in lora_mod.merged_state_dict(self.t.model).items()}


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """Builds the base model and data for a config, runs a recipe, saves and resumes."""

    def __init__(self, cfg: FinetuneConfig, out_dir: Path, catalogue: Catalogue | None = None,
                 store: str | Path | None = None) -> None:
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.cat = catalogue or load_catalogue(cfg.benchmarks)
        self.bench = self.cat.benchmark(cfg.benchmark)
        self.model_name, self.pretrained = _resolve_model(cfg, self.cat)
        self.device = check_device(cfg.device)
        self.amp = amp_dtype(self.device, cfg.precision)
        self.store = store
        torch.manual_seed(cfg.seed)
        bundle = load_model(self.model_name, self.pretrained, device=self.device, seed=cfg.seed)
        self.bundle = bundle
        self.model = bundle.model
        self.base_fingerprint = bundle.fingerprint
        self.preprocess, self.tokenizer = bundle.preprocess, bundle.tokenizer
        self.classes, self.templates = list(self.bench.classes), list(self.bench.templates)
        self.n_classes, self.n_templates = len(self.classes), len(self.templates)
        self.tokens = self.tokenizer([t.format(c) for t in self.templates for c in self.classes]).to(self.device)
        self.history: list[dict[str, float]] = []
        self.lp_info: dict[str, Any] | None = None

    # -- paths
    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / f"{self.cfg.run_name}.pt"

    @property
    def state_path(self) -> Path:
        return self.out_dir / f"{self.cfg.run_name}.state.pt"

    @property
    def adapter_path(self) -> Path:
        return self.out_dir / f"{self.cfg.run_name}.lora.pt"

    # -- data
    def data(self) -> tuple[ImageSet, ImageSet | None]:
        train = load_split(self.cat, self.bench.id_train, self.preprocess, self.cfg.data_root)
        val = load_split(self.cat, self.bench.id_val, self.preprocess, self.cfg.data_root) if self.bench.id_val else None
        return train, val

    def lp_features(self, data: ImageSet, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised embeddings of the base model: from the store when it has them, else computed."""
        if self.store is not None:
            from ..store import FeatureFile, Store

            path = Store(self.store).features_path(self.bundle.key, dataset)
            if path.exists():
                ff = FeatureFile(path)
                if ff.attrs.get("model_fingerprint") == self.base_fingerprint:
                    z = torch.as_tensor(ff.load("image_embeds"), dtype=torch.float32)
                    info(f"[dim]linear probe: cached features[/] {path}")
                    return F.normalize(z, dim=-1), torch.as_tensor(ff.load("labels"), dtype=torch.long)
        return embed_images(self.model, data, self.device, self.amp)

    def linear_probe(self, train: ImageSet, val: ImageSet | None) -> tuple[torch.Tensor, torch.Tensor]:
        zt, yt = self.lp_features(train, self.bench.id_train)
        zv, yv = self.lp_features(val, self.bench.id_val) if val is not None else (None, None)
        w, b, self.lp_info = fit_linear_probe(zt, yt, zv, yv, self.n_classes, self.cfg.lp_c, self.cfg.seed)
        acc = self.lp_info["trials"][[r["C"] for r in self.lp_info["trials"]].index(self.lp_info["chosen_C"])]
        info(f"linear probe: C = {self.lp_info['chosen_C']:g}"
             + (f", ID val accuracy {acc['val_accuracy']:.3f}" if "val_accuracy" in acc else ""))
        return w, b

    def make_recipe(self, train: ImageSet, val: ImageSet | None) -> _Recipe:
        r = self.cfg.recipe
        if r == "ft":
            w0 = zero_shot_head(self.model, self.tokens, self.n_templates, self.n_classes)
            return FT(self, w0, torch.zeros(self.n_classes, device=self.device))
        if r == "lpft":
            w, b = self.linear_probe(train, val)
            return FT(self, w.to(self.device), b.to(self.device))
        if r == "flyp":
            return FLYP(self)
        if r == "lora":
            return LoRA(self)
        raise OodbenchError(f"recipe {r!r} has no training loop")

    @torch.no_grad()
    def evaluate(self, recipe: _Recipe, val: ImageSet | None) -> float | None:
        if val is None:
            return None
        self.model.eval()
        correct = 0
        amp = {"device_type": self.device.split(":")[0], "dtype": self.amp or torch.float32, "enabled": self.amp is not None}
        with torch.autocast(**amp):
            recipe.begin_eval()
        for x, y in val.all(256):
            with torch.autocast(**amp):
                logits = recipe.logits(x.to(self.device))
            correct += int((logits.argmax(1).cpu() == y).sum())
        recipe.end_eval()
        self.model.train()
        return correct / len(val)

    # -- checkpoints
    def meta(self, step: int, val_acc: float | None, fingerprint: str, extra: dict | None = None) -> dict[str, Any]:
        return _jsonable({
            "format_version": CKPT_FORMAT_VERSION, "recipe": self.cfg.recipe, "name": self.cfg.run_name,
            "config": self.cfg.to_dict(), "identity": self.cfg.identity(),
            "model": self.model_name, "pretrained": self.pretrained, "init_seed": self.cfg.seed,
            "base_fingerprint": self.base_fingerprint, "fingerprint": fingerprint,
            "benchmark": self.bench.name, "classes": self.classes, "templates": self.templates,
            "head_input": "embeds", "step": step, "val_accuracy": val_acc, "history": self.history,
            "linear_probe": self.lp_info, "oodbench_version": __version__, "torch_version": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {}),
        })

    def export(self, sd: dict[str, torch.Tensor], head: tuple, head_init: tuple, step: int,
               val_acc: float | None, extra: dict | None = None) -> tuple[Path, str]:
        """Write the checkpoint: wiseft layout (state dict + classification_head) if there is a head,
        else a plain open_clip state dict; both with the ``oodbench`` metadata entry."""
        w, b = head
        fp = _state_fingerprint(sd, w, b)
        state = dict(sd)
        if w is not None:
            state["classification_head.weight"] = w
            state["classification_head.bias"] = b if b is not None else torch.zeros(w.shape[0])
        obj: dict[str, Any] = {"state_dict": state, "oodbench": self.meta(step, val_acc, fp, extra),
                               "quick_gelu": has_quick_gelu(self.model)}
        if head_init[0] is not None:
            obj["head_init"] = {"weight": head_init[0].float().cpu(), "bias": head_init[1].float().cpu()}
        _save_atomic(obj, self.ckpt_path)
        return self.ckpt_path, fp


def _param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """open_clip's rule: no weight decay on gains, biases, norms, embeddings' scale and logit_scale."""
    def exclude(n: str, p: nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    decay = [p for n, p in named if p.requires_grad and not exclude(n, p)]
    rest = [p for n, p in named if p.requires_grad and exclude(n, p)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _schedule(opt: torch.optim.Optimizer, steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    n_warm = int(round(warmup * steps))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        progress_ = (step - n_warm) / max(1, steps - n_warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def finetune(cfg: FinetuneConfig, out_dir: str | Path = "finetune_runs", *, resume: bool = True,
             overwrite: bool = False, store: str | Path | None = None, catalogue: Catalogue | None = None,
             stop_after: int | None = None) -> FinetuneResult:
    """Run ``cfg`` and write ``<out_dir>/<name>.pt`` (plus ``<name>.lora.pt`` for LoRA).

    ``resume``: continue from ``<name>.state.pt`` if it was written by the same config (a
    finished run is returned as is, without training). ``overwrite``: start over even if files
    of another config exist (else that is refused). ``store``: a feature store whose base-model
    features the linear probe may reuse. ``stop_after``: stop (saving the resume state) after
    this many steps of this call, e.g. to split a run across jobs.
    """
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    t = Trainer(cfg, Path(out_dir), catalogue, store)
    train, val = t.data()
    if cfg.recipe == "lp":
        return _run_lp(t, train, val, t0, resume, overwrite)
    state = _existing_state(t, resume, overwrite)
    reference = None
    if cfg.reg in ("feature", "ldifs"):  # the frozen zero-shot model, copied before any change
        reference = copy.deepcopy(t.model).eval().requires_grad_(False)
    t.init_params = {}
    if cfg.reg == "l2sp":  # L2-SP measures the drift from the base weights
        t.init_params = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    recipe = t.make_recipe(train, val)
    reg = Regulariser(cfg.reg, cfg.regulariser_weight, t.model, reference, recipe.drift) if cfg.reg != "none" else None
    named = recipe.named_parameters()
    opt = torch.optim.AdamW(_param_groups(named, cfg.weight_decay), lr=cfg.learning_rate)
    sched = _schedule(opt, cfg.steps, cfg.warmup)
    scaler = torch.amp.GradScaler("cuda", enabled=t.amp == torch.float16)
    sampler = BatchSampler(len(train), cfg.batch_size, cfg.seed)
    t.sampler = sampler
    step, resumed_from = 0, 0
    if state is not None:
        t.model.load_state_dict(state["model"])
        recipe.load_state_dict(state["recipe"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        step = resumed_from = int(state["step"])
        t.history = list(state.get("history", []))
    if resumed_from >= cfg.steps and t.ckpt_path.exists():
        return _result(t, recipe, cfg, step, t.history[-1]["val_accuracy"] if t.history else None,
                       resumed_from, t0, cached=True)
    if resumed_from:
        info(f"{cfg.run_name}: resuming at step {resumed_from}/{cfg.steps} from {t.state_path}")

    def save_state(step: int) -> None:
        _save_atomic({"format": STATE_FORMAT, "step": step, "identity": _jsonable(cfg.identity()),
                      "base_fingerprint": t.base_fingerprint, "model": t.model.state_dict(),
                      "recipe": recipe.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "scaler": scaler.state_dict(), "sampler": sampler.state_dict(),
                      "torch_rng": torch.get_rng_state(), "history": t.history}, t.state_path)

    end = cfg.steps if stop_after is None else min(cfg.steps, step + int(stop_after))
    val_acc = t.history[-1]["val_accuracy"] if t.history else t.evaluate(recipe, val)
    t.model.train()
    dev_type = t.device.split(":")[0]
    running = None
    with progress("step") as bar:
        task = bar.add_task(f"{cfg.run_name} on {cfg.benchmark}", total=cfg.steps, completed=step,
                            rate=_rate(None, val_acc))
        while step < end:
            x, y = train.batch(sampler.next())
            x = random_shift(x, cfg.augment_shift, sampler.gen)
            x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
            if reg is not None:
                reg.reset()  # the block taps keep only this step's forward
            with torch.autocast(dev_type, dtype=t.amp or torch.float32, enabled=t.amp is not None):
                loss, z = recipe.loss(x, y)
                if reg is not None:
                    loss = loss + reg(x, z)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if cfg.recipe == "flyp":
                with torch.no_grad():
                    t.model.logit_scale.clamp_(0, math.log(100))
            step += 1
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise OodbenchError(f"{cfg.run_name}: the loss became {lv} at step {step}: lower --lr.")
            running = lv if running is None else 0.9 * running + 0.1 * lv
            if step % cfg.eval_every == 0 or step == cfg.steps:
                val_acc = t.evaluate(recipe, val)
                t.history.append({"step": step, "loss": round(running, 6),
                                  "val_accuracy": None if val_acc is None else round(val_acc, 6)})
            if step % cfg.save_every == 0 or step == end:
                save_state(step)
            bar.update(task, advance=1, rate=_rate(running, val_acc))
    if step < cfg.steps:
        info(f"{cfg.run_name}: stopped at step {step}/{cfg.steps}; resume state in {t.state_path}")
        return _result(t, recipe, cfg, step, val_acc, resumed_from, t0, export=False)
    return _result(t, recipe, cfg, step, val_acc, resumed_from, t0)


def _rate(loss: float | None, acc: float | None) -> str:
    parts = []
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    if acc is not None:
        parts.append(f"ID val acc {acc:.3f}")
    return " · ".join(parts)


def _existing_state(t: Trainer, resume: bool, overwrite: bool) -> dict | None:
    if overwrite:
        for p in (t.state_path, t.ckpt_path, t.adapter_path):
            p.unlink(missing_ok=True)
        return None
    if not t.state_path.exists():
        if t.ckpt_path.exists() and not overwrite:
            raise OodbenchError(f"{t.ckpt_path} exists but has no resume state next to it: pass --overwrite "
                                "(or another --name / --out) to train again.")
        return None
    state = torch.load(t.state_path, map_location="cpu", weights_only=True)
    same = state.get("identity") == _jsonable(t.cfg.identity()) and state.get("base_fingerprint") == t.base_fingerprint
    if not same:
        raise OodbenchError(f"{t.state_path} was written by another configuration or base model: pass --overwrite "
                            "to start over, or choose another --name / --out.")
    if not resume:
        if state["step"] >= t.cfg.steps and t.ckpt_path.exists():
            raise OodbenchError(f"{t.ckpt_path} is already trained with this configuration: pass --overwrite to "
                                "train it again.")
        return None
    return state


def _result(t: Trainer, recipe: _Recipe, cfg: FinetuneConfig, step: int, val_acc: float | None, resumed_from: int,
            t0: float, export: bool = True, cached: bool = False) -> FinetuneResult:
    # as load_model() returns it: eval mode, every parameter requires grad (frozen parameters switch
    # nn.MultiheadAttention to its fused inference path, whose numbers differ in the last bits)
    t.model.eval().requires_grad_(True)
    head, head_init = recipe.head(), recipe.head_init()
    if cfg.recipe == "flyp" and cfg.flyp_head:
        head = (zero_shot_head(t.model, t.tokens, t.n_templates, t.n_classes).cpu(), torch.zeros(t.n_classes))
    sd = recipe.export_state()
    fp = _state_fingerprint(sd, *head)
    adapter = None
    if cfg.recipe == "lora":
        adapter = t.adapter_path
    if export and not cached:
        extra = {"train_seconds": round(time.time() - t0, 2)}
        if cfg.recipe == "lora":
            extra["lora_blocks"] = getattr(recipe, "blocks", None)
        _, fp = t.export(sd, head, head_init, step, val_acc, extra)
        if cfg.recipe == "lora":
            lora_mod.save_adapter(t.model, adapter, rank=cfg.lora_rank, alpha=cfg.lora_alpha, towers=cfg.lora_towers,
                                  meta={"base_fingerprint": t.base_fingerprint, "model": t.model_name,
                                        "pretrained": t.pretrained, "oodbench_run": cfg.run_name},
                                  quick_gelu=has_quick_gelu(t.model))
        info(f"{cfg.run_name}: wrote {t.ckpt_path}" + (f" and {adapter}" if adapter else "")
             + (f" (ID val accuracy {val_acc:.3f})" if val_acc is not None else ""))
    elif cached:
        info(f"[dim]cached[/] {cfg.run_name}: {t.ckpt_path}")
        t0 = time.time() - float(describe_checkpoint(t.ckpt_path).get("train_seconds") or 0.0)
    return FinetuneResult(path=t.ckpt_path, config=cfg, model=t.model, head_weight=head[0], head_bias=head[1],
                          preprocess=t.preprocess, tokenizer=t.tokenizer, base_fingerprint=t.base_fingerprint,
                          fingerprint=fp, step=step, val_accuracy=val_acc, history=list(t.history),
                          adapter_path=adapter, resumed_from=resumed_from, seconds=round(time.time() - t0, 2),
                          cached=cached)


def _run_lp(t: Trainer, train: ImageSet, val: ImageSet | None, t0: float, resume: bool = True,
            overwrite: bool = False) -> FinetuneResult:
    if t.ckpt_path.exists() and not overwrite:
        obj = torch.load(t.ckpt_path, map_location="cpu", weights_only=True)
        meta = obj.get("oodbench", {}) if isinstance(obj, dict) else {}
        same = meta.get("identity") == _jsonable(t.cfg.identity()) and meta.get("base_fingerprint") == t.base_fingerprint
        if not same:
            raise OodbenchError(f"{t.ckpt_path} was written by another configuration or base model: pass --overwrite "
                                "to replace it, or choose another --name / --out.")
        if resume:
            info(f"[dim]cached[/] {t.cfg.run_name}: {t.ckpt_path}")
            sd = obj["state_dict"]
            w, b = sd["classification_head.weight"], sd["classification_head.bias"]
            t.lp_info = meta.get("linear_probe")
            return FinetuneResult(path=t.ckpt_path, config=t.cfg, model=t.model.eval(), head_weight=w, head_bias=b,
                                  preprocess=t.preprocess, tokenizer=t.tokenizer, base_fingerprint=t.base_fingerprint,
                                  fingerprint=meta.get("fingerprint", ""), step=0, val_accuracy=meta.get("val_accuracy"),
                                  seconds=float(meta.get("train_seconds") or 0.0), cached=True)
    w, b = t.linear_probe(train, val)
    trial = next(r for r in t.lp_info["trials"] if r["C"] == t.lp_info["chosen_C"])
    val_acc = trial.get("val_accuracy")
    sd = {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
          for k, v in t.model.state_dict().items()}
    zs = zero_shot_head(t.model, t.tokens, t.n_templates, t.n_classes).cpu()
    path, fp = t.export(sd, (w, b), (zs, torch.zeros(t.n_classes)), 0, val_acc,
                        {"train_seconds": round(time.time() - t0, 2)})
    info(f"lp: wrote {path}")
    return FinetuneResult(path=path, config=t.cfg, model=t.model.eval(), head_weight=w, head_bias=b,
                          preprocess=t.preprocess, tokenizer=t.tokenizer, base_fingerprint=t.base_fingerprint,
                          fingerprint=fp, step=0, val_accuracy=val_acc, seconds=round(time.time() - t0, 2))


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``oodbench`` metadata entry of a checkpoint written by :func:`finetune` (or {})."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    return dict(obj.get("oodbench", {})) if isinstance(obj, dict) else {}


__all__ = ["DEFAULT_LR", "RECIPES", "REGULARISERS", "FinetuneConfig", "FinetuneResult", "describe_checkpoint",
           "finetune", "fit_linear_probe"]
