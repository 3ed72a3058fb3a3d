"""benchmarks.yaml: the catalogue of datasets and benchmarks, validated with clear errors.

Schema (see the shipped benchmarks.yaml)::

    datasets:
      <name>: {source: <kind>, ...kind-specific keys...}   # oodbench.data.build_source
    benchmarks:
      <name>:
        description: str
        model: {name: <open_clip model>, pretrained: <tag>}   # default model for `oodbench run`
        classes: [..] | imagenet | cifar10 | cifar100 | file:PATH
        templates: [..] | single | openai_imagenet | simple_imagenet | file:PATH
        id: {train: <dataset>, val: <dataset>, test: <dataset>}   # val optional
        ood: {near: [<dataset>...], far: [<dataset>...]}
        ood_val: [<dataset>...]                                   # optional, for --tune
        params: [method.param=value, ...]   # optional per-benchmark scorer defaults (e.g. vim.dim
                                            # for a small embedding); CLI --param overrides them

String values of datasets may use ``${data_root}``: the --data-root option, else $OODBENCH_DATA.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import OodbenchError, suggest
from .text import resolve_classes, resolve_templates

PACKAGE_CATALOGUE = Path(__file__).with_name("benchmarks.yaml")
DEFAULT_BENCHMARK = "digits"
BENCH_KEYS = {"description", "model", "classes", "templates", "id", "ood", "ood_val", "params", "notes"}
REQUIRED_BENCH_KEYS = ("classes", "id", "ood")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # names become file names in the store


@dataclass
class Benchmark:
    """One benchmark: ID splits, OoD sets grouped as near/far, class names and templates."""

    name: str
    classes: list[str]
    templates: list[str]
    id_train: str
    id_test: str
    id_val: str | None
    ood: dict[str, str]  # OoD dataset name -> group ("near" or "far")
    ood_val: list[str] = field(default_factory=list)
    description: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    params: list[str] = field(default_factory=list)

    def splits(self, include_val: bool = True) -> list[str]:
        """Dataset names to extract, ID first."""
        out = [self.id_train, self.id_test]
        if include_val and self.id_val:
            out.append(self.id_val)
        out += list(self.ood)
        if include_val:
            out += [d for d in self.ood_val if d not in out]
        return list(dict.fromkeys(out))


@dataclass
class Catalogue:
    """All datasets and benchmarks of one YAML file."""

    path: Path
    datasets: dict[str, dict[str, Any]]
    benchmarks: dict[str, Benchmark]

    def benchmark(self, name: str) -> Benchmark:
        if name not in self.benchmarks:
            raise suggest(name, self.benchmarks, "benchmark", where=str(self.path))
        return self.benchmarks[name]

    def dataset_spec(self, name: str, data_root: str | Path | None = None) -> dict[str, Any]:
        """The dataset's spec with ``${data_root}`` substituted and ``_base_dir`` set."""
        spec = dict(self.datasets[name])
        root = data_root or os.environ.get("OODBENCH_DATA")
        for k, v in spec.items():
            if isinstance(v, str) and "${data_root}" in v:
                if not root:
                    raise OodbenchError(
                        f"Dataset {name!r} lives under the data root: pass --data-root DIR or set OODBENCH_DATA."
                    )
                spec[k] = v.replace("${data_root}", str(root))
        spec["_base_dir"] = str(self.path.parent)
        return spec

    def source(self, name: str, data_root: str | Path | None = None, download: bool = False):
        from .data import build_source

        return build_source(self.dataset_spec(name, data_root), name=name, data_root=data_root, download=download)


def _fail(path: Path, where: str, message: str) -> OodbenchError:
    return OodbenchError(f"{path}: {where}: {message}")


