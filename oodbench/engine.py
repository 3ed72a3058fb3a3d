"""The scoring engine: store -> Inputs -> fitted scorers -> ScoreRecords (on the CPU).

Fits happen once per (method, parameters) and are shared by the ID test split and every
OoD split. Scorers never touch files: they receive :class:`~oodbench.scorers.Inputs`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__, fitcache
from .config import Benchmark
from .console import info, progress, warn
from .errors import OodbenchError
from .metrics import accuracy
from .results import ScoreRecord, save_records
from .scorers import Head, Inputs, TextBank, VisualParams, make_scorer
from .store import FeatureFile, Store, read_h5

FEATURE_KEYS = ("image_embeds", "penultimate", "labels", "ids", "layers/cls", "local_embeds")


@dataclass
class ModelView:
    """What the store holds for one model: attributes, visual params, heads, text banks."""

    key: str
    attrs: dict[str, Any]
    visual: VisualParams
    linear: Head | None
    text: dict[str, TextBank] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]


def load_model_view(store: Store, key: str, benchmark: Benchmark) -> ModelView:
    path = store.model_path(key)
    if not path.exists():
        have = ", ".join(store.model_keys()) or "none"
        raise OodbenchError(f"No model {key!r} in store {store.root} (have: {have}): run `oodbench extract` first.")
    arrays, attrs = read_h5(path)
    visual = VisualParams(
        proj=arrays.get("visual/proj"), ln_post_weight=arrays.get("visual/ln_post_weight"),
        ln_post_bias=arrays.get("visual/ln_post_bias"), ln_eps=float(attrs.get("ln_eps", 1e-5)),
        logit_scale=float(attrs["logit_scale"]),
    )
    linear = None
    if "heads/linear/weight" in arrays:
        linear = Head("linear", arrays["heads/linear/weight"], arrays["heads/linear/bias"],
                      attrs.get("linear_head_input") or "embeds")
    text = {}
    prefix = f"{benchmark.name}-"
    for p in sorted((store.model_dir(key) / "text").glob(f"{prefix}*.h5")):
        t_arrays, t_attrs = read_h5(p)
        text[p.stem[len(prefix):]] = TextBank(list(t_attrs["names"]), list(t_attrs["templates"]), t_arrays["embeds"])
    return ModelView(key, attrs, visual, linear, text)


def make_head(view: ModelView, name: str, templates: str = "ensemble") -> Head:
    """``zeroshot``: logit_scale x normalised class text embeddings on normalised embeddings."""
    if name == "zeroshot":
        bank = view.text.get("classes")
        if bank is None:
            raise OodbenchError("The store has no class text bank for this benchmark: rerun `oodbench extract`.")
        w = view.visual.logit_scale * bank.name_embeds(templates)
        return Head("zeroshot", w.astype(np.float32), np.zeros(w.shape[0], np.float32), "embeds")
    if name == "linear":
        if view.linear is None:
            raise OodbenchError(
                f"Model {view.key} has no linear head: extract from a checkpoint that ships one, or use --head zeroshot."
            )
        return view.linear
    raise OodbenchError(f"Unknown head {name!r}: use zeroshot or linear.")


class StoreColumn:
    """Loader of one dataset of a feature file: ``loader()`` reads it whole; ``iter_chunks(rows)``
    and ``part(index)`` read row blocks / a slice, so that big train splits are converted
    (e.g. L2-normalised) block by block without a second full-size copy."""

    def __init__(self, ff: FeatureFile, name: str):
        self.ff, self.name = ff, name
        self.shape = tuple(ff.shapes[name])

    def __call__(self) -> np.ndarray:
        return self.ff.load(self.name)

    def iter_chunks(self, rows: int = 65536):
        return self.ff.iter_chunks(self.name, rows)

    def part(self, index) -> np.ndarray:
        from .store import open_h5

        with open_h5(self.ff.path) as f:
            return f[self.name][index]


def load_inputs(store: Store, view: ModelView, dataset: str, head: Head, split: str) -> Inputs:
    """A lazy Inputs view of one feature file, checked against the model's fingerprint."""
    ff = FeatureFile(store.features_path(view.key, dataset))
    fp = ff.attrs.get("model_fingerprint")
    if fp != view.fingerprint:
        raise OodbenchError(
            f"{ff.path} was extracted with model fingerprint {str(fp)[:12]} but the model in "
            f"{view.key} is {view.fingerprint[:12]}: re-extract it with the same model (oodbench extract --overwrite)."
        )
    _check_widths(ff, view)
    loaders = {k: StoreColumn(ff, k) for k in FEATURE_KEYS if k in ff.keys}
    extra = {"layer_indices": ff.attrs.get("layer_indices") or [], "file": str(ff.path), "dataset": dataset,
             "sample_fingerprint": ff.attrs.get("sample_fingerprint"),
             "identity": f"{ff.attrs.get('created')}|{ff.attrs.get('sample_fingerprint')}"}
    return Inputs(split, loaders, head, view.text, view.visual, extra)


