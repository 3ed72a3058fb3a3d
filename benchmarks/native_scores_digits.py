"""The CLIP-native scores on the digits world across zero-shot, fine-tuned and WiSE-FT checkpoints.

A benchmark script (not a test). Steps, all on the CPU in a few minutes:

1. extract the digits benchmark with the zero-shot tiny model (``--layers all``);
2. fine-tune its vision tower on the ID train split (digits 0-4): cross-entropy through a
   linear head initialised from the class text embeddings (logit scale x template-ensemble
   embeddings, on L2-normalised image embeddings, as WiSE-FT's zero-shot head), label
   smoothing 0.1, +-3 px shifts and pixel noise, AdamW; saved as a ``{'model_state_dict': ...,
   'head.*'}`` checkpoint (read by the ``cma`` adapter, head on L2-normalised embeddings);
3. extract the fine-tuned checkpoint and its WiSE-FT mixes (``load_model(..., wise_alpha=a)``);
4. ``oodbench inspect`` of every model (per-layer zero-shot accuracy, MCM AUROC, modality gap);
5. score every model with MSP, Energy, MCM, ViM, KNN and the new scores (fine-tuned models: the
   checkpoint's linear head; the two-model scores read the zero-shot model as ``reference``),
   plus layer_mcm(combine=best) and anchored_mcm with ``--tune`` (chosen on ID val vs OoD val),
   layer_mcm(combine=agreement) and disagreement(mode=kl);
6. a Markdown table with 95 % bootstrap intervals (``report.metrics_table(ci=0.95)``).

    OODBENCH_CACHE=/tmp/oodcache python benchmarks/native_scores_digits.py --out native.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oodbench.config import load_catalogue
from oodbench.engine import load_model_view, parse_overrides, score_benchmark
from oodbench.extract import ExtractOptions, extract_dataset, write_model_info, write_text_bank
from oodbench.inspect_model import format_inspect, inspect, save_inspect_plot
from oodbench.models import load_model
from oodbench.models.tiny import _digit_tensors, _shift
from oodbench.report import metrics_table
from oodbench.store import Store

BASELINES = ["msp", "energy", "mcm", "vim", "knn"]
SINGLE = ["layer_mcm", "text_residual", "gap_mcm"]
TWO_MODEL = ["anchored_mcm", "ft_conf_zs", "disagreement"]


def extract_bundle(bundle, bench, cat, store: Store) -> str:
    """What ``api.extract`` does, for an already loaded bundle (WiSE-FT mixes)."""
    opts = ExtractOptions(device="cpu", layers="all", batch_size=128)
    write_model_info(bundle, store)
    write_text_bank(bundle, store, f"{bench.name}-classes", bench.classes, bench.templates, "cpu")
    for d in bench.splits():
        extract_dataset(bundle, cat.source(d, None, False), store.features_path(bundle.key, d), opts, d)
    return bundle.key


def finetune(out: Path, head_init: np.ndarray, steps: int, lr: float, seed: int = 0, batch: int = 64) -> Path:
    """CE fine-tuning of the tiny model's vision tower + a text-initialised head (see module doc)."""
    if out.exists():
        return out
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    bundle = load_model(device="cpu")
    net = bundle.model
    images, labels = _digit_tensors(bundle.preprocess, "train")
    keep = labels < head_init.shape[0]  # ID classes 0-4
    images, labels = images[keep], labels[keep]
    head = torch.nn.Linear(head_init.shape[1], head_init.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(head_init))
        head.bias.zero_()
    for p in net.parameters():
        p.requires_grad_(False)
    for p in net.visual.parameters():
        p.requires_grad_(True)
    params = list(net.visual.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        x = _shift(images[idx], 3, gen)
        x = x + 0.3 * torch.randn(x.shape, generator=gen)
        z = head(F.normalize(net.encode_image(x), dim=-1))
        loss = F.cross_entropy(z, labels[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  ft step {step:4d} loss {loss.item():.4f}", flush=True)
    net.eval()
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    sd["head.weight"], sd["head.bias"] = head.weight.detach().clone(), head.bias.detach().clone()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": sd, "steps": steps, "lr": lr, "seed": seed}, out)
    print(f"  fine-tuned in {time.time() - t0:.0f} s -> {out}")
    return out


def score_model(store: Store, key: str, bench, head: str, reference: str | None) -> list:
    methods = BASELINES + SINGLE + (TWO_MODEL if reference else [])
    bench_params = [p for p in bench.params if p.split(".", 1)[0] in methods]
    recs = score_benchmark(store, key, bench, methods, parse_overrides(bench_params, methods), head=head,
                           reference_key=reference)
    tuned = ["layer_mcm"] + (["anchored_mcm"] if reference else [])
    over = parse_overrides(["layer_mcm.combine=best"], tuned)
    recs += score_benchmark(store, key, bench, tuned, over, head=head, tune=True, reference_key=reference)
    variants = ["layer_mcm"] + (["disagreement"] if reference else [])
    over = parse_overrides(["layer_mcm.combine=agreement", *(["disagreement.mode=kl"] if reference else [])],
                           variants)
    recs += score_benchmark(store, key, bench, variants, over, head=head, reference_key=reference)
    return recs


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def display_name(rec) -> str:
    """Method label of the tables: tuned records are named by what was tuned, not the value."""
    if rec.provenance.get("tuning", {}).get("tuned"):
        fixed = {k: v for k, v in rec.provenance.get("overrides", {}).items()
                 if k not in rec.provenance["tuning"].get("chosen", {})}
        extra = ", ".join(f"{k}={v}" for k, v in sorted(fixed.items()))
        return f"{rec.method}({extra + ', ' if extra else ''}tuned)"
    return rec.label


def tables(records, models: list[str]) -> str:
    """Near-OoD and far-OoD (average) AUROC with 95 % bootstrap intervals: methods x models."""
    df = metrics_table(records, ci=0.95, n_boot=1000, seed=0)
    names = {(r.model, r.label): display_name(r) for r in records}
    df["name"] = [names[(m, lab)] for m, lab in zip(df["model"], df["method"], strict=True)]
    methods = list(dict.fromkeys(df["name"]))
    out = []
    for ood, title in (("near avg", "near-OoD (digits 5-9) AUROC"), ("far avg", "far-OoD AUROC (mean of textures, noise)")):
        rows = [f"**{title}, % [95% bootstrap CI]**", "", "| method | " + " | ".join(models) + " |",
                "|---|" + "---:|" * len(models)]
        for name in methods:
            cells = []
            for model in models:
                hit = df[(df["model"] == model) & (df["name"] == name) & (df["ood"] == ood)]
                cells.append("–" if hit.empty else
                             f"{pct(hit.auroc.iloc[0])} [{pct(hit.auroc_lo.iloc[0])}, {pct(hit.auroc_hi.iloc[0])}]")
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("\n".join(rows))
    acc = df[df["ood"] == "avg"].groupby("model", sort=False)["accuracy"].max()
    out.append("ID test accuracy of the scored head: " + ", ".join(f"{m} {pct(acc[m])}" for m in models))
    return "\n\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/oodbench-native-digits"), help="store + checkpoint dir")
    ap.add_argument("--ft", default="400:1e-3,1500:3e-3", help="fine-tuning runs, steps:lr comma-separated")
    ap.add_argument("--alphas", default="0.5", help="WiSE-FT alphas, comma-separated")
    ap.add_argument("--out", type=Path, help="write the Markdown tables here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    cat = load_catalogue(None)
    bench = cat.benchmark("digits")
    store = Store(args.work / "store")
    t0 = time.time()
    zs = extract_bundle(load_model(device="cpu"), bench, cat, store)
    view = load_model_view(store, zs, bench)
    head_init = view.visual.logit_scale * view.text["classes"].name_embeds("ensemble")
    fts = []
    for spec in args.ft.split(","):
        steps, lr = spec.split(":")
        ckpt = finetune(args.work / f"digits_ft_s{steps}_lr{float(lr):g}.pt", head_init, int(steps), float(lr))
        fts.append(extract_bundle(load_model(ckpt=ckpt, device="cpu"), bench, cat, store))
        fts += [extract_bundle(load_model(ckpt=ckpt, wise_alpha=float(a), device="cpu"), bench, cat, store)
                for a in args.alphas.split(",") if a.strip()]
    print(f"extracted in {time.time() - t0:.0f} s")

    keys = [zs, *fts]
    insp = inspect(keys, benchmark="digits", store=store.root)
    save_inspect_plot(insp, args.work / "inspect")
    insp_md = format_inspect(insp, "markdown")
    print(insp_md)

    records = score_model(store, zs, bench, "zeroshot", None)
    for k in fts:
        records += score_model(store, k, bench, "linear", zs)
    models = list(dict.fromkeys(r.model for r in records))
    md = tables(records, models)
    print(md)
    chosen = {f"{r.model}/{r.method}": r.provenance.get("tuning", {}).get("chosen") for r in records
              if r.provenance.get("tuning", {}).get("tuned")}
    print("tuned choices:", json.dumps(chosen))
    if args.out:
        args.out.write_text(f"{insp_md}\n{md}\n\ntuned choices: {json.dumps(chosen)}\n")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
