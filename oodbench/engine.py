"""The scoring engine: store -> Inputs -> fitted scorers -> ScoreRecords (on the CPU).

Fits happen once per (method, parameters) and are shared by the ID test split and every
OoD split. Scorers never touch files: they receive :class:`~oodbench.scorers.Inputs`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__
from .config import Benchmark
from .console import info, progress
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
    for bank_file, role in ((f"{benchmark.name}-classes", "classes"),):
        p = store.text_path(key, bank_file)
        if p.exists():
            t_arrays, t_attrs = read_h5(p)
            text[role] = TextBank(list(t_attrs["names"]), list(t_attrs["templates"]), t_arrays["embeds"])
    for p in sorted((store.model_dir(key) / "text").glob("*.h5")):
        if not p.stem.endswith("-classes"):
            t_arrays, t_attrs = read_h5(p)
            text[p.stem] = TextBank(list(t_attrs["names"]), list(t_attrs["templates"]), t_arrays["embeds"])
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


def load_inputs(store: Store, view: ModelView, dataset: str, head: Head, split: str) -> Inputs:
    """A lazy Inputs view of one feature file, checked against the model's fingerprint."""
    ff = FeatureFile(store.features_path(view.key, dataset))
    fp = ff.attrs.get("model_fingerprint")
    if fp != view.fingerprint:
        raise OodbenchError(
            f"{ff.path} was extracted with model fingerprint {str(fp)[:12]} but the model in "
            f"{view.key} is {view.fingerprint[:12]}: re-extract it with the same model (oodbench extract --overwrite)."
        )
    loaders = {k: (lambda k=k: ff.load(k)) for k in FEATURE_KEYS if k in ff.keys}
    extra = {"layer_indices": ff.attrs.get("layer_indices") or [], "file": str(ff.path), "dataset": dataset,
             "sample_fingerprint": ff.attrs.get("sample_fingerprint")}
    return Inputs(split, loaders, head, view.text, view.visual, extra)


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


def score_benchmark(store: Store, key: str, benchmark: Benchmark, methods: list[str],
                    overrides: dict[str, dict[str, Any]] | None = None, head: str = "zeroshot",
                    head_templates: str = "ensemble") -> list[ScoreRecord]:
    """Fit each method on its declared ID split, score ID test and every OoD split, save."""
    overrides = overrides or {}
    scorers = [make_scorer(m, **overrides.get(m, {})) for m in methods]  # validate before any work
    view = load_model_view(store, key, benchmark)
    h = make_head(view, head, head_templates)
    splits = {"train": benchmark.id_train, "val": benchmark.id_val, "test": benchmark.id_test}
    inputs = {d: load_inputs(store, view, d, h, s) for s, d in splits.items() if d}
    ood = {d: load_inputs(store, view, d, h, "ood") for d in benchmark.ood}
    test = inputs[benchmark.id_test]
    acc = accuracy(test.logits, test.labels) if len(benchmark.classes) == h.num_classes else float("nan")
    correct = test.logits.argmax(1) == test.labels
    records = []
    with progress("method") as bar:
        task = bar.add_task("score", total=len(scorers), rate="")
        for scorer in scorers:
            t0 = time.time()
            bar.update(task, rate=scorer.name)
            if scorer.fit_split:
                d = splits.get(scorer.fit_split)
                if not d:
                    raise OodbenchError(
                        f"{scorer.name} fits on the ID {scorer.fit_split} split, which benchmark "
                        f"{benchmark.name!r} does not define: add id.{scorer.fit_split} to it."
                    )
                scorer.fit(inputs[d])
            id_scores = np.asarray(scorer.score(test), np.float64)
            check_finite(id_scores, test.ids, f"{scorer.name} on {benchmark.id_test}")
            ood_scores = {}
            for d, x in ood.items():
                ood_scores[d] = np.asarray(scorer.score(x), np.float64)
                check_finite(ood_scores[d], x.ids, f"{scorer.name} on {d}")
            records.append(ScoreRecord(
                model=view.attrs.get("label", key), model_key=key, fingerprint=view.fingerprint,
                benchmark=benchmark.name, method=scorer.name, params=dict(scorer.hparams), head=h.name,
                id_scores=id_scores, ood_scores=ood_scores, groups=dict(benchmark.ood), accuracy=acc,
                id_correct=correct,
                provenance={"store": str(store.root), "overrides": overrides.get(scorer.name, {}),
                            "oodbench_version": __version__, "seconds": round(time.time() - t0, 3),
                            "head_templates": head_templates, "reference": scorer.reference,
                            "feature_files": {d: x.extra["file"] for d, x in {**inputs, **ood}.items()}},
            ))
            bar.update(task, advance=1)
    path = store.scores_path(key, benchmark.name)
    save_records(path, records, {"benchmark": benchmark.name, "model_key": key, "fingerprint": view.fingerprint,
                                 "model_label": view.attrs.get("label", key)})
    info(f"scores written to {path}")
    return records
