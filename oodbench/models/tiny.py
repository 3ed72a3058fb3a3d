"""The offline world's model: a tiny open_clip CLIP trained contrastively on the digits.

``oodbench-tiny`` is an ordinary open_clip config (``configs/oodbench-tiny.json``); its
pretrained tag ``digits`` is produced here, seeded, in well under a minute on two CPU cores,
and cached under :func:`oodbench.paths.cache_dir` so later runs load it instantly.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..console import info, progress
from ..paths import cache_dir

TINY_MODEL = "oodbench-tiny"
TINY_TAG = "digits"
TINY_VERSION = 1
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES = (
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "a blurry image of a {}.",
)
CONFIG_DIR = Path(__file__).parent / "configs"


def register_configs() -> None:
    """Make oodbench's bundled open_clip configs known to open_clip (idempotent)."""
    import open_clip

    for path in sorted(CONFIG_DIR.glob("*.json")):
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)


def tiny_weights_path() -> Path:
    return cache_dir() / "models" / f"{TINY_MODEL}-{TINY_TAG}-v{TINY_VERSION}.pt"


def build_untrained(seed: int = 0):
    """A randomly initialised tiny CLIP (model, preprocess, tokenizer), seeded."""
    import open_clip

    register_configs()
    torch.manual_seed(seed)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL)
    return model, preprocess, open_clip.get_tokenizer(TINY_MODEL)


def _digit_tensors(preprocess, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import build_source

    src = build_source({"source": "digits", "split": split}, name=f"digits-{split}")
    images = torch.stack([preprocess(src.load(i)) for i in range(len(src))])
    return images, torch.as_tensor(src.labels(), dtype=torch.long)


def _shift(x: torch.Tensor, max_px: int, gen: torch.Generator) -> torch.Tensor:
    """Random integer translation of each image by up to ±max_px pixels (zero-filled border)."""
    n, _, h, w = x.shape
    pad = F.pad(x, (max_px,) * 4, value=float(x.min()))
    dx = torch.randint(0, 2 * max_px + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_px + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * max_px)
    out = pad.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def zero_shot_accuracy(model, tokenizer, images: torch.Tensor, labels: torch.Tensor,
                       names: tuple[str, ...] = DIGIT_NAMES) -> float:
    """Top-1 zero-shot accuracy with the template ensemble of TRAIN_TEMPLATES."""
    model.eval()
    with torch.no_grad():
        txt = model.encode_text(tokenizer([t.format(n) for t in TRAIN_TEMPLATES for n in names]))
        txt = F.normalize(txt, dim=-1).view(len(TRAIN_TEMPLATES), len(names), -1).mean(0)
        img = F.normalize(model.encode_image(images), dim=-1)
        pred = (img @ F.normalize(txt, dim=-1).T).argmax(1)
    return float((pred == labels).float().mean())


def train_tiny(steps: int = 600, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
               out: Path | None = None) -> Path:
    """Train the tiny CLIP on the digits train split (all ten digits) and save its state dict.

    Contrastive loss with soft targets: every same-label pair in a batch is a positive.
    Returns the path of the saved weights (a plain open_clip state dict).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model, preprocess, tokenizer = build_untrained(seed)
    images, labels = _digit_tensors(preprocess, "train")
    captions = tokenizer([t.format(n) for t in TRAIN_TEMPLATES for n in DIGIT_NAMES])
    n_t = len(TRAIN_TEMPLATES)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.time()
    with progress("step") as bar:
        task = bar.add_task("training oodbench-tiny on digits", total=steps, rate="")
        for _ in range(steps):
            idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
            x, y = _shift(images[idx], 2, gen), labels[idx]
            tmpl = torch.randint(0, n_t, (batch_size,), generator=gen)
            txt_all = model.encode_text(captions)  # 40 captions: cheaper than per-sample text
            txt = F.normalize(txt_all[tmpl * len(DIGIT_NAMES) + y], dim=-1)
            img = F.normalize(model.encode_image(x), dim=-1)
            logits = model.logit_scale.exp() * img @ txt.T
            target = (y[:, None] == y[None, :]).float()
            target = target / target.sum(1, keepdim=True)
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            bar.update(task, advance=1, rate=f"loss {loss.item():.3f}")
    val_images, val_labels = _digit_tensors(preprocess, "val")
    acc = zero_shot_accuracy(model, tokenizer, val_images, val_labels)
    out = out or tiny_weights_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(out)
    meta = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "seconds": round(time.time() - start, 1), "zero_shot_val_accuracy_0to9": acc,
            "torch": torch.__version__}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    info(f"trained {TINY_MODEL} in {meta['seconds']} s: zero-shot accuracy on held-out digits {acc:.3f}")
    return out


def ensure_tiny(retrain: bool = False) -> Path:
    """Path of the cached tiny weights, training them first if missing (or if ``retrain``)."""
    path = tiny_weights_path()
    if retrain or not path.exists():
        train_tiny(out=path)
    return path
