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
        shift: [<dataset> | {dataset: <dataset>, classes: [..], reference: {slope: s, intercept: b}}]
                # optional covariate-shift sets: labelled images of the ID classes (see ShiftSet)
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
BENCH_KEYS = {"description", "model", "classes", "templates", "id", "ood", "ood_val", "params", "notes",
              "shift"}
REQUIRED_BENCH_KEYS = ("classes", "id", "ood")
CATALOGUE_VERSIONS = (1,)
CATALOGUE_DATASET_KEYS = ("expected_rows",)  # read by the catalogue itself, not by the source kind
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # names become file names in the store


@dataclass
class ShiftSet:
    """One covariate-shift set of a benchmark: labelled images of (a subset of) the ID classes.

    ``classes``: indices into the benchmark's classes that the set covers (ImageNet-R/-A's 200),
    or None for all; accuracy then takes the argmax over these logits only (WiSE-FT's masking).
    ``labels``: ``"benchmark"`` (default: the set's labels index the benchmark's classes, as in
    OpenOOD's lists) or ``"subset"`` (label j is ``classes[j]``: a class-folder tree of only the
    subset's folders, sorted like the benchmark's classes, e.g. ImageNet-R/-A). ``reference``:
    (slope, intercept) of an effective-robustness reference line in logit space,
    ``logit(shift acc) = slope * logit(ID acc) + intercept`` (Taori et al. 2020), or None.
    """

    dataset: str
    classes: list[int] | None = None
    reference: tuple[float, float] | None = None
    labels: str = "benchmark"


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
    shift: dict[str, ShiftSet] = field(default_factory=dict)  # dataset name -> its shift set

    def splits(self, include_val: bool = True) -> list[str]:
        """Dataset names to extract, ID first."""
        out = [self.id_train, self.id_test]
        if include_val and self.id_val:
            out.append(self.id_val)
        out += list(self.ood)
        out += [d for d in self.shift if d not in out]
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
        spec = {k: v for k, v in self.datasets[name].items() if k not in CATALOGUE_DATASET_KEYS}
        root = data_root or os.environ.get("OODBENCH_DATA")
        for k, v in spec.items():
            if isinstance(v, str) and "${data_root}" in v:
                if not root:
                    raise OodbenchError(
                        f"{self.path}: dataset {name!r} lives under the data root: pass --data-root DIR or set "
                        "OODBENCH_DATA."
                    )
                # absolute, so that a relative --data-root is not joined again to a base directory
                spec[k] = v.replace("${data_root}", str(Path(root).expanduser().absolute()))
        spec["_base_dir"] = str(self.path.parent)
        return spec

    def source(self, name: str, data_root: str | Path | None = None, download: bool = False):
        """The dataset's Source; its ``expected_rows`` is the catalogue's count (None if not stated).

        Errors from the entry (bad keys, missing data) name this benchmarks file too.
        """
        from .data import build_source

        if name not in self.datasets:
            raise suggest(name, self.datasets, "dataset", where=str(self.path))
        try:
            src = build_source(self.dataset_spec(name, data_root), name=name, data_root=data_root,
                               download=download)
        except OodbenchError as exc:
            msg = str(exc)
            raise (exc if msg.startswith(str(self.path)) else OodbenchError(f"{self.path}: {msg}")) from None
        src.expected_rows = self.datasets[name].get("expected_rows")
        return src


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


def _text_value(path: Path, where: str, value: Any) -> None:
    """``classes``/``templates``: a set name / ``file:PATH`` string, or a non-empty list of strings."""
    if isinstance(value, str) and value.strip():
        return
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return
    if isinstance(value, list) and value:
        bad = next(v for v in value if not (isinstance(v, str) and v.strip()))
        raise _fail(path, where, f"every entry must be a non-empty string (quote numbers), got {bad!r}")
    raise _fail(path, where, "must be a non-empty list of strings, a named set or file:PATH, got "
                f"{'an empty list' if value == [] else repr(value)}")


SHIFT_KEYS = ("dataset", "classes", "reference", "labels")
CLASS_SUBSETS = {"imagenet-r-200": "imagenet_r_200.txt", "imagenet-a-200": "imagenet_a_200.txt"}
"""Named class subsets of a shift set (ImageNet-1k indices, WiSE-FT's lists) in oodbench/resources."""


