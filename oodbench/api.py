"""The Python equivalents of the CLI commands (a notebook calls these, the CLI wires them).

    from oodbench import extract, score, report, run
    keys = extract("oodbench-tiny", "digits", benchmark="digits")
    records = score(benchmark="digits", methods=["mcm", "knn"])
    print(report(records, fmt="markdown"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import DEFAULT_BENCHMARK, Catalogue, load_catalogue
from .console import info
from .engine import parse_overrides, score_benchmark
from .errors import OodbenchError
from .extract import ExtractOptions, extract_dataset, write_model_info, write_text_bank
from .models import check_device, load_model
from .paths import default_store
from .results import ScoreRecord, load_records
from .scorers import scorer_names
from .store import Store

SPINE_METHODS = ("msp", "maxlogit", "energy", "mcm", "knn", "mahalanobis", "vim")


def _catalogue(benchmarks: str | Path | Catalogue | None) -> Catalogue:
    return benchmarks if isinstance(benchmarks, Catalogue) else load_catalogue(benchmarks)


def extract(model: str | None = None, pretrained: str | None = None, *, benchmark: str = DEFAULT_BENCHMARK,
            ckpt: str | Path | None = None, ckpt_format: str = "auto", store: str | Path | None = None,
            benchmarks: str | Path | Catalogue | None = None, data_root: str | Path | None = None,
            download: bool = False, datasets: list[str] | None = None, options: ExtractOptions | None = None,
            **option_kwargs: Any) -> str:
    """Extract every split of ``benchmark`` (or only ``datasets``) for one model; returns its store key.

    ``model``/``pretrained`` default to the benchmark's own model entry. Already complete files
    are reused; unfinished ones resume.
    """
    cat = _catalogue(benchmarks)
    bench = cat.benchmark(benchmark)
    model = model or bench.model.get("name")
    if pretrained is None and model == bench.model.get("name"):
        pretrained = bench.model.get("pretrained")
    if not model:
        raise OodbenchError(f"Benchmark {benchmark!r} names no model: pass --model.")
    options = options or ExtractOptions(**option_kwargs)
    options.device = check_device(options.device)
    names = datasets or bench.splits()
    unknown = [d for d in names if d not in bench.splits()]
    if unknown:
        raise OodbenchError(f"Dataset {unknown[0]!r} is not part of benchmark {benchmark!r}: choose from {', '.join(bench.splits())}.")
    sources = {d: cat.source(d, data_root, download) for d in names}  # validate data before the model
    bundle = load_model(model, pretrained, ckpt, ckpt_format, device=options.device)
    st = Store(store or default_store())
    write_model_info(bundle, st)
    write_text_bank(bundle, st, f"{bench.name}-classes", bench.classes, bench.templates, options.device)
    info(f"model {bundle.key} ({bundle.fingerprint[:12]}) -> {st.model_dir(bundle.key)}")
    for d, src in sources.items():
        extract_dataset(bundle, src, st.features_path(bundle.key, d), options, d)
    return bundle.key


def resolve_model_key(store: Store, model_key: str | None) -> str:
    keys = store.model_keys()
    if model_key:
        if model_key in keys:
            return model_key
        hits = [k for k in keys if k.startswith(model_key) or model_key in k]
        if len(hits) == 1:
            return hits[0]
        raise OodbenchError(
            f"Model {model_key!r} {'is ambiguous' if hits else 'is not'} in store {store.root} "
            f"(have: {', '.join(keys) or 'none'}): pass one of these keys with --model-key."
        )
    if len(keys) == 1:
        return keys[0]
    if not keys:
        raise OodbenchError(f"Store {store.root} holds no extracted model: run `oodbench extract` first.")
    raise OodbenchError(f"Store {store.root} holds several models ({', '.join(keys)}): choose one with --model-key.")


def score(methods: list[str] | str = SPINE_METHODS, *, benchmark: str = DEFAULT_BENCHMARK,
          model_key: str | None = None, store: str | Path | None = None, params: list[str] | None = None,
          head: str = "zeroshot", head_templates: str = "ensemble",
          benchmarks: str | Path | Catalogue | None = None) -> list[ScoreRecord]:
    """Score the ID test split and every OoD split of ``benchmark`` with each method."""
    if isinstance(methods, str):
        methods = scorer_names() if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(m.lower() for m in methods))
    cat = _catalogue(benchmarks)
    bench = cat.benchmark(benchmark)
    st = Store(store or default_store())
    key = resolve_model_key(st, model_key)
    bench_params = [p for p in bench.params if p.split(".", 1)[0] in methods]
    overrides = parse_overrides(bench_params + list(params or []), methods)
    records = score_benchmark(st, key, bench, methods, overrides, head, head_templates)
    st.write_last_run({"scores": [str(st.scores_path(key, bench.name))]})
    return records


def load_scores(paths: list[str | Path] | None = None, store: str | Path | None = None) -> list[ScoreRecord]:
    """Records from score files, or from the files of the store's last run."""
    if not paths:
        st = Store(store or default_store())
        paths = st.read_last_run()["scores"]
    records: list[ScoreRecord] = []
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*/scores/*.h5")) if p.is_dir() else [p]
        if p.is_dir() and not files:
            raise OodbenchError(f"No scores files under {p}: run `oodbench score` first.")
        for f in files:
            records += load_records(f)
    return records


def report(records: list[ScoreRecord] | None = None, *, fmt: str = "rich", scores: list[str | Path] | None = None,
           store: str | Path | None = None, baseline: str | None = None, ci: float | None = None,
           n_boot: int = 1000, seed: int = 0, metrics: tuple[str, ...] = ("auroc", "fpr95"),
           fpr: str = "id", methods: list[str] | None = None, title: str | None = None,
           standalone: bool = False):
    """Render a metrics table (rich Table, or text for markdown/csv/json/latex)."""
    from .report import metrics_table, provenance, render

    records = records if records is not None else load_scores(scores, store)
    if methods:
        records = [r for r in records if r.method in methods or r.label in methods]
    if not records:
        raise OodbenchError("No scores to report: check --method or run `oodbench score`.")
    df = metrics_table(records, baseline=baseline, ci=ci, n_boot=n_boot, seed=seed)
    kwargs: dict[str, Any] = {"metrics": metrics, "fpr_convention": fpr, "title": title,
                              "provenance": provenance(records)}
    if fmt == "latex":
        kwargs["standalone"] = standalone
    return render(df, fmt, **kwargs)


def run(benchmark: str = DEFAULT_BENCHMARK, *, model: str | None = None, pretrained: str | None = None,
        ckpt: str | Path | None = None, methods: list[str] | str = SPINE_METHODS, store: str | Path | None = None,
        benchmarks: str | Path | Catalogue | None = None, data_root: str | Path | None = None,
        download: bool = False, params: list[str] | None = None, head: str = "zeroshot",
        options: ExtractOptions | None = None) -> list[ScoreRecord]:
    """extract (cached) -> score -> records, for one benchmark and model."""
    cat = _catalogue(benchmarks)
    key = extract(model, pretrained, benchmark=benchmark, ckpt=ckpt, store=store, benchmarks=cat,
                  data_root=data_root, download=download, options=options)
    return score(methods, benchmark=benchmark, model_key=key, store=store, params=params, head=head,
                 benchmarks=cat)
