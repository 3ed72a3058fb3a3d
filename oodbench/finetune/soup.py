"""Model soups (Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time", ICML 2022; code: mlfoundations/model-soups).

* uniform soup: the mean of every weight (and of the linear head) over the ingredients;
* greedy soup: the ingredients sorted by their own ID val accuracy (descending); the soup starts
  as the best one; each next ingredient is added (running mean: soup x k/(k+1) + new x 1/(k+1))
  only if the soup's ID val accuracy then rises strictly above the best so far.

Ingredients are checkpoints written by :func:`oodbench.finetune.finetune` (or WiSE-FT / soups of
them) from one base model (same ``base_fingerprint``) with the same tensors (all with a linear
head, or none). Accuracy is measured on the benchmark's ID val split only, never on OoD data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import load_catalogue
from ..console import info
from ..errors import OodbenchError
from ..models import load_model
from .common import (
    _jsonable,
    _save_atomic,
    _state_fingerprint,
    class_text_embeddings,
    load_checkpoint_file,
)
from .data import load_split

HEAD_KEYS = ("classification_head.weight", "classification_head.bias")


def uniform_soup(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor (accumulated in float64, cast back); other tensors
    must be equal in every ingredient."""
    if not states:
        raise OodbenchError("A soup needs at least one ingredient.")
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
        else:
            if any(not torch.equal(s[k], v) for s in states[1:]):
                raise OodbenchError(f"soup ingredients differ in the non-float tensor {k}.")
            out[k] = v.clone()
    return out


def greedy_soup(states: Sequence[dict[str, torch.Tensor]], evaluate: Callable[[dict[str, torch.Tensor]], float],
                accuracies: Sequence[float] | None = None) -> tuple[dict[str, torch.Tensor], list[int], list[float], float]:
    """(soup, chosen ingredient indices in the order added, individual accuracies, soup accuracy).

    ``accuracies``: each ingredient's own val accuracy (computed with ``evaluate`` when None).
    Ties in the sort keep the given order (a stable sort)."""
    accs = [float(a) for a in accuracies] if accuracies is not None else [float(evaluate(s)) for s in states]
    order = sorted(range(len(states)), key=lambda i: -accs[i])
    soup = {k: v.clone() for k, v in states[order[0]].items()}
    chosen, best = [order[0]], accs[order[0]]
    for i in order[1:]:
        k = len(chosen)
        cand = {key: (v.double() * (k / (k + 1)) + states[i][key].double() * (1 / (k + 1))).to(v.dtype)
                if v.is_floating_point() else v for key, v in soup.items()}
        acc = float(evaluate(cand))
        if acc > best:
            soup, best = cand, acc
            chosen.append(i)
    return soup, chosen, accs, best


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
    if not path.is_file():
        raise OodbenchError(f"{path}: no such checkpoint.")
    obj = load_checkpoint_file(path, "pass checkpoints written by oodbench finetune")
    meta = obj.get("oodbench") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(obj.get("state_dict"), dict):
        raise OodbenchError(f"{path}: not a checkpoint written by oodbench finetune (no 'oodbench' entry): soups "
                            "mix oodbench fine-tuning runs of one base.")
    return obj["state_dict"], meta, obj


