"""The shared trainer: builds the base model and data for a config, runs a registered recipe's
gradient loop (AdamW, warm-up + cosine schedule, autocast, GradScaler), evaluates, saves and
resumes, and exports the checkpoint.

Every gradient recipe is seeded (batches, augmentation, head/LoRA init), runs under autocast on
CUDA (bf16 where supported, else fp16 with a GradScaler), shows a rich progress bar with the loss
and the ID validation accuracy, saves a resume state every ``save_every`` steps
(``<name>.state.pt``: weights, optimizer, schedule, step; batches are a function of (seed, step)) and resumes from it. Exported
checkpoints (``<name>.pt``) carry an ``oodbench`` entry with the recipe, the full config, the
base model's fingerprint (:func:`oodbench.models.fingerprint_state`) and the fingerprint the
fine-tuned model will have in the store.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..config import Catalogue, load_catalogue
from ..console import info, progress
from ..errors import OodbenchError
from ..models import check_device, load_model
from ..models.loading import has_quick_gelu
from .common import (
    _jsonable,
    _save_atomic,
    _state_fingerprint,
    amp_dtype,
    describe_checkpoint,
    embed_images,
    load_checkpoint_file,
)
from .config import CKPT_FORMAT_VERSION, STATE_FORMAT, FinetuneConfig, FinetuneResult
from .data import (
    EpochStream,
    ImageSet,
    TrainTransform,
    load_split,
    random_shift,
    rank_part,
    step_generator,
    train_batches,
)
from .probe import fit_linear_probe
from .recipes.base import Recipe
from .registry import get_recipe
from .regularisers import Regulariser


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


class Trainer:
    """Builds the base model and data for a config, runs a recipe, saves and resumes."""

    def __init__(self, cfg: FinetuneConfig, out_dir: Path, catalogue: Catalogue | None = None,
                 store: str | Path | None = None) -> None:
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.cat = catalogue or load_catalogue(cfg.benchmarks)
        self.bench = self.cat.benchmark(cfg.benchmark)
        self.model_name, self.pretrained = _resolve_model(cfg, self.cat)
        from ..distributed import dist_info, init_from_env

        self.device = init_from_env(check_device(cfg.device))  # torchrun: join the group, cuda:LOCAL_RANK
        if self.device.startswith("cuda:"):
            torch.cuda.set_device(self.device)
        self.rank, self.world = dist_info()
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
        self.step = self.micro = self.n_train = 0  # the current step / micro-batch (seeds its draws)
        self.n_steps = cfg.steps
        self.reference: nn.Module | None = None  # frozen copy of the base (feature/ldifs regularisers, lipsum)

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
        cfg = self.cfg
        rrc = cfg.augment == "rrc"  # crops the decoded image: DataLoader workers decode it every step
        train = load_split(self.cat, self.bench.id_train, self.preprocess, cfg.data_root,
                           max_in_memory=0 if rrc and cfg.workers > 0 else cfg.max_in_memory, shots=cfg.shots,
                           seed=cfg.seed, keep_raw=rrc)
        val = (load_split(self.cat, self.bench.id_val, self.preprocess, cfg.data_root, max_in_memory=cfg.max_in_memory)
               if self.bench.id_val else None)
        self.n_train = len(train)
        if cfg.shots:
            info(f"{cfg.run_name}: {cfg.shots}-shot split of {self.bench.id_train}: {len(train)} images")
        return train, val

    def rng(self, stream: str) -> torch.Generator:
        """The generator of this step's (and micro-batch's) ``stream`` draws."""
        return step_generator(self.cfg.seed, self.step, f"{stream}{self.micro}")

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

    def make_recipe(self, train: ImageSet, val: ImageSet | None) -> Recipe:
        """The registered gradient recipe of the config, built on this trainer's model."""
        spec = get_recipe(self.cfg.recipe)
        if spec.runs_itself:
            raise OodbenchError(f"recipe {spec.name!r} has no training loop")
        return spec.fn(self, train, val)

    @torch.no_grad()
    def evaluate(self, recipe: Recipe, val: ImageSet | None) -> float | None:
        if val is None:
            return None
        self.model.eval()
        correct = 0
        amp = {"device_type": self.device.split(":")[0], "dtype": self.amp or torch.float32, "enabled": self.amp is not None}
        with torch.autocast(**amp):
            recipe.begin_eval()
        for x, y in val.all(256, self.cfg.workers):
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
        fp = _state_fingerprint(sd, w, b, self.model_name)
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
    spec = get_recipe(cfg.recipe)
    if spec.runs_itself:
        return spec.fn(t, train, val, t0, resume, overwrite)
    n_steps = cfg.total_steps(len(train))
    t.n_steps = n_steps
    if t.world > 1:
        if cfg.batch_size % (t.world * cfg.accum_steps):
            raise OodbenchError(f"torchrun with {t.world} ranks: --batch-size {cfg.batch_size} must be a multiple of "
                                f"ranks x --accum-steps ({t.world * cfg.accum_steps}).")

    state = _existing_state(t, resume, overwrite)
    reference = None
    if cfg.reg in ("feature", "ldifs") or spec.needs_reference:  # the frozen zero-shot model, before any change
        reference = copy.deepcopy(t.model).eval().requires_grad_(False)
    t.reference = reference
    t.init_params = {}
    if cfg.reg == "l2sp":  # L2-SP measures the drift from the base weights
        t.init_params = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    recipe = t.make_recipe(train, val)
    reg = Regulariser(cfg.reg, cfg.regulariser_weight, t.model, reference, recipe.drift) if cfg.reg != "none" else None
    named = recipe.named_parameters()
    opt = torch.optim.AdamW(_param_groups(named, cfg.weight_decay), lr=cfg.learning_rate)
    sched = _schedule(opt, n_steps, cfg.warmup)
    scaler = torch.amp.GradScaler("cuda", enabled=t.amp == torch.float16)
    stream = EpochStream(len(train), cfg.batch_size, cfg.seed)
    transform = TrainTransform(t.preprocess, cfg.augment, cfg.seed, (cfg.rrc_scale, 1.0))
    step, resumed_from = 0, 0
    best: dict[str, Any] | None = None  # keep_best: {"step", "val_accuracy", "model", "recipe"}
    if state is not None:
        t.model.load_state_dict(state["model"])
        recipe.load_state_dict(state["recipe"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        step = resumed_from = int(state["step"])
        t.history = list(state.get("history", []))
        best = state.get("best")
    if resumed_from >= n_steps and t.ckpt_path.exists():
        return _result(t, recipe, cfg, step, t.history[-1]["val_accuracy"] if t.history else None,
                       resumed_from, t0, cached=True, best=best)
    if resumed_from:
        info(f"{cfg.run_name}: resuming at step {resumed_from}/{n_steps} (epoch {stream.epoch_of(step):.2f}) "
             f"from {t.state_path}")

    def save_state(step: int) -> None:
        if t.rank != 0:  # rank 0 writes; every rank holds the same weights
            return
        _save_atomic({"format": STATE_FORMAT, "step": step, "identity": _jsonable(cfg.identity()),
                      "base_fingerprint": t.base_fingerprint, "model": t.model.state_dict(),
                      "recipe": recipe.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "scaler": scaler.state_dict(), "sampler": stream.state_dict(),
                      "torch_rng": torch.get_rng_state(), "history": t.history, "best": best}, t.state_path)

    end = n_steps if stop_after is None else min(n_steps, step + int(stop_after))
    val_acc = t.history[-1]["val_accuracy"] if t.history else t.evaluate(recipe, val)
    t.model.train()
    accum = int(cfg.accum_steps)
    running = None
    part = rank_part(cfg.batch_size, t.rank, t.world)
    batches = train_batches(train, stream, transform, step, end, cfg.workers, t.device.startswith("cuda"), part)
    with progress("step") as bar:
        task = bar.add_task(f"{cfg.run_name} on {cfg.benchmark}", total=n_steps, completed=step,
                            rate=_rate(None, val_acc))
        for s, x, y in batches:
            t.step = s
            if cfg.augment == "shift":
                fill = _global_min(x) if t.world > 1 else None  # the border of the whole global batch
                x = random_shift(x, cfg.augment_shift, step_generator(cfg.seed, s, "shift"), part, cfg.batch_size, fill)
            x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            lv = accumulate_step(t, recipe, reg, x, y, accum, scaler, named, cfg.grad_clip, opt, t.world)
            if t.world > 1:  # the ranks' shares of the global loss (a global loss counted once)
                lv = _global_sum(lv) / (t.world if recipe.loss_is_global else 1)
            scaler.step(opt)
            scaler.update()
            sched.step()
            recipe.after_step()
            step = s + 1
            if not math.isfinite(lv):
                raise OodbenchError(f"{cfg.run_name}: the loss became {lv} at step {step}: lower --lr.")
            running = lv if running is None else 0.9 * running + 0.1 * lv
            if step % cfg.eval_every == 0 or step == n_steps:
                val_acc = t.evaluate(recipe, val)
                t.history.append({"step": step, "loss": round(running, 6),
                                  "val_accuracy": None if val_acc is None else round(val_acc, 6)})
                if cfg.keep_best and val_acc is not None and (best is None or val_acc > best["val_accuracy"]):
                    best = {"step": step, "val_accuracy": val_acc,
                            "model": {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()},
                            "recipe": copy.deepcopy(recipe.state_dict())}
            if step % cfg.save_every == 0 or step == end:
                save_state(step)
            bar.update(task, advance=1, rate=_rate(running, val_acc))
    if step < n_steps:
        info(f"{cfg.run_name}: stopped at step {step}/{n_steps}; resume state in {t.state_path}")
        return _result(t, recipe, cfg, step, val_acc, resumed_from, t0, export=False)
    return _result(t, recipe, cfg, step, val_acc, resumed_from, t0, best=best)


def accumulate_step(t: Trainer, recipe: Recipe, reg: Regulariser | None, x: torch.Tensor, y: torch.Tensor,
                    accum: int, scaler: torch.amp.GradScaler, named: list[tuple[str, nn.Parameter]],
                    grad_clip: float | None = None, opt: torch.optim.Optimizer | None = None,
                    world: int = 1) -> float:
    """Forward + backward of one global batch (B) as ``accum`` micro-batches (B / accum each): each
    micro-batch's mean loss is weighted by its share of B, so the summed gradients are those of the
    global batch's mean loss; then the global gradient norm is clipped to ``grad_clip``. Returns
    the global batch's mean loss."""
    dev_type = t.device.split(":")[0]
    lv = 0.0
    for t.micro, (xm, ym) in enumerate(zip(x.chunk(accum), y.chunk(accum), strict=True)):
        if reg is not None:
            reg.reset()  # the block taps keep only this micro-batch's forward
        with torch.autocast(dev_type, dtype=t.amp or torch.float32, enabled=t.amp is not None):
            loss, z = recipe.loss(xm, ym)
            if reg is not None:
                loss = loss + reg(xm, z)
        share = xm.shape[0] / (x.shape[0] * world)
        scaler.scale(loss * share).backward()
        lv += float(loss.detach()) * share
    t.micro = 0
    if world > 1:
        _all_reduce_grads([p for _, p in named if p.requires_grad])
    if grad_clip is not None:
        if opt is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for _, p in named if p.grad is not None], float(grad_clip))
    return lv