def _check_widths(ff: FeatureFile, view: ModelView) -> None:
    """Refuse a feature file whose widths do not fit the model (projection (W, D), text banks D)."""
    proj = view.visual.proj
    want = {"image_embeds": proj.shape[1] if proj is not None else None,
            "penultimate": proj.shape[0] if proj is not None else None}
    if want["image_embeds"] is None and "classes" in view.text:
        want["image_embeds"] = view.text["classes"].embeds.shape[-1]
    for name, width in want.items():
        shape = ff.shapes.get(name)
        if width is not None and shape is not None and (len(shape) != 2 or shape[1] != width):
            raise OodbenchError(
                f"{ff.path}: {name} has shape {tuple(shape)} but the model {view.key} expects width {width} "
                "(its projection/text banks): the file comes from another model; delete it and rerun `oodbench extract`."
            )


def attach_reference(store: Store, ref_view: ModelView, views: dict[str, Inputs],
                     head_templates: str = "ensemble") -> None:
    """Give every Inputs in ``views`` (dataset -> Inputs) ``extra["reference"]``: the same dataset
    as extracted by the reference model, with that model's zero-shot head.

    Refuses a reference that lacks a dataset or whose file holds another sample list (checked
    with the files' ``sample_fingerprint``), so that row i is the same image in both.
    """
    ref_head = make_head(ref_view, "zeroshot", head_templates)
    for d, x in views.items():
        if not store.features_path(ref_view.key, d).exists():
            raise OodbenchError(
                f"The reference model {ref_view.key} has no features for {d!r}: extract it with the "
                f"reference checkpoint too (oodbench extract --dataset {d} ...)."
            )
        ref = load_inputs(store, ref_view, d, ref_head, x.split)
        mine, theirs = x.extra.get("sample_fingerprint"), ref.extra.get("sample_fingerprint")
        if not mine or mine != theirs:
            raise OodbenchError(
                f"{d}: the reference model {ref_view.key} was extracted from another sample list "
                f"(sample fingerprint {str(theirs)[:12]} vs {str(mine)[:12]}): re-extract both models "
                "from the same data (same benchmark file, data root and readable images)."
            )
        x.extra["reference"] = ref