def _shift_sets(path: Path, where: str, raw: Any, datasets: dict, classes: list[str]) -> dict[str, ShiftSet]:
    """The validated ``shift:`` list of one benchmark (dataset names or mappings)."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise _fail(path, where, "must be a list of dataset names or {dataset, classes, reference} mappings")
    out: dict[str, ShiftSet] = {}
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        item = {"dataset": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "dataset" not in item:
            raise _fail(path, at, "must be a dataset name or a mapping with a 'dataset' key")
        for k in item:
            if k not in SHIFT_KEYS:
                raise suggest(str(k), SHIFT_KEYS, "key", where=f"{path}: {at}")
        (dataset,) = _names(path, f"{at}.dataset", item["dataset"], datasets)
        if dataset in out:
            raise _fail(path, at, f"dataset {dataset!r} is listed twice")
        subset = item.get("classes")
        if isinstance(subset, str) and (subset.startswith("file:") or subset in CLASS_SUBSETS):
            named = Path(__file__).with_name("resources") / CLASS_SUBSETS.get(subset, "")
            try:  # one index or class name a line
                lines = resolve_classes(f"file:{named}" if subset in CLASS_SUBSETS else subset, path.parent)
            except OodbenchError as exc:
                raise _fail(path, f"{at}.classes", str(exc)) from None
            subset = [int(c) if c.isdigit() else c for c in lines]
        if subset is not None:
            if not isinstance(subset, list) or not subset:
                raise _fail(path, f"{at}.classes",
                            "must be a non-empty list of class indices or class names, file:PATH or one of "
                            + ", ".join(CLASS_SUBSETS))
            index = {c: j for j, c in enumerate(classes)}
            ids = []
            for c in subset:
                if type(c) is int and 0 <= c < len(classes):
                    ids.append(c)
                elif isinstance(c, str) and c in index:
                    ids.append(index[c])
                else:
                    raise _fail(path, f"{at}.classes", f"{c!r} is neither a class name nor an index in "
                                f"0..{len(classes) - 1} of the benchmark's classes")
            if len(set(ids)) != len(ids):
                raise _fail(path, f"{at}.classes", "lists a class twice")
            subset = ids
        ref = item.get("reference")
        if ref is not None:
            ok = isinstance(ref, dict) and set(ref) == {"slope", "intercept"} and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in ref.values())
            if not ok:
                raise _fail(path, f"{at}.reference", "must be {slope: number, intercept: number} (logit space)")
            ref = (float(ref["slope"]), float(ref["intercept"]))
        labels = item.get("labels", "benchmark")
        if labels not in ("benchmark", "subset") or (labels == "subset" and subset is None):
            raise _fail(path, f"{at}.labels", "must be 'benchmark' (labels index the benchmark's classes) "
                        "or 'subset' (label j is classes[j]; needs classes)")
        out[dataset] = ShiftSet(dataset, subset, ref, labels)
    return out


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
    groups: dict[str, str] = {}
    for g, lst in ood.items():
        for d in _names(path, f"{where}.ood.{g}", [] if lst is None else lst, datasets):
            if d in groups:
                raise _fail(path, f"{where}.ood", f"dataset {d!r} is listed twice (in {groups[d]} and {g})")
            groups[d] = g
    if not groups:
        raise _fail(path, f"{where}.ood", "lists no dataset: give at least one OoD set under near or far")
    id_sets = {ids[k]: k for k in ("train", "val", "test") if k in ids}
    for d in groups:
        if d in id_sets:
            raise _fail(path, f"{where}.ood.{groups[d]}", f"dataset {d!r} is also the ID {id_sets[d]} split: "
                        "an OoD set must be other data than the ID splits")
    base = path.parent
    _text_value(path, f"{where}.classes", raw["classes"])
    _text_value(path, f"{where}.templates", raw.get("templates", "single"))
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
        shift=_shift_sets(path, f"{where}.shift", raw.get("shift"), datasets, classes),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (yaml keeps the last one
    silently: a dataset defined twice would be read as whichever came last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}): keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read and validate a benchmarks YAML (default: the one shipped with oodbench)."""
    path = Path(path) if path else PACKAGE_CATALOGUE
    if not path.is_file():
        raise OodbenchError(f"Benchmark file {str(path)!r} does not exist: pass an existing YAML with --benchmarks.")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (safe loader)
    except UnicodeDecodeError as exc:
        raise OodbenchError(
            f"{path} is not a text file (byte {exc.start} is not UTF-8): pass a benchmarks YAML with --benchmarks."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise OodbenchError(f"{path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}.") from None
    if not isinstance(raw, dict):
        raise OodbenchError(f"{path}: top level must be a mapping with 'datasets' and 'benchmarks'.")
    for k in raw:
        if k not in ("datasets", "benchmarks", "version"):
            raise suggest(str(k), ("datasets", "benchmarks", "version"), "top-level key", where=str(path))
    if "version" in raw and raw["version"] not in CATALOGUE_VERSIONS:
        raise _fail(path, "version", f"unknown catalogue version {raw['version']!r}; this oodbench reads "
                    f"version {', '.join(map(str, CATALOGUE_VERSIONS))}")
    datasets = raw.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise _fail(path, "datasets", "must be a mapping of name -> {source: ...}")
    for name, spec in datasets.items():
        _check_name(path, "datasets", name)
        if not isinstance(spec, dict) or "source" not in spec:
            raise _fail(path, f"datasets.{name}", "must be a mapping with a 'source' key")
        rows = spec.get("expected_rows")
        if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 1):
            raise _fail(path, f"datasets.{name}.expected_rows", f"must be a positive integer, got {rows!r}")
    benches = raw.get("benchmarks") or {}
    if not isinstance(benches, dict) or not benches:
        raise _fail(path, "benchmarks", "must be a non-empty mapping of benchmark name -> definition")
    for name in benches:
        _check_name(path, "benchmarks", name)
    return Catalogue(path, datasets, {n: _benchmark(path, n, b, datasets) for n, b in benches.items()})
