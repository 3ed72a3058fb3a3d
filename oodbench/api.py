"""The Python equivalents of the CLI commands (a notebook calls these, the CLI wires them).

    from oodbench import extract, score, report, run
    keys = extract("oodbench-tiny", "digits", benchmark="digits")
    records = score(benchmark="digits", methods=["mcm", "knn"])
    print(report(records, fmt="markdown"))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_BENCHMARK, Catalogue, load_catalogue
from .console import info
from .errors import OodbenchError
from .paths import default_store
from .results import ScoreRecord, load_records
from .store import Store
from .verify import check_split_files

if TYPE_CHECKING:
    from .extract import ExtractOptions

# The model and scoring code (torch, open_clip, the scorers) is imported inside the functions
# that use it, so that `oodbench report` and `import oodbench` stay light.

SPINE_METHODS = ("msp", "maxlogit", "energy", "mcm", "knn", "mahalanobis", "vim")


def _catalogue(benchmarks: str | Path | Catalogue | None) -> Catalogue:
    return benchmarks if isinstance(benchmarks, Catalogue) else load_catalogue(benchmarks)


def extract(model: str | None = None, pretrained: str | None = None, *, benchmark: str = DEFAULT_BENCHMARK,
            ckpt: str | Path | None = None, ckpt_format: str = "auto", store: str | Path | None = None,
            benchmarks: str | Path | Catalogue | None = None, data_root: str | Path | None = None,
            download: bool = False, datasets: list[str] | None = None, options: ExtractOptions | None = None,
            negatives: str | None = None, outliers: str | Path | None = None, templates: str | None = None,
            trust_pickle: bool = False, wise_alpha: float | None = None, wise_base: str | Path | None = None,
            negative_words: tuple[str, str] = ("neglabel-nouns", "neglabel-adjectives"),
            class_token_position: str | None = None, **option_kwargs: Any) -> str:
    """Extract every split of ``benchmark`` (or only ``datasets``) for one model; returns its store key.

    ``model``/``pretrained`` default to the benchmark's own model entry. Already complete files
    are reused; unfinished ones resume. ``negatives`` (``neglabel``, ``csp``, ``all`` or
    ``file:SELECTION``) adds the negative-label banks (NegLabel's published corpus, or a fixed
    selection such as ``file:neglabel-in1k``); ``outliers`` a file of envisioned outlier labels (EOE);
    ``templates`` overrides the benchmark's prompt templates of the class bank (a list name,
    ``file:PATH`` or one template). ``wise_alpha`` mixes the checkpoint with its base
    (WiSE-FT, θ = (1−α)θ_base + αθ_ckpt; ``wise_base`` names another base checkpoint);
    ``trust_pickle`` allows checkpoints that are pickled Python objects (runs their code).
    A CoOp/LoCoOp prompt learner's context becomes the ``classes`` bank (the handcrafted
    prompts stay available as ``classes_prompts``); ``class_token_position`` is its
    end/middle/front where the run's log does not record it.
    """
    from .extract import (
        ExtractOptions,
        check_labels,
        extract_dataset,
        extraction_summary,
        write_context_bank,
        write_model_info,
        write_negative_banks,
        write_text_bank,
    )
    from .models import check_device, load_model
    from .text import resolve_templates

    cat = _catalogue(benchmarks)
    bench = cat.benchmark(benchmark)
    model = model or bench.model.get("name")
    if pretrained is None and model == bench.model.get("name"):
        pretrained = bench.model.get("pretrained")
    if not model:
        raise OodbenchError(f"Benchmark {benchmark!r} names no model: pass --model.")
    options = options or ExtractOptions(**option_kwargs)
    options.device = check_device(options.device)
    from .decode import DECODERS

    if options.decode not in DECODERS:
        raise OodbenchError(f"decode must be one of {', '.join(DECODERS)}; got {options.decode!r}.")
    from .distributed import dist_info, init_from_env

    options.device = init_from_env(options.device)
    rank, _ = dist_info()
    names = datasets or bench.splits()
    unknown = [d for d in names if d not in bench.splits()]
    if unknown:
        raise OodbenchError(f"Dataset {unknown[0]!r} is not part of benchmark {benchmark!r}: choose from {', '.join(bench.splits())}.")
    sources = {d: cat.source(d, data_root, download) for d in names}  # validate data before the model
    for d in {bench.id_train, bench.id_val, bench.id_test} & set(sources):
        check_labels(sources[d], len(bench.classes), bench.name)
    bundle = load_model(model, pretrained, ckpt, ckpt_format, device=options.device, trust_pickle=trust_pickle,
                        wise_alpha=wise_alpha, wise_base=wise_base, class_token_position=class_token_position)
    if options.decode == "device":  # refuse a preprocess it cannot reproduce before writing anything
        from .decode import TensorPreprocess

        TensorPreprocess.from_transform(bundle.preprocess)
    st = Store(store or default_store())
    if rank == 0:
        write_model_info(bundle, st)
        class_templates = resolve_templates(templates) if templates else bench.templates
        if getattr(bundle, "text_ctx", None) is not None:
            write_context_bank(bundle, st, f"{bench.name}-classes", bench.classes, options.device)
            write_text_bank(bundle, st, f"{bench.name}-classes_prompts", bench.classes, class_templates,
                            options.device)
        else:
            write_text_bank(bundle, st, f"{bench.name}-classes", bench.classes, class_templates, options.device)
        if negatives:
            write_negative_banks(bundle, st, bench, negatives, options.device, *negative_words)
        if outliers:
            from .negatives import load_corpus

            write_text_bank(bundle, st, f"{bench.name}-outliers", load_corpus(str(outliers)), class_templates,
                            options.device)
    info(f"model {bundle.key} ({bundle.fingerprint[:12]}) -> {st.model_dir(bundle.key)}")
    paths = {d: extract_dataset(bundle, src, st.features_path(bundle.key, d), options, d, spec=cat.datasets[d])
             for d, src in sources.items()}
    if rank == 0:
        extraction_summary(paths, sources)
    return bundle.key


def resolve_model_key(store: Store, model_key: str | None) -> str:
    """The store key that ``model_key`` names (exact, prefix or substring); the only model if None."""
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


def models_to_score(store: Store, bench, exclude: str | None = None) -> list[str]:
    """The store's models that hold every feature file ``bench`` scores (ID splits and OoD sets),
    without ``exclude`` (the reference model); says in one line which it scores and skips.

    A store with one model (besides ``exclude``) gives that model, whatever it holds.
    """
    keys = [k for k in store.model_keys() if k != exclude]
    if not keys:
        raise OodbenchError(f"Store {store.root} holds no extracted model"
                            f"{' besides the reference' if exclude else ''}: run `oodbench extract` first.")
    if len(keys) == 1:
        return keys
    needed = [d for d in (bench.id_train, bench.id_val, bench.id_test, *bench.ood) if d]
    missing = {k: [d for d in needed if not store.features_path(k, d).exists()] for k in keys}
    ready = [k for k in keys if not missing[k]]
    if not ready:
        raise OodbenchError(
            f"No model of store {store.root} has every feature file of benchmark {bench.name!r} "
            f"(e.g. {keys[0]} lacks {missing[keys[0]][0]}): extract them, or choose a model with --model-key."
        )
    lacking = [k for k in keys if missing[k]]
    info(f"scoring {len(ready)} model(s) of {store.root} on {bench.name}: {', '.join(ready)}"
         + (f"; not {', '.join(lacking)} (missing features)" if lacking else "")
         + " (--model-key picks one)")
    return ready


def score(methods: list[str] | str = SPINE_METHODS, *, benchmark: str = DEFAULT_BENCHMARK,
          model_key: str | None = None, store: str | Path | None = None, params: list[str] | None = None,
          head: str = "zeroshot", head_templates: str = "ensemble",
          benchmarks: str | Path | Catalogue | None = None, tune: bool = False,
          reference: str | None = None) -> list[ScoreRecord]:
    """Score the ID test split and every OoD split of ``benchmark`` with each method.

    ``model_key``: the model of the store to score (prefix ok). Default: every model of the
    store that holds the benchmark's features (except ``reference``), each into its own scores
    file; the store's ``last_run.json`` then names them all, so ``report`` compares them.
    ``tune``: pick free hyperparameters on ID val vs the benchmark's ood_val sets first.
    ``reference``: model key (prefix ok) of a second model of the same store, normally the
    zero-shot base, for scorers that read two models (anchored_mcm, ft_conf_zs, disagreement).
    ``methods="all"``: every registered scorer whose needs the store can meet; a scorer that
    then cannot fit or score this data is skipped with its reason (a named one fails the run).
    """
    cat = _catalogue(benchmarks)
    bench = cat.benchmark(benchmark)
    st = Store(store or default_store())
    ref_key = resolve_model_key(st, reference) if reference else None
    keys = [resolve_model_key(st, model_key)] if model_key else models_to_score(st, bench, exclude=ref_key)
    for key in keys:  # new scores merge into each scores file: refuse a damaged one before any work
        if st.scores_path(key, bench.name).exists():
            load_records(st.scores_path(key, bench.name))
    opened = [d for d in (bench.id_train, bench.id_val, bench.id_test, *bench.ood, *bench.shift,
                          *(bench.ood_val if tune else ()))
              if d]
    for k in dict.fromkeys(filter(None, (*keys, ref_key))):
        check_split_files(st, k, opened, cat, bench.name)  # stale or misnamed feature files refused
    records: list[ScoreRecord] = []
    for key in keys:
        records += _score_model(st, key, bench, methods, params, head, head_templates, tune, ref_key)
    st.write_last_run({"scores": [str(st.scores_path(k, bench.name)) for k in keys]})
    return records


def _score_model(st: Store, key: str, bench, methods: list[str] | str, params: list[str] | None, head: str,
                 head_templates: str, tune: bool, ref_key: str | None) -> list[ScoreRecord]:
    from .engine import parse_overrides, score_benchmark

    every = isinstance(methods, str) and methods == "all"
    if every:
        methods = available_methods(st, key, bench, ref_key is not None)
    elif isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(m.lower() for m in methods))
    bench_params = [p for p in bench.params if p.split(".", 1)[0] in methods]
    overrides = parse_overrides(bench_params + list(params or []), methods)
    return score_benchmark(st, key, bench, methods, overrides, head, head_templates, tune,
                           reference_key=ref_key, skip_failures=every)


def available_methods(st: Store, key: str, bench, with_reference: bool = False) -> list[str]:
    """Registered scorers whose inputs this store holds (``-m all``); says what it skips."""
    from .engine import load_model_view
    from .scorers import get_scorer, scorer_names
    from .store import FeatureFile

    view = load_model_view(st, key, bench)
    test = FeatureFile(st.features_path(key, bench.id_test)).keys
    have = {"logits", "head", "features", "embeds", "labels"}
    if "layers/cls" in test:
        have.add("layers")
    if "local_embeds" in test:
        have.add("local")
    if "classes" in view.text:
        have.add("text")
    if with_reference:
        have.add("reference")
    chosen, skipped = [], []
    for name in scorer_names():
        cls = get_scorer(name)
        banks = [p.default for k, p in cls.params.items() if k in ("bank", "id_bank", "outlier_bank")]
        ok = set(cls.needs) - {"negatives"} <= have and all(
            b in view.text for bank in banks for b in str(bank).split("+") if b)
        (chosen if ok else skipped).append(name)
    if skipped:
        info(f"-m all: skipping {', '.join(skipped)} (their features or text banks are not in the store: "
             "extract with --layers/--local/--negatives/--outliers, or pass --reference)")
    return chosen


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
           standalone: bool = False, layout: str = "compact"):
    """Render a metrics table (a rich :class:`~oodbench.report.TerminalView`, or text for
    markdown/csv/json/latex); ``layout``: rich only, ``compact`` or ``wide``."""
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
    if fmt == "rich":
        kwargs["layout"] = layout
    return render(df, fmt, **kwargs)


def failure_report(records: list[ScoreRecord] | None = None, *, fmt: str = "rich",
                   scores: list[str | Path] | None = None, store: str | Path | None = None,
                   methods: list[str] | None = None, title: str | None = None):
    """The robustness / failure-detection table (:func:`~oodbench.tables.failure_table`) of
    records scored with covariate-shift sets, rendered by :func:`~oodbench.report.render_failure`."""
    from .report import failure_table, render_failure

    records = records if records is not None else load_scores(scores, store)
    if methods:
        records = [r for r in records if r.method in methods or r.label in methods]
    if not records:
        raise OodbenchError("No scores to report: check --method or run `oodbench score`.")
    return render_failure(failure_table(records), fmt, title)


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
