"""The ``oodbench`` command line: parses options, calls :mod:`oodbench.api`, renders with rich."""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .console import console, out
from .errors import OodbenchError
from .fsutil import atomic_write

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Post-hoc OoD detection for (fine-tuned) CLIP: extract once, score many times.")
list_app = typer.Typer(no_args_is_help=True, help="List benchmarks, datasets, methods, models, store contents.")
app.add_typer(list_app, name="list")


class Fmt(str, Enum):
    rich = "rich"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"


class Fpr(str, Enum):
    id = "id"
    ood = "ood"
    both = "both"


def friendly(fn):
    """Turn OodbenchError into one red line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OodbenchError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


Store_ = Annotated[Path | None, typer.Option("--store", help="Store root (default $OODBENCH_STORE or ./oodbench_store).")]
Bench = Annotated[str, typer.Option("--benchmark", "-b", help="Benchmark name (oodbench list benchmarks).")]
Benches = Annotated[Path | None, typer.Option("--benchmarks", help="Your own benchmarks YAML (default: the shipped one).")]
DataRoot = Annotated[Path | None, typer.Option("--data-root", help="Root of the image data (default $OODBENCH_DATA).")]
Methods = Annotated[list[str] | None, typer.Option("--method", "-m", help="Method(s), repeat or comma-separate; 'all' for every registered one.")]
Params = Annotated[list[str] | None, typer.Option("--param", "-p", help="Hyperparameter override: method.name=value or name=value.")]
Plugins = Annotated[list[Path] | None, typer.Option("--plugin", help="Python file registering extra scorers.")]


def _methods(values: list[str] | None, default) -> list[str] | str:
    if not values:
        return list(default)
    flat = [m.strip() for v in values for m in v.split(",") if m.strip()]
    return "all" if flat == ["all"] else flat


def _plugins(paths: list[Path] | None) -> None:
    from .scorers import load_plugin

    for p in paths or []:
        load_plugin(p)


def _options(batch_size, workers, device, precision, dtype, layers, local, overwrite, decode="pil"):
    from .extract import ExtractOptions

    return ExtractOptions(batch_size=batch_size, workers=workers, device=device, precision=precision,
                          dtype=dtype, layers=layers, local=local, overwrite=overwrite, decode=decode)


MODEL_HELP = "open_clip model name (default: the benchmark's)."
PRETRAINED_HELP = ("Base weights (default: the benchmark's): an open_clip tag (downloaded once into the Hugging Face cache), a local "
                   "weights file PATH, or '' for random weights. Not loaded when --ckpt holds the whole model.")
CKPT_HELP = ("Fine-tuned checkpoint: a file or a PEFT LoRA / Hugging Face CLIPModel / CoOp directory "
             "(format auto-detected; see the README's Checkpoints section).")


@app.command()
@friendly
def extract(
    benchmark: Bench = "digits",
    model: Annotated[str | None, typer.Option("--model", help=MODEL_HELP)] = None,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help=PRETRAINED_HELP)] = None,
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help=CKPT_HELP)] = None,
    ckpt_format: Annotated[str, typer.Option("--ckpt-format", help="Checkpoint format (auto-detected).")] = "auto",
    class_token_position: Annotated[str | None, typer.Option("--class-token-position", help="CoOp prompt checkpoints: end, middle or front, when the run's Dassl log.txt does not say.")] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", help="Only these datasets of the benchmark.")] = None,
    store: Store_ = None,
    benchmarks: Benches = None,
    data_root: DataRoot = None,
    download: Annotated[bool, typer.Option("--download", help="Let torchvision datasets download.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto, fp32, fp16 or bf16 (autocast).")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype: float32 or float16.")] = "float32",
    layers: Annotated[str | None, typer.Option("--layers", help="Per-layer CLS tokens: 'all' or '3,7,11'.")] = None,
    local: Annotated[bool, typer.Option("--local", help="Projected patch embeddings (GL-MCM).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing feature files.")] = False,
    decode: Annotated[str, typer.Option("--decode", help="JPEG decoding: pil (workers) or device (nvJPEG on CUDA; see README).")] = "pil",
    negatives: Annotated[str | None, typer.Option("--negatives", help="Negative-label banks: neglabel, csp, all (NegLabel's published corpus) or file:SELECTION (fixed prompts, e.g. file:neglabel-in1k).")] = None,
    negative_nouns: Annotated[str, typer.Option("--negative-nouns", help="Noun candidates: a bundled corpus (neglabel-nouns, wordnet-nouns) or a word file.")] = "neglabel-nouns",
    negative_adjectives: Annotated[str, typer.Option("--negative-adjectives", help="Adjective candidates: a bundled corpus (neglabel-adjectives, wordnet-adjectives) or a word file.")] = "neglabel-adjectives",
    outliers: Annotated[Path | None, typer.Option("--outliers", help="File of envisioned outlier labels (EOE), one per line.")] = None,
    templates: Annotated[str | None, typer.Option("--templates", help="Class prompt templates: single, openai_imagenet, simple_imagenet, file:PATH.")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Unpickle checkpoints for real (runs their code; only for files you trust). Without it pickled models are read with their classes stubbed.")] = False,
    wise_alpha: Annotated[list[float] | None, typer.Option("--wise-alpha", help="WiSE-FT mixing with the base; repeat for several alphas (one store entry each).")] = None,
    wise_base: Annotated[Path | None, typer.Option("--wise-base", help="Base checkpoint for --wise-alpha (default: the pretrained weights).")] = None,
) -> None:
    """Run the network once per dataset split and write the feature store.

    --ckpt takes a file (or a PEFT LoRA / Hugging Face CLIPModel / CoOp folder) in any supported
    format: open_clip, safetensors, visual_only (CLIPood), wiseft, lpft, flyp, cma, hf_clip,
    peft_lora, clip_lora, coop.
    """
    from . import api

    if precision not in ("auto", "fp32", "fp16", "bf16") or dtype not in ("float32", "float16"):
        raise OodbenchError("--precision must be auto/fp32/fp16/bf16 and --dtype float32/float16.")
    if wise_alpha and ckpt is None:
        raise OodbenchError("--wise-alpha mixes a fine-tuned --ckpt with its base: pass --ckpt too.")
    for alpha in wise_alpha or [None]:
        key = api.extract(model, pretrained, benchmark=benchmark, ckpt=ckpt, ckpt_format=ckpt_format, store=store,
                          benchmarks=benchmarks, data_root=data_root, download=download, datasets=dataset,
                          negatives=negatives, outliers=outliers, templates=templates, trust_pickle=trust_pickle,
                          negative_words=(negative_nouns, negative_adjectives),
                          wise_alpha=alpha, wise_base=wise_base, class_token_position=class_token_position,
                          options=_options(batch_size, workers, device, precision, dtype, layers, local, overwrite,
                                           decode))
        out.print(key)


@app.command()
@friendly
def score(
    method: Methods = None,
    benchmark: Bench = "digits",
    model_key: Annotated[str | None, typer.Option("--model-key", help="Which model of the store (prefix ok); default: every model with the benchmark's features.")] = None,
    param: Params = None,
    head: Annotated[str, typer.Option("--head", help="zeroshot or linear (a checkpoint's head).")] = "zeroshot",
    head_templates: Annotated[str, typer.Option("--head-templates", help="Zero-shot head: ensemble, first or an index.")] = "ensemble",
    tune: Annotated[bool, typer.Option("--tune", help="Choose hyperparameters on ID val vs the benchmark's ood_val sets.")] = False,
    reference: Annotated[str | None, typer.Option("--reference", help="Model key (prefix ok) of the zero-shot base, for anchored_mcm, ft_conf_zs, disagreement.")] = None,
    store: Store_ = None,
    benchmarks: Benches = None,
    plugin: Plugins = None,
) -> None:
    """Compute per-sample scores (higher = more ID) from the store, on the CPU."""
    from . import api

    _plugins(plugin)
    records = api.score(_methods(method, api.SPINE_METHODS), benchmark=benchmark, model_key=model_key,
                        store=store, params=param, head=head, head_templates=head_templates, benchmarks=benchmarks,
                        tune=tune, reference=reference)
    out.print(api.report(records))


def _check_output(path: Path) -> None:
    """Refuse an ``-o`` path that cannot become a file, before any work is done."""
    if path.is_dir():
        raise OodbenchError(f"--output {path} is a directory: give a file name, e.g. {path / 'report.md'}.")
    if not path.parent.is_dir():
        raise OodbenchError(f"--output {path}: directory {path.parent} does not exist: create it first.")


@app.command()
@friendly
def report(
    scores: Annotated[list[Path] | None, typer.Argument(help="Scores files or store roots (default: the last run).")] = None,
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.rich,
    latex: Annotated[bool, typer.Option("--latex", help="Shorthand for --format latex.")] = False,
    standalone: Annotated[bool, typer.Option("--standalone", help="LaTeX: a complete compilable document.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="Metrics: auroc fpr95 aupr_in aupr_out; with shift sets also fsood_auroc shift_accuracy aurc eaurc failure_auroc.")] = None,
    fpr: Annotated[Fpr, typer.Option("--fpr", help="FPR@95 convention: id (classic, ID positive), ood (OpenOOD v1.5), both.")] = Fpr.id,
    method: Methods = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="Model label to show deltas against.")] = None,
    ci: Annotated[float | None, typer.Option("--ci", help="Bootstrap confidence level, e.g. 0.95.")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", min=10)] = 1000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    plots: Annotated[Path | None, typer.Option("--plots", help="Also write plots (PNG+PDF) to this directory.")] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Terminal: every metric of every set in one table, full width.")] = False,
    failure: Annotated[bool, typer.Option("--failure", help="The robustness / failure-detection table instead (needs shift sets).")] = False,
    store: Store_ = None,
) -> None:
    """Tables (and plots) of AUROC, FPR@95, AUPR and ID accuracy from score files.

    On a terminal: a table per metric fitted to its width; to a file or pipe (no COLUMNS set): full width."""
    from . import api

    fmt_value = "latex" if latex else fmt.value
    if output:
        _check_output(output)
    records = api.load_scores(scores, store)
    methods = None if not method else [m for v in method for m in v.split(",")]
    if failure:
        result = api.failure_report(records, fmt=fmt_value, methods=methods)
        if not isinstance(result, str) and (output or not (out.is_terminal or "COLUMNS" in os.environ)):
            from .report import to_text

            result = to_text(result)  # full width, no split
        if output:
            atomic_write(output, result)
            console.print(f"wrote {output}")
        elif isinstance(result, str):
            out.print(result, soft_wrap=True, highlight=False, markup=False)
        else:
            out.print(result)  # packed to the terminal's width
        return
    result = api.report(records, fmt=fmt_value, baseline=baseline, ci=ci, n_boot=n_boot, seed=seed,
                        metrics=tuple(metric or ("auroc", "fpr95")), fpr=fpr.value, methods=methods,
                        standalone=standalone, layout="wide" if wide else "compact")
    if fmt_value == "rich" and (output or wide or not (out.is_terminal or "COLUMNS" in os.environ)):
        from .report import to_text

        result = to_text(result, styles=out.is_terminal and not output)  # full width, no split
    if output:
        atomic_write(output, result)
        console.print(f"wrote {output}")
    elif fmt_value == "rich" and isinstance(result, str):
        out.file.write(result)  # already laid out (and styled for a terminal)
    elif isinstance(result, str):
        out.print(result, soft_wrap=True, highlight=False, markup=False)
    else:
        out.print(result)
    if plots:
        from .report import save_plots

        paths = save_plots(records, plots)
        console.print(f"wrote {len(paths)} plot files to {plots}")


@app.command()
@friendly
def run(
    benchmark: Bench = "digits",
    model: Annotated[str | None, typer.Option("--model", help=MODEL_HELP)] = None,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help=PRETRAINED_HELP)] = None,
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help=CKPT_HELP)] = None,
    method: Methods = None,
    param: Params = None,
    head: Annotated[str, typer.Option("--head")] = "zeroshot",
    store: Store_ = None,
    benchmarks: Benches = None,
    data_root: DataRoot = None,
    download: Annotated[bool, typer.Option("--download")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes.")] = 0,
    device: Annotated[str, typer.Option("--device")] = "auto",
    plugin: Plugins = None,
) -> None:
    """extract (cached) -> score -> report for one benchmark; no arguments: the offline digits world."""
    from . import api

    _plugins(plugin)
    records = api.run(benchmark, model=model, pretrained=pretrained, ckpt=ckpt,
                      methods=_methods(method, api.SPINE_METHODS), store=store, benchmarks=benchmarks,
                      data_root=data_root, download=download, params=param, head=head,
                      options=_options(batch_size, workers, device, "auto", "float32", None, False, False))
    out.print(api.report(records))


@app.command("inspect")
@friendly
def inspect_cmd(
    model_key: Annotated[list[str] | None, typer.Option("--model-key", help="Model(s) of the store (prefix ok); repeat or comma-separate. Default: the only one.")] = None,
    benchmark: Bench = "digits",
    plot: Annotated[Path | None, typer.Option("--plot", help="Also write inspect_<benchmark>.png/.pdf into this folder.")] = None,
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="rich, markdown, csv or json.")] = Fmt.rich,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the table to this file instead of stdout.")] = None,
    head_templates: Annotated[str, typer.Option("--head-templates", help="Templates of the zero-shot accuracy: ensemble, first or an index.")] = "ensemble",
    store: Store_ = None,
    benchmarks: Benches = None,
) -> None:
    """Per-layer zero-shot accuracy, MCM AUROC and modality gap of one or more models (extract with --layers)."""
    from .inspect_model import format_inspect, inspect, save_inspect_plot

    if fmt == Fmt.latex:
        raise OodbenchError("oodbench inspect writes rich, markdown, csv or json: pass another --format.")
    keys = [k.strip() for v in model_key or [] for k in v.split(",") if k.strip()] or None
    df = inspect(keys, benchmark=benchmark, store=store, benchmarks=benchmarks, head_templates=head_templates)
    table = format_inspect(df, fmt.value)
    if output:
        if fmt == Fmt.rich:
            raise OodbenchError("--output needs a text format: pass --format markdown/csv/json.")
        atomic_write(output, table)
        console.print(f"wrote {output}")
    else:
        out.print(table, soft_wrap=True, highlight=False, markup=False) if isinstance(table, str) else out.print(table)
    for p in save_inspect_plot(df, plot) if plot else []:
        console.print(f"wrote {p}")


@app.command()
@friendly
def verify(store: Annotated[Path | None, typer.Argument(help="Store root (default ./oodbench_store).")] = None,
           benchmarks: Benches = None) -> None:
    """Check every file: complete, fingerprints consistent, no NaN/inf, shapes as declared, not stale."""
    from rich.table import Table

    from .paths import default_store
    from .verify import verify_store

    findings = verify_store(store or default_store(), benchmarks)
    t = Table(title="oodbench verify")
    for c in ("file", "status", "details"):
        t.add_column(c, overflow="fold")
    for f in findings:
        t.add_row(str(f.path), "[green]ok[/]" if f.ok else "[red]problem[/]", f.message)
    out.print(t)
    bad = sum(not f.ok for f in findings)
    if bad:
        raise OodbenchError(f"{bad} of {len(findings)} store file(s) have problems (see the table).")


@app.command()
@friendly
def finetune(
    recipe: Annotated[str, typer.Argument(help="lp, ft, lpft, flyp, lora or lipsum.")],
    benchmark: Bench = "digits",
    model: Annotated[str | None, typer.Option("--model", help="open_clip model (default: the benchmark's).")] = None,
    pretrained: Annotated[str, typer.Option("--pretrained", help="open_clip tag or weights file of the base (default: the benchmark's).")] = "auto",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder.")] = Path("finetune_runs"),
    name: Annotated[str | None, typer.Option("--name", help="Checkpoint file stem (default RECIPE or RECIPE-REG).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1)] = 200,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    lr: Annotated[float | None, typer.Option("--lr", help="Default 1e-4 (ft, lpft, flyp), 1e-3 (lora).")] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    reg: Annotated[str, typer.Option("--reg", help="Representation regulariser: none, l2sp, feature or ldifs.")] = "none",
    reg_weight: Annotated[float | None, typer.Option("--reg-weight", help="Default 1 (l2sp), 10 (feature, ldifs).")] = None,
    lora_rank: Annotated[int, typer.Option("--lora-rank", min=1)] = 4,
    lora_alpha: Annotated[float, typer.Option("--lora-alpha")] = 8.0,
    lora_towers: Annotated[str, typer.Option("--lora-towers", help="visual, text or both.")] = "both",
    lora_targets: Annotated[str, typer.Option("--lora-targets", help="Subset of q,k,v,out.")] = "q,k,v,out",
    lp_c: Annotated[float | None, typer.Option("--lp-c", help="Logistic-regression C (default: chosen on ID val).")] = None,
    flyp_head: Annotated[bool, typer.Option("--flyp-head", help="FLYP: also store the rebuilt text head.")] = False,
    shots: Annotated[int | None, typer.Option("--shots", min=1, help="Train on K images per class (seeded draw; CoOp: 1/2/4/8/16).")] = None,
    augment: Annotated[str, typer.Option("--augment", help="none (eval preprocess), shift (±2 px) or rrc (RandomResizedCrop + flip).")] = "shift",
    rrc_scale: Annotated[float, typer.Option("--rrc-scale", help="rrc: smallest crop area fraction.")] = 0.08,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Train this many epochs instead of --steps.")] = None,
    warmup: Annotated[float, typer.Option("--warmup", help="Fraction of the steps with linear warm-up (then cosine).")] = 0.1,
    accum_steps: Annotated[int, typer.Option("--accum-steps", min=1, help="Micro-batches per step (--batch-size is the global batch).")] = 1,
    grad_clip: Annotated[float | None, typer.Option("--grad-clip", help="Clip the global gradient norm.")] = None,
    keep_best: Annotated[bool, typer.Option("--keep-best", help="Export the best-on-ID-val evaluation's weights.")] = False,
    eval_every: Annotated[int, typer.Option("--eval-every", min=1, help="Evaluate on ID val every N steps.")] = 25,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader workers for splits too large for memory.")] = 2,
    wise: Annotated[str | None, typer.Option("--wise", help="Also write WiSE-FT mixes at these alphas, e.g. 0.25,0.5,0.75.")] = None,
    wise_head: Annotated[str, typer.Option("--wise-head", help="keep (the fine-tuned head) or mix (with the initial head).")] = "keep",
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16/fp16 autocast on CUDA), fp32, fp16, bf16.")] = "auto",
    store: Store_ = None,
    benchmarks: Benches = None,
    data_root: DataRoot = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from <name>.state.pt if present.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over even if files of another config exist.")] = False,
) -> None:
    """Fine-tune CLIP (LP, FT, LP-FT, FLYP, LoRA, Lipsum-FT; optional regulariser); write a checkpoint `extract --ckpt` reads."""
    from .finetune import FinetuneConfig, wise_mix
    from .finetune import finetune as run_finetune

    cfg = FinetuneConfig(recipe, benchmark=benchmark, model=model, pretrained=pretrained, steps=steps,
                         batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, reg=reg,
                         reg_weight=reg_weight, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_towers=lora_towers,
                         lora_targets=lora_targets, lp_c=lp_c, flyp_head=flyp_head, name=name, device=device,
                         shots=shots, augment=augment, rrc_scale=rrc_scale, epochs=epochs, warmup=warmup,
                         accum_steps=accum_steps, grad_clip=grad_clip, keep_best=keep_best, eval_every=eval_every,
                         workers=workers, precision=precision, benchmarks=str(benchmarks) if benchmarks else None,
                         data_root=str(data_root) if data_root else None)
    from .distributed import dist_info

    res = run_finetune(cfg, out_dir, resume=resume, overwrite=overwrite, store=store)
    if dist_info()[0] != 0:  # torchrun: rank 0 reports and writes the mixes
        return
    out.print(str(res.path))
    if res.adapter_path:
        out.print(str(res.adapter_path))
    if wise:
        for p in wise_mix(res.path, [float(a) for a in wise.split(",")], head=wise_head):
            out.print(str(p))


@app.command()
@friendly
def wise(
    ckpt: Annotated[Path, typer.Argument(help="A fine-tuned checkpoint.")],
    alpha: Annotated[str, typer.Option("--alpha", "-a", help="Comma-separated mixing weights of the fine-tuned weights.")] = "0,0.25,0.5,0.75,1",
    head: Annotated[str, typer.Option("--head", help="keep (the fine-tuned head) or mix (with the initial head).")] = "keep",
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Folder (default: next to CKPT).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Base model, for files not written by oodbench finetune.")] = None,
    pretrained: Annotated[str, typer.Option("--pretrained", help="Base weights, idem.")] = "auto",
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle")] = False,
) -> None:
    """WiSE-FT: write (1 - a) * base + a * fine-tuned checkpoints, one per alpha."""
    from .finetune import wise_mix

    for p in wise_mix(ckpt, [float(a) for a in alpha.split(",")], out_dir, head=head, model=model,
                      pretrained=pretrained, trust_pickle=trust_pickle):
        out.print(str(p))


@app.command()
@friendly
def soup(
    ckpts: Annotated[list[Path], typer.Argument(help="Fine-tuned checkpoints of one base (oodbench finetune).")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The soup checkpoint to write.")] = Path("soup.pt"),
    greedy: Annotated[bool, typer.Option("--greedy", help="Greedy soup by ID val accuracy (else uniform).")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda[:N] (greedy evaluation).")] = "cpu",
    benchmarks: Benches = None,
    data_root: DataRoot = None,
) -> None:
    """Model soups: the uniform or greedy (ID val) weight average of fine-tuned checkpoints."""
    from .finetune import soup as make_soup

    out.print(str(make_soup(ckpts, out_path, greedy=greedy, benchmarks=benchmarks, data_root=data_root, device=device)))


@app.command()
@friendly
def study(
    benchmark: Bench = "digits",
    recipes: Annotated[str, typer.Option("--recipes", help="Comma-separated RECIPE[+REG][:field=value...] specs.")] = "lp,ft,lpft,flyp,lora,ft+ldifs",
    alphas: Annotated[str, typer.Option("--alphas", help="WiSE-FT alphas.")] = "0,0.25,0.5,0.75,1",
    wise: Annotated[str | None, typer.Option("--wise", help="Runs to mix with their base (default: the first gradient recipe); 'none' for no mixes.")] = None,
    wise_head: Annotated[str, typer.Option("--wise-head", help="mix (WiSE-FT paper) or keep.")] = "mix",
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Training steps of every recipe (default 200).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    base_steps: Annotated[int | None, typer.Option("--base-steps", min=1, help="Tiny model only: start from one trained this many steps (80: zero-shot ID acc 87 %).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Study folder: checkpoints, tables, figures.")] = Path("oodbench_study"),
    store: Store_ = None,
    method: Methods = None,
    model: Annotated[str | None, typer.Option("--model")] = None,
    pretrained: Annotated[str, typer.Option("--pretrained")] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    local: Annotated[bool, typer.Option("--local/--no-local", help="Extract patch embeddings (GL-MCM).")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    benchmarks: Benches = None,
    data_root: DataRoot = None,
) -> None:
    """Zero-shot, each recipe and WiSE-FT mixes -> extract -> all scorers -> one report and the accuracy-vs-AUROC figures."""
    from .finetune import run_study

    wise_runs = None if wise is None else [w for w in wise.split(",") if w and w != "none"]
    res = run_study(benchmark, recipes=[r for r in recipes.split(",") if r], alphas=[float(a) for a in alphas.split(",")],
                    wise_recipes=wise_runs, wise_head=wise_head, steps=steps, batch_size=batch_size, out=out_dir,
                    store=store, methods=_methods(method, ["all"]), device=device, local=local, model=model,
                    pretrained=pretrained, benchmarks=benchmarks, data_root=data_root, seed=seed,
                    base_steps=base_steps)
    out.print(res.summary, markup=False, highlight=False, soft_wrap=True)
    for k, p in res.files.items():
        console.print(f"{k}: {p}", highlight=False)


@app.command()
@friendly
def world(retrain: Annotated[bool, typer.Option("--retrain", help="Train the tiny model again.")] = False) -> None:
    """Train (or show) the offline world's tiny CLIP, cached under the user cache directory."""
    from .models import ensure_tiny

    out.print(str(ensure_tiny(retrain=retrain)))