def val_evaluator(meta: dict[str, Any], benchmarks: str | Path | None = None, data_root: str | Path | None = None,
                  device: str = "cpu") -> Callable[[dict[str, torch.Tensor]], float]:
    """``evaluate(state) -> ID val accuracy`` for states of the base named in ``meta``: the linear
    head when the state has one, else the zero-shot head of its text tower."""
    cfg = meta.get("config") or {}
    cat = load_catalogue(benchmarks or cfg.get("benchmarks"))
    bench = cat.benchmark(meta["benchmark"])
    if not bench.id_val:
        raise OodbenchError(f"benchmark {bench.name} has no ID val split: a greedy soup needs one.")
    bundle = load_model(meta["model"], meta.get("pretrained"), device=device, seed=int(meta.get("init_seed", 0)))
    model = bundle.model.eval()
    val = load_split(cat, bench.id_val, bundle.preprocess, data_root or cfg.get("data_root"))
    classes, templates = meta.get("classes") or list(bench.classes), meta.get("templates") or list(bench.templates)
    tokens = bundle.tokenizer([t.format(c) for t in templates for c in classes]).to(device)

    @torch.no_grad()
    def evaluate(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict({k: v for k, v in state.items() if k not in HEAD_KEYS})
        if HEAD_KEYS[0] in state:
            w, b = state[HEAD_KEYS[0]].float().to(device), state[HEAD_KEYS[1]].float().to(device)
        else:
            w = model.logit_scale.exp().float() * class_text_embeddings(model, tokens, len(templates), len(classes))
            b = torch.zeros(len(classes), device=device)
        correct = 0
        for x, y in val.all(256):
            z = F.normalize(model.encode_image(x.to(device)).float(), dim=-1)
            correct += int(((z @ w.T + b).argmax(1).cpu() == y).sum())
        return correct / len(val)

    return evaluate


def soup(ckpts: Sequence[str | Path], out: str | Path, *, greedy: bool = False, benchmarks: str | Path | None = None,
         data_root: str | Path | None = None, device: str = "cpu") -> Path:
    """Write the uniform (or greedy) soup of ``ckpts`` to ``out`` in their layout (wiseft with a
    head, else open_clip), with an ``oodbench`` entry ``extract --ckpt`` and :func:`wise_mix` read."""
    paths = [Path(p) for p in ckpts]
    if len(paths) < 2:
        raise OodbenchError("A soup needs at least two checkpoints.")
    read = [_read(p) for p in paths]
    states = [{k: v.float() if v.is_floating_point() else v for k, v in sd.items()} for sd, _, _ in read]
    meta0 = read[0][1]
    for p, (sd, meta, _) in zip(paths[1:], read[1:], strict=True):
        if meta.get("base_fingerprint") != meta0.get("base_fingerprint"):
            raise OodbenchError(f"{p} was fine-tuned from another base than {paths[0]} (base fingerprints "
                                f"{str(meta.get('base_fingerprint'))[:12]} / {str(meta0.get('base_fingerprint'))[:12]}): "
                                "soups need one base.")
        if set(sd) != set(states[0]) or any(sd[k].shape != states[0][k].shape for k in sd):
            raise OodbenchError(f"{p} does not hold the same tensors as {paths[0]} (a head in one only, or another "
                                "model): soup checkpoints of one layout.")
    evaluate = val_evaluator(meta0, benchmarks, data_root, device) if greedy else None
    if greedy:
        mixed, chosen, accs, acc = greedy_soup(states, evaluate)
        info(f"greedy soup: {len(chosen)} of {len(paths)} ingredients, ID val accuracy {acc:.4f}")
        record = {"kind": "greedy", "chosen": [str(paths[i]) for i in chosen],
                  "val_accuracies": dict(zip(map(str, paths), accs, strict=True)), "val_accuracy": acc}
    else:
        mixed = uniform_soup(states)
        record = {"kind": "uniform", "chosen": [str(p) for p in paths]}
    head = (mixed.get(HEAD_KEYS[0]), mixed.get(HEAD_KEYS[1]))
    body = {k: v for k, v in mixed.items() if k not in HEAD_KEYS}
    fp = _state_fingerprint(body, *head, meta0["model"])
    meta = _jsonable({**{k: meta0.get(k) for k in ("model", "pretrained", "init_seed", "base_fingerprint",
                                                   "benchmark", "classes", "templates", "config")},
                      "format_version": meta0.get("format_version"), "recipe": "soup", "fingerprint": fp,
                      "head_input": "embeds" if head[0] is not None else None,
                      "val_accuracy": record.get("val_accuracy"), "soup": {**record, "ingredients": list(map(str, paths))}})
    obj: dict[str, Any] = {"state_dict": mixed, "oodbench": meta}
    if "quick_gelu" in read[0][2]:
        obj["quick_gelu"] = read[0][2]["quick_gelu"]
    path = _save_atomic(obj, Path(out))
    info(f"soup: wrote {path}")
    return path