def _all_reduce_grads(params: list[nn.Parameter]) -> None:
    """Sum the gradients over ranks in one flat all-reduce (what DDP's buckets do; done by hand
    because the recipes call encode_image / encode_text, which bypass DistributedDataParallel.forward)."""
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    o = 0
    for p in params:
        p.grad.copy_(flat[o:o + p.numel()].view_as(p.grad))
        o += p.numel()


def _global_min(x: torch.Tensor) -> float:
    import torch.distributed as dist

    m = x.min().detach().float().reshape(1).clone()
    dist.all_reduce(m, op=dist.ReduceOp.MIN)
    return float(m)


def _global_sum(v: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([v], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)


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
    state = load_checkpoint_file(t.state_path, "pass --overwrite to train again")
    same = state.get("identity") == _jsonable(t.cfg.identity()) and state.get("base_fingerprint") == t.base_fingerprint
    if not same:
        raise OodbenchError(f"{t.state_path} was written by another configuration or base model: pass --overwrite "
                            "to start over, or choose another --name / --out.")
    if not resume:
        if state["step"] >= t.n_steps and t.ckpt_path.exists():
            raise OodbenchError(f"{t.ckpt_path} is already trained with this configuration: pass --overwrite to "
                                "train it again.")
        return None
    return state


def _result(t: Trainer, recipe: Recipe, cfg: FinetuneConfig, step: int, val_acc: float | None, resumed_from: int,
            t0: float, export: bool = True, cached: bool = False, best: dict | None = None) -> FinetuneResult:
    best_meta = {}
    if best is not None:  # keep_best: export the best-on-ID-val weights (never chosen on OoD data)
        t.model.load_state_dict(best["model"])
        recipe.load_state_dict(best["recipe"])
        val_acc = best["val_accuracy"]
        best_meta = {"best_step": best["step"], "final_step": step}
    # as load_model() returns it: eval mode, every parameter requires grad (frozen parameters switch
    # nn.MultiheadAttention to its fused inference path, whose numbers differ in the last bits)
    t.model.eval().requires_grad_(True)
    head, head_init = recipe.export_head(), recipe.head_init()
    sd = recipe.export_state()
    fp = _state_fingerprint(sd, *head, t.model_name)
    adapter = t.adapter_path if recipe.writes_adapter else None
    if t.world > 1:
        from ..distributed import barrier

        barrier()  # every rank has finished its steps
    if export and not cached and t.rank == 0:
        extra = {"world_size": t.world, "train_seconds": round(time.time() - t0, 2), "train_images": t.n_train,
                 "total_steps": t.n_steps, **best_meta, **recipe.export_meta()}
        _, fp = t.export(sd, head, head_init, step, val_acc, extra)
        if adapter is not None:
            recipe.save_adapter(adapter)
        info(f"{cfg.run_name}: wrote {t.ckpt_path}" + (f" and {adapter}" if adapter else "")
             + (f" (ID val accuracy {val_acc:.3f})" if val_acc is not None else ""))
    elif cached:
        info(f"[dim]cached[/] {cfg.run_name}: {t.ckpt_path}")
        t0 = time.time() - float(describe_checkpoint(t.ckpt_path).get("train_seconds") or 0.0)
    if t.world > 1:
        from ..distributed import barrier

        barrier()  # the checkpoint exists before any rank returns
    return FinetuneResult(path=t.ckpt_path, config=cfg, model=t.model, head_weight=head[0], head_bias=head[1],
                          preprocess=t.preprocess, tokenizer=t.tokenizer, base_fingerprint=t.base_fingerprint,
                          fingerprint=fp, step=step, val_accuracy=val_acc, history=list(t.history),
                          adapter_path=adapter, resumed_from=resumed_from, seconds=round(time.time() - t0, 2),
                          cached=cached)
