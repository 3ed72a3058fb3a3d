"""The fine-tuning study: zero-shot, each recipe and WiSE-FT mixes → extract → every scorer → one report.

    from oodbench.finetune import run_study
    res = run_study("digits", recipes=["lp", "ft", "lpft", "flyp", "lora", "ft+ldifs"],
                    alphas=[0, 0.25, 0.5, 0.75, 1], store="study_store", out="study")
    print(res.summary)            # markdown: ID accuracy and AUROC per checkpoint x scorer
    res.files["figure_near"]      # "ID accuracy vs OoD detection", one panel per scorer

Every checkpoint is extracted into the same store (``api.extract(..., ckpt=...)``) and scored
with the scorer zoo (``all`` minus the scorers whose inputs the store lacks: GL-MCM without
``--local``, NegLabel/CSP without negative-label banks, EOE without an outlier-label file),
using the checkpoint's own linear head when it has one (``--head linear``) and the zero-shot
head of its text tower otherwise. Written to ``out``: ``study.json`` (entries, configs,
timings), ``study_metrics.csv`` (the tidy metrics frame of every record), ``study_summary.md``,
``study_report.md`` (the full markdown report) and the figures.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Catalogue, load_catalogue
from ..console import info
from ..errors import OodbenchError
from .common import describe_checkpoint
from .config import FinetuneConfig
from .trainer import finetune
from .wise import DEFAULT_ALPHAS, wise_mix

DEFAULT_RECIPES = ("lp", "ft", "lpft", "flyp", "lora", "ft+ldifs")
SUMMARY_METHODS = ("msp", "energy", "mcm", "glmcm", "knn", "mahalanobis", "rmds", "vim", "react")
FAMILY_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                  "#bcbd22", "#7f7f7f")


@dataclass
class StudyEntry:
    """One checkpoint of the study."""

    label: str
    kind: str  # zeroshot | recipe | wise
    family: str  # the recipe run it belongs to ("zeroshot" for the base)
    ckpt: str | None
    model_key: str = ""
    head: str = "zeroshot"
    alpha: float | None = None
    val_accuracy: float | None = None
    train_seconds: float | None = None
    extract_seconds: float | None = None
    score_seconds: float | None = None
    config: dict[str, Any] | None = None


@dataclass
class StudyResult:
    records: list
    table: Any  # pandas DataFrame (report.metrics_table of every record)
    entries: list[StudyEntry]
    summary: str  # markdown
    files: dict[str, Path] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)
    seconds: float = 0.0


def parse_recipe(spec: str | FinetuneConfig, **defaults: Any) -> FinetuneConfig:
    """``"ft"``, ``"ft+ldifs"``, ``"lora:lora_towers=visual:lora_rank=8"`` → a FinetuneConfig.

    ``recipe[+reg][:field=value]...``; ``defaults`` (benchmark, steps, seed, device, ...) fill
    the fields the spec does not set. A FinetuneConfig is returned as is.
    """
    if isinstance(spec, FinetuneConfig):
        return spec
    head, *pairs = str(spec).split(":")
    recipe, _, reg = head.partition("+")
    kw: dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
    if reg:
        kw["reg"] = reg
    types_ = {f: type(v) for f, v in FinetuneConfig(recipe="ft").to_dict().items()}
    numeric = {"lr": float, "reg_weight": float, "lp_c": float, "shots": int, "epochs": float, "grad_clip": float}
    for pair in pairs:
        k, eq, v = pair.partition("=")
        if not eq or k not in types_:
            raise OodbenchError(f"Recipe spec {spec!r}: {pair!r} is not field=value with a FinetuneConfig field "
                                f"({', '.join(types_)}).")
        cast = numeric.get(k) or types_[k]
        if cast is bool:
            kw[k] = v.lower() in ("1", "true", "yes")
        elif cast is type(None):
            kw[k] = v
        else:
            kw[k] = cast(v)
    if "name" not in kw and (pairs or reg):
        kw["name"] = str(spec).replace(":", "_").replace("+", "-").replace("=", "")
    return FinetuneConfig(recipe=recipe, **kw)


def available_methods(store, key: str, bench, local: bool) -> list[str]:
    """Every registered scorer whose inputs this store has for ``key`` and ``bench``."""
    from ..scorers import get_scorer, scorer_names

    text_dir = store.model_dir(key) / "text"
    banks = {p.stem[len(bench.name) + 1:] for p in text_dir.glob(f"{bench.name}-*.h5")}
    keep = []
    for name in scorer_names():
        cls = get_scorer(name)
        needs = set(getattr(cls, "needs", ()))
        if "local" in needs and not local:
            continue
        if "negatives" in needs and not any(b.startswith("negatives") for b in banks):
            continue
        if "reference" in needs or "layers" in needs:
            continue
        wanted = []
        for pname, param in (getattr(cls, "params", None) or {}).items():
            if pname.endswith("bank") and isinstance(getattr(param, "default", None), str):
                wanted += [b for b in param.default.split("+") if b]
        if any(b not in banks for b in wanted):
            continue
        keep.append(name)
    return keep


def _has_head(ckpt: Path) -> bool:
    import torch

    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    return "classification_head.weight" in sd


def run_study(benchmark: str = "digits", recipes: Sequence[str | FinetuneConfig] = DEFAULT_RECIPES,
              alphas: Sequence[float] = DEFAULT_ALPHAS, *, wise_recipes: Sequence[str] | None = None,
              wise_head: str = "mix", steps: int | None = None, out: str | Path = "oodbench_study",
              store: str | Path | None = None, methods: str | Sequence[str] = "all", device: str = "auto",
              local: bool = True, model: str | None = None, pretrained: str | None = "auto",
              benchmarks: str | Path | Catalogue | None = None, data_root: str | Path | None = None,
              seed: int = 0, batch_size: int | None = None, extract_batch_size: int = 256,
              summary_methods: Sequence[str] = SUMMARY_METHODS, formats: Sequence[str] = ("png",),
              resume: bool = True, base_steps: int | None = None) -> StudyResult:
    """Zero-shot, every recipe and WiSE-FT mixes of ``wise_recipes`` → extract → score → report.

    ``recipes``: specs for :func:`parse_recipe` (or configs); ``steps``/``batch_size``/``seed``/
    ``device`` apply to every recipe that does not set them. ``wise_recipes``: run names to mix
    with their base for every ``alphas`` (default: the first gradient recipe; α = 1 is the run
    itself and is not extracted twice); ``wise_head``: ``mix`` (WiSE-FT paper) or ``keep``.
    ``methods``: ``all`` (the available ones) or a list. Checkpoints go to ``out/checkpoints``.
    ``base_steps`` (tiny model only): start from :func:`short_tiny` (the tiny CLIP trained for
    this many steps instead of 600), whose zero-shot ID accuracy leaves fine-tuning room to help.
    """
    from .. import api
    from ..paths import default_store
    from ..report import metrics_table, render
    from ..scorers import get_scorer
    from ..store import Store

    t_start = time.time()
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    cat = benchmarks if isinstance(benchmarks, Catalogue) else load_catalogue(benchmarks)
    bench = cat.benchmark(benchmark)
    st = Store(store or default_store())
    if base_steps is not None:
        from ..models.tiny import TINY_MODEL

        if (model or bench.model.get("name")) != TINY_MODEL:
            raise OodbenchError(f"base_steps retrains the tiny model; benchmark {benchmark!r} uses another model.")
        model, pretrained = TINY_MODEL, str(short_tiny(base_steps))
    defaults = {"benchmark": benchmark, "steps": steps, "seed": seed, "device": device, "model": model,
                "pretrained": pretrained, "batch_size": batch_size,
                "data_root": str(data_root) if data_root else None,
                "benchmarks": str(cat.path)}
    configs = [parse_recipe(r, **defaults) for r in recipes]
    names = [c.run_name for c in configs]
    if len(set(names)) != len(names):
        raise OodbenchError(f"Two study recipes have the same name ({', '.join(names)}): give one a name=... field.")
    if wise_recipes is None:
        wise_recipes = [c.run_name for c in configs if c.recipe != "lp"][:1]
    missing = [w for w in wise_recipes if w not in names]
    if missing:
        raise OodbenchError(f"WiSE-FT recipe {missing[0]!r} is not among the study's recipes ({', '.join(names)}).")
    datasets = list(dict.fromkeys(bench.splits(include_val=False) + ([bench.id_val] if bench.id_val else [])))
    ext = {"benchmark": benchmark, "store": st.root, "benchmarks": cat, "data_root": data_root,
           "datasets": datasets, "local": local, "device": device, "batch_size": extract_batch_size}
    base_tag = _base_tag(bench, model, pretrained)
    entries: list[StudyEntry] = []

    def add(entry: StudyEntry) -> None:
        t0 = time.time()
        entry.model_key = api.extract(model, base_tag, ckpt=entry.ckpt, **ext)
        entry.extract_seconds = round(time.time() - t0, 2)
        entries.append(entry)

    info(f"[bold]study[/] {benchmark}: zero-shot + {', '.join(names)}; WiSE-FT of "
         f"{', '.join(wise_recipes) or 'none'} at alphas {', '.join(f'{a:g}' for a in alphas)}")
    add(StudyEntry("zeroshot", "zeroshot", "zeroshot", None))
    runs = {}
    for cfg in configs:
        res = finetune(cfg, ckpt_dir, resume=resume, store=st.root, catalogue=cat)
        runs[cfg.run_name] = res
        e = StudyEntry(cfg.run_name, "recipe", cfg.run_name, str(res.path), val_accuracy=res.val_accuracy,
                       train_seconds=res.seconds, config=cfg.to_dict())
        e.head = "linear" if res.head_weight is not None else "zeroshot"
        add(e)
    for name in wise_recipes:
        base_path = runs[name].path
        todo = [float(a) for a in alphas if float(a) != 1.0]
        for path, alpha in zip(wise_mix(base_path, todo, head=wise_head), todo, strict=True):
            meta = describe_checkpoint(path)
            e = StudyEntry(f"{name}-wise{alpha:g}", "wise", name, str(path), alpha=alpha,
                           head="linear" if _has_head(path) else "zeroshot", config={"wise_head": meta.get("wise_head")})
            add(e)
    # score: every fine-tuned checkpoint with the zero-shot model as the reference of two-model scorers
    zs_key = entries[0].model_key
    takes_ref = "reference" in inspect.signature(api.score).parameters
    if isinstance(methods, str) and "," not in methods and methods != "all":
        methods = [methods]
    if methods == "all" or list(methods) == ["all"]:
        if hasattr(api, "available_methods"):
            wanted = api.available_methods(st, zs_key, bench, takes_ref)
        else:
            wanted = available_methods(st, zs_key, bench, local)
    else:
        wanted = [m.strip().lower() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    ref_methods = [m for m in wanted if "reference" in getattr(get_scorer(m), "needs", ())]
    if ref_methods and not takes_ref:
        raise OodbenchError(f"{', '.join(ref_methods)} need a reference model, which this api.score cannot take.")
    records = []
    score_files = []
    for e in entries:
        t0 = time.time()
        kw = {}
        ms = wanted
        if ref_methods:  # the zero-shot model is its own reference: two-model scores skip it
            ms = [m for m in wanted if m not in ref_methods] if e.kind == "zeroshot" else wanted
            kw = {"reference": zs_key} if e.kind != "zeroshot" else {}
        recs = api.score(ms, benchmark=benchmark, model_key=e.model_key, store=st.root, head=e.head,
                         benchmarks=cat, **kw)
        e.score_seconds = round(time.time() - t0, 2)
        for r in recs:
            r.model = e.label
            r.provenance["study"] = {"kind": e.kind, "family": e.family, "alpha": e.alpha, "ckpt": e.ckpt}
        records += recs
        score_files.append(str(st.scores_path(e.model_key, bench.name)))
    st.write_last_run({"scores": score_files})
    df = metrics_table(records)
    files: dict[str, Path] = {}
    files["metrics_csv"] = out / "study_metrics.csv"
    df.drop(columns=[c for c in df.columns if c.startswith("_")], errors="ignore").to_csv(files["metrics_csv"], index=False)
    summary = summary_markdown(df, entries, [m for m in summary_methods if m in wanted], bench)
    if "shift_accuracy" in df:
        summary += shift_summary_markdown(df, entries, [m for m in summary_methods if m in wanted], bench)
    files["summary"] = out / "study_summary.md"
    files["summary"].write_text(summary)
    files["report"] = out / "study_report.md"
    files["report"].write_text(render(df, "markdown", metrics=("auroc", "fpr95"), fpr_convention="id",
                                      title=f"oodbench study: {benchmark}", provenance=df.attrs.get("provenance")))
    for group, tag in (("near avg", "near"), ("far avg", "far")):
        if (df["ood"] == group).any():
            for fmt in formats:
                path = out / f"acc_vs_auroc_{benchmark}_{tag}.{fmt}"
                acc_vs_auroc_figure(df, entries, group, f"{benchmark}: ID accuracy vs {tag}-OoD AUROC").savefig(path)
                files[f"figure_{tag}" + ("" if fmt == formats[0] else f"_{fmt}")] = path
    if "shift_accuracy" in df and df["shift_accuracy"].notna().any():
        for fmt in formats:
            path = out / f"wise_id_vs_shift_{benchmark}.{fmt}"
            wise_shift_figure(df, entries, f"{benchmark}: ID accuracy vs shift accuracy").savefig(path)
            files["figure_shift" + ("" if fmt == formats[0] else f"_{fmt}")] = path
    seconds = round(time.time() - t_start, 1)
    files["json"] = out / "study.json"
    files["json"].write_text(json.dumps({
        "benchmark": benchmark, "methods": wanted, "alphas": [float(a) for a in alphas], "wise_head": wise_head,
        "store": str(st.root), "seconds": seconds, "entries": [asdict(e) for e in entries],
        "histories": {k: r.history for k, r in runs.items()},
    }, indent=2, default=str))
    info(f"study written to {out} in {seconds:.0f} s")
    return StudyResult(records, df, entries, summary, files, wanted, seconds)


def short_tiny(steps: int = 80) -> Path:
    """The tiny CLIP trained by ``train_tiny`` with ``steps`` steps instead of 600 (same seed, data and
    schedule shape), cached next to the full one: on the digits world its zero-shot ID accuracy is
    well below 100 %, so fine-tuning has something to gain (80 steps: 87 % on digits 0-4)."""
    from ..models.tiny import TINY_VERSION, tiny_weights_path, train_tiny

    path = tiny_weights_path().with_name(f"oodbench-tiny-digits-{steps}steps-v{TINY_VERSION}.pt")
    if not path.exists():
        train_tiny(steps=steps, out=path)
    return path


def _base_tag(bench, model: str | None, pretrained: str | None) -> str | None:
    if pretrained != "auto":
        return pretrained
    return bench.model.get("pretrained") if (model is None or model == bench.model.get("name")) else None


def summary_markdown(df, entries: list[StudyEntry], methods: Sequence[str], bench) -> str:
    """Markdown: per checkpoint, ID accuracy and near/far-average AUROC of each summary scorer,
    plus the mean AUROC over the scorers every checkpoint has (two-model scorers skip zero-shot)."""
    order = [e.label for e in entries]
    groups = [g for g in ("near avg", "far avg") if (df["ood"] == g).any()]
    lines = []
    common = set.intersection(*(set(df[df["model"] == e.label]["method"]) for e in entries if (df["model"] == e.label).any()))
    labels = list(dict.fromkeys(df["method"]))  # method labels: "vim(dim=32)" for vim with a benchmark override
    shown = [next((lab for lab in labels if lab == m or lab.startswith(m + "(")), m) for m in methods]
    for g in groups:
        sub = df[df["ood"] == g]
        head = ["checkpoint", "head", "ID acc"] + shown + [f"mean of {len(common)}"]
        lines += [f"**{g.replace(' avg', '')}-OoD AUROC (%)** ({', '.join(n for n, gr in bench.ood.items() if f'{gr} avg' == g)})",
                  "", "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
        for label in order:
            rows = sub[sub["model"] == label]
            if rows.empty:
                continue
            e = next(x for x in entries if x.label == label)
            by = dict(zip(rows["method"], rows["auroc"], strict=True))
            cells = [label, e.head, f"{100 * rows['accuracy'].iloc[0]:.1f}"]
            cells += [f"{100 * by[m]:.1f}" if m in by and np.isfinite(by[m]) else "–" for m in shown]
            cells.append(f"{100 * np.nanmean([by[m] for m in common]):.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def acc_vs_auroc_figure(df, entries: list[StudyEntry], group: str = "near avg", title: str = ""):
    """One panel per scorer: ID accuracy (x) vs AUROC of ``group`` (y), a point per checkpoint;
    WiSE-FT mixes are joined, α = 0 → 1, ending at their fine-tuned run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sub = df[df["ood"] == group]
    methods = list(dict.fromkeys(sub["method"]))
    ncol = min(6, max(1, len(methods)))
    nrow = int(np.ceil(len(methods) / ncol))
    fig = Figure(figsize=(2.6 * ncol, 2.4 * nrow + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    families = list(dict.fromkeys(e.family for e in entries))
    colour = {f: ("black" if f == "zeroshot" else FAMILY_COLOURS[i % len(FAMILY_COLOURS)])
              for i, f in enumerate(families)}
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax, method in zip(axes.flat, methods, strict=False):
        rows = sub[sub["method"] == method].set_index("model")
        for fam in families:
            chain = [e for e in entries if e.family == fam and e.kind == "wise"]
            if chain:
                chain = sorted(chain, key=lambda e: e.alpha) + [e for e in entries if e.label == fam]
                xs = [100 * rows.loc[e.label, "accuracy"] for e in chain if e.label in rows.index]
                ys = [100 * rows.loc[e.label, "auroc"] for e in chain if e.label in rows.index]
                ax.plot(xs, ys, "-", color=colour[fam], lw=0.8, alpha=0.6)
                ax.scatter(xs[:-1], ys[:-1], s=14, color=colour[fam], marker="o", facecolors="none")
        for e in entries:
            if e.kind != "wise" and e.label in rows.index:
                ax.scatter(100 * rows.loc[e.label, "accuracy"], 100 * rows.loc[e.label, "auroc"], s=30,
                           color=colour[e.family], marker="*" if e.kind == "zeroshot" else "o", zorder=3)
        lo, hi = ax.get_ylim()
        if hi - lo < 1:  # saturated panels (e.g. AUROC 100 everywhere): a readable 1-point window
            mid = (hi + lo) / 2
            ax.set_ylim(mid - 0.5, mid + 0.5)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.set_title(method, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("ID accuracy (%)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("AUROC (%)", fontsize=8)

    handles = _legend_handles(entries, families, colour)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(8, len(handles)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _legend_handles(entries, families, colour) -> list:
    """Legend entries of the study figures: one marker per recipe family, plus the WiSE-FT path."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="*" if f == "zeroshot" else "o", ls="", color=colour[f], label=f) for f in families]
    if any(e.kind == "wise" for e in entries):
        handles.append(Line2D([], [], marker="o", ls="-", color="grey", markerfacecolor="none", label="WiSE-FT α"))
    return handles


def _shown_labels(df, methods: Sequence[str]) -> list[str]:
    labels = list(dict.fromkeys(df["method"]))
    return [next((lab for lab in labels if lab == m or lab.startswith(m + "(")), m) for m in methods]


def shift_summary_markdown(df, entries: list[StudyEntry], methods: Sequence[str], bench) -> str:
    """Markdown, for benchmarks with covariate-shift sets: per checkpoint, ID accuracy and shift
    accuracy (mean over the shift sets) beside, per summary scorer, the overall OoD AUROC, the
    full-spectrum AUROC (ID test ∪ shift sets vs OoD, OpenOOD v1.5) and the AURC on the shift
    sets (the score as confidence, FD-Shifts; lower is better); percent."""
    sub = df[df["ood"] == "avg"]
    shown = _shown_labels(df, methods)
    blocks = (("auroc", "OoD AUROC (%), all OoD sets"), ("fsood_auroc", "FSOOD AUROC (%): ID test + shift sets vs OoD"),
              ("aurc_shift", "AURC on the shift sets (%, lower is better)"))
    sets = ", ".join(bench.shift)
    lines = ["", f"**Covariate shift** ({sets}): ID accuracy and shift accuracy beside each scorer's metrics", ""]
    for col, title in blocks:
        head = ["checkpoint", "head", "ID acc", "shift acc"] + shown
        lines += [f"*{title}*", "", "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
        for e in entries:
            rows = sub[sub["model"] == e.label]
            if rows.empty:
                continue
            by = dict(zip(rows["method"], rows[col], strict=True))
            shift = rows["shift_accuracy"].iloc[0]
            cells = [e.label, e.head, f"{100 * rows['accuracy'].iloc[0]:.1f}",
                     f"{100 * shift:.1f}" if np.isfinite(shift) else "–"]
            cells += [f"{100 * by[m]:.1f}" if m in by and np.isfinite(by[m]) else "–" for m in shown]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def wise_shift_figure(df, entries: list[StudyEntry], title: str = ""):
    """The WiSE-FT figure (Wortsman et al. 2022, Fig. 1): ID accuracy (x) vs shift accuracy
    (mean over the shift sets, y), a point per checkpoint; each recipe's WiSE-FT mixes are
    joined, α ascending, ending at the fine-tuned run (α = 1). The head's
    accuracies are the same for every scorer, so one panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = df[df["ood"] == "avg"].groupby("model", sort=False)[["accuracy", "shift_accuracy"]].first()
    fig = Figure(figsize=(3.6, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    families = list(dict.fromkeys(e.family for e in entries))
    colour = {f: ("black" if f == "zeroshot" else FAMILY_COLOURS[i % len(FAMILY_COLOURS)])
              for i, f in enumerate(families)}
    for fam in families:
        chain = sorted((e for e in entries if e.family == fam and e.kind == "wise"), key=lambda e: e.alpha)
        if chain:
            chain += [e for e in entries if e.label == fam]
            pts = [(100 * rows.loc[e.label, "accuracy"], 100 * rows.loc[e.label, "shift_accuracy"])
                   for e in chain if e.label in rows.index]
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "-", color=colour[fam], lw=0.8, alpha=0.7)
            ax.scatter(xs[:-1], ys[:-1], s=14, color=colour[fam], facecolors="none")
    for e in entries:
        if e.kind != "wise" and e.label in rows.index:
            ax.scatter(100 * rows.loc[e.label, "accuracy"], 100 * rows.loc[e.label, "shift_accuracy"], s=30,
                       color=colour[e.family], marker="*" if e.kind == "zeroshot" else "o", zorder=3)
    ax.set_xlabel("ID accuracy (%)", fontsize=8)
    ax.set_ylabel("shift accuracy (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    handles = _legend_handles(entries, families, colour)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