def _check_name(path: Path, section: str, name: Any) -> None:
    """Dataset and benchmark names become file names in the store: refuse anything but a plain name."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise _fail(path, f"{section}.{name}", f"the name {name!r} must start with a letter or digit and use only "
                    "letters, digits, '.', '_' and '-' (at most 128): it becomes a file name in the store")


def _names(path: Path, where: str, value: Any, datasets: dict) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, where, "must be a dataset name or a list of dataset names")
    for v in value:
        if v not in datasets:
            raise suggest(v, datasets, "dataset", where=f"{path}: {where}")
    return value


def _benchmark(path: Path, name: str, raw: Any, datasets: dict) -> Benchmark:
    where = f"benchmarks.{name}"
    if not isinstance(raw, dict):
        raise _fail(path, where, "must be a mapping")
    for k in raw:
        if k not in BENCH_KEYS:
            raise suggest(str(k), BENCH_KEYS, "key", where=f"{path}: {where}")
    for k in REQUIRED_BENCH_KEYS:
        if k not in raw:
            raise _fail(path, where, f"missing required key {k!r}")
    ids = raw["id"]
    if not isinstance(ids, dict) or not {"train", "test"} <= set(ids) or set(ids) - {"train", "val", "test"}:
        raise _fail(path, f"{where}.id", "must map train, test (and optionally val) to dataset names")
    for k, v in ids.items():
        _names(path, f"{where}.id.{k}", v, datasets)
    ood = raw["ood"]
    if not isinstance(ood, dict) or not ood or set(ood) - {"near", "far"}:
        raise _fail(path, f"{where}.ood", "must map near and/or far to lists of dataset names")
    groups = {d: g for g, lst in ood.items() for d in _names(path, f"{where}.ood.{g}", lst, datasets)}
    base = path.parent
    try:
        classes = resolve_classes(raw["classes"], base)
        templates = resolve_templates(raw.get("templates", "single"), base)
    except OodbenchError as exc:
        raise _fail(path, where, str(exc)) from None
    model = raw.get("model", {}) or {}
    if not isinstance(model, dict) or set(model) - {"name", "pretrained"}:
        raise _fail(path, f"{where}.model", "must be a mapping with keys name and pretrained")
    params = raw.get("params", []) or []
    if not isinstance(params, list) or not all(isinstance(p, str) and "." in p and "=" in p for p in params):
        raise _fail(path, f"{where}.params", "must be a list of 'method.param=value' strings")
    return Benchmark(
        name=name, params=params, classes=classes, templates=templates, id_train=ids["train"], id_test=ids["test"],
        id_val=ids.get("val"), ood=groups,
        ood_val=_names(path, f"{where}.ood_val", raw.get("ood_val", []), datasets),
        description=str(raw.get("description", "")).strip(), model=model,
    )


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read and validate a benchmarks YAML (default: the one shipped with oodbench)."""
    path = Path(path) if path else PACKAGE_CATALOGUE
    if not path.is_file():
        raise OodbenchError(f"Benchmark file {str(path)!r} does not exist: pass an existing YAML with --benchmarks.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise OodbenchError(f"{path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}.") from None
    if not isinstance(raw, dict):
        raise OodbenchError(f"{path}: top level must be a mapping with 'datasets' and 'benchmarks'.")
    for k in raw:
        if k not in ("datasets", "benchmarks", "version"):
            raise suggest(str(k), ("datasets", "benchmarks", "version"), "top-level key", where=str(path))
    datasets = raw.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise _fail(path, "datasets", "must be a mapping of name -> {source: ...}")
    for name, spec in datasets.items():
        _check_name(path, "datasets", name)
        if not isinstance(spec, dict) or "source" not in spec:
            raise _fail(path, f"datasets.{name}", "must be a mapping with a 'source' key")
    benches = raw.get("benchmarks") or {}
    if not isinstance(benches, dict) or not benches:
        raise _fail(path, "benchmarks", "must be a non-empty mapping of benchmark name -> definition")
    for name in benches:
        _check_name(path, "benchmarks", name)
    return Catalogue(path, datasets, {n: _benchmark(path, n, b, datasets) for n, b in benches.items()})
