"""Class names, prompt templates and text banks (per-template text embeddings)."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import OodbenchError, suggest

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100 = tuple(
    n.replace("_", " ")
    for n in """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab
    crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
    lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
    oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
    possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
    spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
    train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)


@functools.cache
def _open_clip_metadata() -> dict:
    """open_clip's ``zero_shot_metadata`` module (ImageNet class names and templates), run on
    its own: importing the ``open_clip`` package costs ~5 s (torchvision, timm hooks) and a
    score run needs only these constants."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise OodbenchError("open_clip_torch is not installed: `pip install open_clip_torch`.")
    path = Path(next(iter(spec.submodule_search_locations))) / "zero_shot_metadata.py"
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # plain constants, no imports
    return namespace


def _imagenet() -> tuple[str, ...]:
    return tuple(_open_clip_metadata()["IMAGENET_CLASSNAMES"])


def _openai_templates() -> tuple[str, ...]:
    return tuple(t("{}") for t in _open_clip_metadata()["OPENAI_IMAGENET_TEMPLATES"])


def _simple_templates() -> tuple[str, ...]:
    return tuple(t("{}") for t in _open_clip_metadata()["SIMPLE_IMAGENET_TEMPLATES"])


CLASS_SETS = {"imagenet": _imagenet, "cifar10": lambda: CIFAR10, "cifar100": lambda: CIFAR100}
TEMPLATE_SETS = {
    "single": lambda: ("a photo of a {}.",),
    "openai_imagenet": _openai_templates,
    "simple_imagenet": _simple_templates,
}


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise OodbenchError(f"{what} file {str(path)!r} does not exist: give a text file with one entry per line.")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise OodbenchError(f"{what} file {str(path)!r} is not UTF-8 text (byte {exc.start}): give a text file "
                            "with one entry per line.") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise OodbenchError(f"{what} file {str(path)!r} is empty.")
    return lines


def resolve_classes(value: str | Sequence[str], base_dir: Path | None = None) -> list[str]:
    """Class names from a list, a named set (imagenet, cifar10, cifar100) or ``file:PATH``."""
    if isinstance(value, str):
        if value.startswith("file:"):
            return _read_lines((base_dir or Path.cwd()) / value[5:], "Class-name")
        if value not in CLASS_SETS:
            raise suggest(value, CLASS_SETS, "class-name set")
        return list(CLASS_SETS[value]())
    return [str(v) for v in value]


def resolve_templates(value: str | Sequence[str], base_dir: Path | None = None) -> list[str]:
    """Prompt templates (each with one ``{}``) from a list, a named set or ``file:PATH``."""
    if isinstance(value, str):
        if value.startswith("file:"):
            out = _read_lines((base_dir or Path.cwd()) / value[5:], "Template")
        elif value in TEMPLATE_SETS:
            out = list(TEMPLATE_SETS[value]())
        elif "{}" in value:
            out = [value]
        else:
            raise suggest(value, TEMPLATE_SETS, "template set")
    else:
        out = [str(v) for v in value]
    bad = [t for t in out if t.count("{}") != 1]
    if bad:
        raise OodbenchError(f"Template {bad[0]!r} must contain exactly one '{{}}' where the name goes.")
    return out


def encode_text_bank(model, tokenizer, names: Sequence[str], templates: Sequence[str],
                     device: str = "cpu", batch_size: int = 1024, label: str = "text bank") -> np.ndarray:
    """(T, C, D) float32 text embeddings (unnormalised) of every template × name.

    A bank of more than one batch of prompts (e.g. 1,000 classes × 80 templates) shows a
    progress bar in prompts, labelled ``label``.
    """
    import torch

    from .console import progress, rate_text

    prompts = [t.format(n) for t in templates for n in names]
    out = []
    t0 = time.time()
    with torch.no_grad(), progress("prompt", disable=len(prompts) <= batch_size) as bar:
        task = bar.add_task(label, total=len(prompts), rate="")
        for s in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[s : s + batch_size]).to(device)
            with torch.autocast(device_type=device.split(":")[0], enabled=device.startswith("cuda")):
                out.append(model.encode_text(tokens).float().cpu())
            done = s + len(tokens)
            bar.update(task, completed=done, rate=rate_text(done, time.time() - t0, "prompt"))
    return torch.cat(out).numpy().reshape(len(templates), len(names), -1)