@list_app.command("benchmarks")
@friendly
def list_benchmarks(benchmarks: Benches = None) -> None:
    """Benchmarks of the catalogue with their ID and OoD datasets."""
    from rich import box
    from rich.table import Table

    from .config import load_catalogue

    cat = load_catalogue(benchmarks)
    t = Table(title=f"benchmarks in {cat.path}", box=box.SIMPLE_HEAD, show_lines=True)
    t.add_column("benchmark", no_wrap=True)  # names are never cut; the set list wraps between names
    t.add_column("classes", justify="right")
    t.add_column("model")
    t.add_column("datasets (ID train, test; near-, far-OoD; shift)", ratio=1)
    for b in cat.benchmarks.values():
        groups = {"ID": [b.id_train, b.id_test], "near": [d for d, g in b.ood.items() if g == "near"],
                  "far": [d for d, g in b.ood.items() if g == "far"], "shift": list(b.shift)}
        sets = "; ".join(f"{g} {', '.join(ds)}" for g, ds in groups.items() if ds)
        t.add_row(b.name, str(len(b.classes)), f"{b.model.get('name', '-')}\n{b.model.get('pretrained', '')}", sets)
    out.print(t)


@list_app.command("methods")
@friendly
def list_methods(plugin: Plugins = None) -> None:
    """Every registered scorer: what it reads, what it fits on, its defaults and reference."""
    from rich.table import Table

    from .scorers import get_scorer, scorer_names

    _plugins(plugin)
    from rich import box

    t = Table(title="scorers (higher score = more in-distribution)", box=box.SIMPLE_HEAD, show_lines=True)
    t.add_column("method", no_wrap=True)
    for c in ("needs", "fit on", "defaults", "reference"):
        t.add_column(c, overflow="fold", ratio=2 if c == "reference" else 1)
    for n in scorer_names():
        d = get_scorer(n).describe()
        defaults = d["defaults"].replace(", ", "\n")  # one parameter a line
        t.add_row(d["name"], d["needs"], d["fit"], defaults, d["reference"])
    out.print(t)


@list_app.command("models")
@friendly
def list_models(store: Store_ = None) -> None:
    """Models in the store (keys for --model-key) and their feature files."""
    from rich.table import Table

    from .paths import default_store
    from .store import Store, read_h5

    st = Store(store or default_store())
    t = Table(title=f"models in {st.root}")
    for c in ("model key", "model", "weights", "fingerprint", "feature files"):
        t.add_column(c)
    for k in st.model_keys():
        _, a = read_h5(st.model_path(k))
        files = sorted(p.stem for p in (st.model_dir(k) / "features").glob("*.h5"))
        t.add_row(k, a["model_name"], str(a.get("ckpt") or a.get("pretrained")), a["fingerprint"][:12], ", ".join(files))
    out.print(t)


def _version(value: bool) -> None:
    if value:
        out.print(f"oodbench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False) -> None:
    pass


def main() -> None:
    app(prog_name="oodbench")


if __name__ == "__main__":
    sys.exit(main())