def check_finite(x: np.ndarray, ids: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        sample = ", ".join(map(str, np.asarray(ids)[bad][:3]))
        raise OodbenchError(f"{what}: {int(bad.sum())} NaN/inf score(s), e.g. for sample(s) {sample}.")


def parse_overrides(pairs: list[str], methods: list[str]) -> dict[str, dict[str, str]]:
    """``["knn.k=10", "temperature=2"]`` -> per-method overrides; bare names apply wherever declared."""
    from .scorers import get_scorer

    out: dict[str, dict[str, str]] = {m: {} for m in methods}
    for pair in pairs:
        if "=" not in pair:
            raise OodbenchError(f"--param {pair!r} must look like name=value or method.name=value.")
        key, value = pair.split("=", 1)
        if "." in key:
            method, name = key.split(".", 1)
            if method not in out:
                raise OodbenchError(f"--param {pair!r} names method {method!r}, which is not among --method.")
            out[method][name] = value
        else:
            targets = [m for m in methods if key in get_scorer(m).params]
            if not targets:
                raise OodbenchError(f"--param {pair!r}: none of the methods {', '.join(methods)} has a parameter {key!r}.")
            for m in targets:
                out[m][key] = value
    return out


def tune_scorer(scorer, fixed: dict[str, Any], fit_inputs, id_val: Inputs, ood_val: dict[str, Inputs],
                max_trials: int = 64) -> tuple[Any, dict[str, Any]]:
    """Grid search over ``scorer.search_space`` (minus user-fixed parameters) on validation data.

    Objective: mean AUROC of ID-val vs each OoD-val set (OpenOOD's APS idea). Test OoD sets are
    never seen. Returns the fitted best scorer and a record of every trial.
    """
    import itertools

    from .metrics import auroc

    space = {k: v for k, v in scorer.search_space.items() if k not in fixed}
    if not space:
        return scorer, {"tuned": False, "reason": "no free parameter to tune"}
    grid = list(itertools.product(*space.values()))[:max_trials]
    trials, best, best_value = [], None, -np.inf
    for values in grid:
        params = {**fixed, **dict(zip(space, values, strict=True))}
        cand = make_scorer(scorer.name, **params)
        try:
            if cand.fit_split:
                cand.fit(fit_inputs)
            ids = cand.score(id_val)
            value = float(np.mean([auroc(ids, cand.score(x)) for x in ood_val.values()]))
        except OodbenchError as exc:  # e.g. k larger than the bank: skip that point
            trials.append({"params": dict(zip(space, values, strict=True)), "error": str(exc)})
            continue
        trials.append({"params": dict(zip(space, values, strict=True)), "val_auroc": round(value, 6)})
        if value > best_value:
            best, best_value = cand, value
    if best is None:
        raise OodbenchError(f"--tune: every setting of {scorer.name} failed on the validation data.")
    return best, {"tuned": True, "objective": "mean AUROC(ID val vs OoD val)", "ood_val": list(ood_val),
                  "chosen": {k: best.hparams[k] for k in space}, "best_val_auroc": round(best_value, 6),
                  "trials": trials}


@dataclass
class ScoringRun:
    """What every step of one :func:`score_benchmark` call shares: the model, its head and the
    lazy Inputs of each set. ``splits``: ID split name (train/val/test) -> dataset; ``inputs``:
    ID dataset -> Inputs; ``ood`` / ``ood_val``: OoD (validation) dataset -> Inputs."""

    store: Store
    benchmark: Benchmark
    view: ModelView
    head: Head
    splits: dict[str, str]
    inputs: dict[str, Inputs]
    ood: dict[str, Inputs]
    ood_val: dict[str, Inputs] = field(default_factory=dict)
    shift: dict[str, Inputs] = field(default_factory=dict)  # covariate-shift dataset -> Inputs
    ref_view: ModelView | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    head_templates: str = "ensemble"
    tune: bool = False

    @property
    def key(self) -> str:
        return self.view.key

    @property
    def test(self) -> Inputs:
        return self.inputs[self.benchmark.id_test]

    @property
    def scores_path(self):
        return self.store.scores_path(self.key, self.benchmark.name)


@dataclass
class Scored:
    """One scorer's outcome before it becomes a record: scores per set and what the fit did."""

    scorer: Any
    id_scores: np.ndarray
    ood_scores: dict[str, np.ndarray]
    tuning: dict[str, Any]
    fit_info: dict[str, Any]
    seconds: float
    score_seconds: float
    shift_scores: dict[str, np.ndarray] = field(default_factory=dict)


def check_reference(store: Store, key: str, scorers: list, reference_key: str | None) -> str | None:
    """The reference model to attach, or None; refuses two-model scorers without one."""
    needs_ref = [s.name for s in scorers if "reference" in s.needs]
    if needs_ref and not reference_key:
        have = ", ".join(k for k in store.model_keys() if k != key) or "none"
        raise OodbenchError(
            f"{', '.join(needs_ref)} compare(s) two checkpoints: pass the model key of the reference "
            f"(zero-shot base) model with --reference KEY (other models in the store: {have})."
        )
    if reference_key and not needs_ref:
        warn(f"--reference {reference_key} is ignored: none of {', '.join(s.name for s in scorers)} "
             "reads a reference model.")
        return None
    return reference_key


def build_inputs(store: Store, key: str, benchmark: Benchmark, head: str = "zeroshot",
                 head_templates: str = "ensemble", tune: bool = False, reference_key: str | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None) -> ScoringRun:
    """Step 1: the model view, its head and a lazy Inputs of every set the run reads."""
    view = load_model_view(store, key, benchmark)
    h = make_head(view, head, head_templates)
    splits = {s: d for s, d in {"train": benchmark.id_train, "val": benchmark.id_val,
                                "test": benchmark.id_test}.items() if d}
    inputs = {d: load_inputs(store, view, d, h, s) for s, d in splits.items()}
    ood = {d: load_inputs(store, view, d, h, "ood") for d in benchmark.ood}
    run = ScoringRun(store, benchmark, view, h, splits, inputs, ood, overrides=overrides or {},
                     head_templates=head_templates, tune=tune)
    if tune:
        if not benchmark.id_val or not benchmark.ood_val:
            raise OodbenchError(
                f"--tune needs an ID val split and ood_val sets; benchmark {benchmark.name!r} lacks "
                f"{'id.val' if not benchmark.id_val else 'ood_val'}."
            )
        run.ood_val = {d: load_inputs(store, view, d, h, "ood_val") for d in benchmark.ood_val}
    run.shift = load_shift_inputs(store, view, benchmark, h)
    if reference_key:
        run.ref_view = load_model_view(store, reference_key, benchmark)
        attach_reference(store, run.ref_view, {**run.inputs, **run.ood, **run.ood_val, **run.shift},
                         head_templates)
    return run


def load_shift_inputs(store: Store, view: ModelView, benchmark: Benchmark, head: Head) -> dict[str, Inputs]:
    """Inputs of the benchmark's covariate-shift sets (split ``"shift"``). A set the store has
    no features for is left out with one warning line (stores extracted before the benchmark
    had it stay scoreable); its accuracy and scores are then absent, never guessed."""
    out, missing = {}, []
    for d in benchmark.shift:
        if store.features_path(view.key, d).exists():
            out[d] = load_inputs(store, view, d, head, "shift")
        else:
            missing.append(d)
    if missing:
        warn(f"shift set(s) {', '.join(missing)} not extracted for {view.key}: scored without them "
             f"(oodbench extract --dataset {missing[0]} ... adds them).")
    return out


def head_outcomes(run: ScoringRun) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per covariate-shift set and for the ID test split (key ``""``): (correct, confidence) of
    the head, both (N,) in row order. ``correct`` is int8: 1 right, 0 wrong, -1 unknown label;
    the argmax (and the softmax) run over the set's class subset when it has one.
    ``confidence`` is the maximum softmax probability of the head (for ECE)."""
    from .metrics import softmax

    out = {}
    for name, x in {"": run.test, **run.shift}.items():
        logits, labels = np.asarray(x.logits, np.float64), np.asarray(x.labels).ravel()
        spec = run.benchmark.shift[name] if name else None
        subset = spec.classes if spec else None
        cols = np.arange(logits.shape[1]) if subset is None else np.asarray(subset, np.int64)
        if spec is not None and spec.labels == "subset":  # label j is subset class j
            if labels.max(initial=-1) >= cols.size:
                raise OodbenchError(f"{name}: label {int(labels.max())} is out of range for its "
                                    f"{cols.size}-class subset: check the set's classes in the benchmark.")
            labels = np.where(labels >= 0, cols[np.clip(labels, 0, None)], -1)
        if name and (labels.max(initial=-1) >= logits.shape[1] or cols.max() >= logits.shape[1]):
            raise OodbenchError(
                f"{name}: labels/class subset index up to {max(labels.max(initial=-1), cols.max())} but the "
                f"{run.head.name} head has {logits.shape[1]} classes: shift-set labels must index the "
                "benchmark's classes."
            )
        prob = softmax(logits[:, cols])
        correct = np.where(labels >= 0, cols[prob.argmax(1)] == labels, -1).astype(np.int8)
        out[name] = (correct, prob.max(1))
    return out


def fit_split_inputs(run: ScoringRun, scorer) -> Inputs | None:
    """The Inputs ``scorer`` fits on (its declared ID split), or None for fit-free scorers."""
    if not scorer.fit_split:
        return None
    d = run.splits.get(scorer.fit_split)
    if not d:
        raise OodbenchError(
            f"{scorer.name} fits on the ID {scorer.fit_split} split, which benchmark "
            f"{run.benchmark.name!r} does not define: add id.{scorer.fit_split} to it."
        )
    return run.inputs[d]


def tune_or_fit(run: ScoringRun, scorer) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Step 2: (scorer, tuning record, fit provenance); tuned on validation sets with ``run.tune``,
    else fitted (through the fit cache) on its ID split."""
    fit_inputs = fit_split_inputs(run, scorer)
    if run.tune and scorer.search_space:
        scorer, tuning = tune_scorer(scorer, run.overrides.get(scorer.name, {}), fit_inputs,
                                     run.inputs[run.benchmark.id_val], run.ood_val)
        return scorer, tuning, {}
    if fit_inputs is None:
        return scorer, {}, {}
    model_id = {"fingerprint": run.view.fingerprint,
                "file": fitcache.content_identity(run.store.model_path(run.key))}
    return scorer, {}, fitcache.fit(scorer, fit_inputs, run.scores_path, model_id)


def score_set(scorer, x: Inputs, dataset: str) -> np.ndarray:
    """Step 3+4: float64 scores of one set, checked finite."""
    s = np.asarray(scorer.score(x), np.float64)
    check_finite(s, x.ids, f"{scorer.name} on {dataset}")
    return s


def run_scorer(run: ScoringRun, scorer) -> Scored:
    """Tune/fit one scorer, then score the ID test split and every OoD set."""
    t0 = time.time()
    scorer, tuning, fit_info = tune_or_fit(run, scorer)
    t_score = time.time()
    id_scores = score_set(scorer, run.test, run.benchmark.id_test)
    ood_scores = {d: score_set(scorer, x, d) for d, x in run.ood.items()}
    shift_scores = {d: score_set(scorer, x, d) for d, x in run.shift.items()}
    now = time.time()
    return Scored(scorer, id_scores, ood_scores, tuning, fit_info, round(now - t0, 3), round(now - t_score, 3),
                  shift_scores)


def record_provenance(run: ScoringRun, res: Scored) -> dict[str, Any]:
    """Step 5: where a record's numbers came from (store, overrides, fit, timing, files, models)."""
    scorer, attrs = res.scorer, run.view.attrs
    prov: dict[str, Any] = {
        "store": str(run.store.root),
        "overrides": {**run.overrides.get(scorer.name, {}), **res.tuning.get("chosen", {})},
        "oodbench_version": __version__, "seconds": res.seconds, "score_seconds": res.score_seconds,
        **res.fit_info, "head_templates": run.head_templates, "reference": scorer.reference,
        "tuning": res.tuning,
    }
    info_attrs = attrs.get("info")
    if isinstance(info_attrs, dict) and info_attrs.get("wise_alpha") is not None:
        prov["wise_alpha"] = info_attrs["wise_alpha"]
    if run.ref_view is not None and "reference" in scorer.needs:
        prov["reference_model"] = {"model_key": run.ref_view.key, "fingerprint": run.ref_view.fingerprint,
                                   "model": run.ref_view.attrs.get("label", run.ref_view.key)}
    prov["feature_files"] = {d: x.extra["file"] for d, x in {**run.inputs, **run.ood, **run.shift}.items()}
    # which version of each file (completion time | sample list): a later merge of the scores file
    # drops groups that were computed from another version of the same dataset (re-extracted)
    prov["feature_identity"] = {x.extra["dataset"]: x.extra["identity"]
                                for x in {**run.inputs, **run.ood, **run.shift}.values()}
    return prov


def make_record(run: ScoringRun, res: Scored, accuracy: float, correct: np.ndarray,
                outcomes: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> ScoreRecord:
    """Step 6: the ScoreRecord of one scored method (``outcomes``: :func:`head_outcomes`)."""
    view, bench = run.view, run.benchmark
    outcomes = outcomes or {}
    shift = {d: {"classes": bench.shift[d].classes, "reference": bench.shift[d].reference} for d in res.shift_scores}
    return ScoreRecord(
        model=view.attrs.get("label", run.key), model_key=run.key, fingerprint=view.fingerprint,
        benchmark=bench.name, method=res.scorer.name, params=dict(res.scorer.hparams), head=run.head.name,
        id_scores=res.id_scores, ood_scores=res.ood_scores, groups=dict(bench.ood), accuracy=accuracy,
        id_correct=correct, provenance=record_provenance(run, res),
        shift_scores=res.shift_scores, shift_correct={d: outcomes[d][0] for d in res.shift_scores if d in outcomes},
        head_confidence={d or "id": c for d, (_, c) in outcomes.items()}, shift_sets=shift,
    )


def score_benchmark(store: Store, key: str, benchmark: Benchmark, methods: list[str],
                    overrides: dict[str, dict[str, Any]] | None = None, head: str = "zeroshot",
                    head_templates: str = "ensemble", tune: bool = False,
                    reference_key: str | None = None, skip_failures: bool = False,
                    skipped: dict[str, str] | None = None) -> list[ScoreRecord]:
    """Fit each method on its declared ID split, score ID test and every OoD split, save.

    With ``tune``, each method's free hyperparameters are chosen on the ID val split vs the
    benchmark's ``ood_val`` sets first (see :func:`tune_scorer`).

    ``reference_key``: a second model of the same store (typically the zero-shot base of a
    fine-tuned ``key``). Scorers whose ``needs`` contain ``"reference"`` then find, in
    ``inputs.extra["reference"]``, an :class:`Inputs` of the same dataset from that model
    (zero-shot head); both feature files must hold the same sample list.

    ``skip_failures`` (``-m all``): a scorer that cannot fit or score this data (an
    :class:`OodbenchError` from its fit, tuning or scores) is skipped with its reason, said in
    one line and recorded in ``skipped`` (method -> reason) and in the scores file's
    ``skipped`` attribute; the others are scored and saved. Without it the error ends the run.
    """
    overrides = overrides or {}
    scorers = [make_scorer(m, **overrides.get(m, {})) for m in methods]  # validate before any work
    reference_key = check_reference(store, key, scorers, reference_key)
    run = build_inputs(store, key, benchmark, head, head_templates, tune, reference_key, overrides)
    test = run.test
    acc = accuracy(test.logits, test.labels) if len(benchmark.classes) == run.head.num_classes else float("nan")
    correct = test.logits.argmax(1) == test.labels
    outcomes = head_outcomes(run) if len(benchmark.classes) == run.head.num_classes else {}
    records, failed = [], {} if skipped is None else skipped
    with progress("method") as bar:
        task = bar.add_task("score", total=len(scorers), rate="")
        for i in range(len(scorers)):
            scorer, scorers[i] = scorers[i], None  # a scorer's fitted state is freed once it has scored
            bar.update(task, rate=scorer.name)
            try:
                res = run_scorer(run, scorer)
            except OodbenchError as exc:
                if not skip_failures:
                    raise
                reason = str(exc).removeprefix(f"{scorer.name}: ")
                failed[scorer.name] = reason
                warn(f"-m all: skipped {scorer.name}: {reason}")
            else:
                records.append(make_record(run, res, acc, correct, outcomes))
            bar.update(task, advance=1)
    if not records:
        raise OodbenchError(f"No method could score {key} on {benchmark.name}: "
                            + "; ".join(f"{m}: {r}" for m, r in failed.items()))
    path = run.scores_path
    save_records(path, records, {"benchmark": benchmark.name, "model_key": key, "fingerprint": run.view.fingerprint,
                                 "model_label": run.view.attrs.get("label", key), "skipped": dict(failed)})
    info(f"scores written to {path}" + (f" ({len(failed)} method(s) skipped: {', '.join(failed)})" if failed else ""))
    return records
