"""``oodbench inspect``: where did fine-tuning change the representation?

For each model of a store and one benchmark, per vision block K (``layers/cls``, projected
through ``ln_post`` and the projection, as the last block's CLS token becomes the image
embedding) and for the final image embedding:

* ``zs_acc``: zero-shot top-1 accuracy on the ID test split (argmax cosine to the class text
  embeddings, ``head_templates``);
* ``auroc:<set>``: AUROC of MCM (``mcm_templates``, ``mcm_temperature``) of ID test vs each OoD
  set, and ``auroc_near`` / ``auroc_far`` / ``auroc_avg`` (unweighted means, OpenOOD style);
* ``gap``: the modality gap, ||mean normalised image embedding (ID test) - mean normalised
  class text embedding||, and ``gap_cos``, the cosine between those two centroids.

Everything is computed from the feature store on the CPU. ``save_inspect_plot`` draws the
curves (matplotlib Agg), one line per model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import DEFAULT_BENCHMARK, Benchmark, Catalogue, load_catalogue
from .console import warn
from .engine import load_inputs, load_model_view, make_head
from .errors import OodbenchError
from .metrics import auroc
from .scorers.clip import name_embeds
from .scorers.common import features
from .scorers.inputs import Inputs, l2_normalize
from .scorers.native import extracted_blocks, layer_embeds, mcm_from_cos
from .store import Store
from .verify import check_split_files

FINAL = "embeds"


def _spaces(test: Inputs) -> list[tuple[str, int | None]]:
    """(feature name, block index or None) of every space to inspect for a split."""
    out: list[tuple[str, int | None]] = []
    if test.has("layers/cls"):
        out = [(f"layer:{k}", k) for k in extracted_blocks(test)]
    return out + [(FINAL, None)]


def _embeds(x: Inputs, block: int | None) -> np.ndarray:
    return (features(x, FINAL) if block is None else layer_embeds(x, block)).astype(np.float64)


def inspect_model(store: Store, key: str, bench: Benchmark, *, head_templates: str = "ensemble",
                  mcm_templates: str = "first", mcm_temperature: float = 1.0) -> pd.DataFrame:
    """Rows of one model (one per inspected layer, then the final embedding); see the module doc."""
    view = load_model_view(store, key, bench)
    head = make_head(view, "zeroshot", head_templates)
    test = load_inputs(store, view, bench.id_test, head, "test")
    ood = {d: load_inputs(store, view, d, head, "ood") for d in bench.ood}
    bank = test.text_bank("classes")
    t_head = name_embeds(bank, head_templates).astype(np.float64)
    t_mcm = name_embeds(bank, mcm_templates).astype(np.float64)
    text_centroid = t_head.mean(0)
    labels = np.asarray(test.labels)
    labelled = labels >= 0
    same_classes = len(bench.classes) == t_head.shape[0]
    spaces = _spaces(test)
    if len(spaces) == 1:
        warn(f"{key} has no per-layer CLS tokens for {bench.id_test}: only the final embedding is inspected "
             "(re-extract with --layers all for the per-layer curves).")
    rows = []
    for feature, block in spaces:
        x = _embeds(test, block)
        acc = float(np.mean((x[labelled] @ t_head.T).argmax(1) == labels[labelled])) \
            if same_classes and labelled.any() else float("nan")
        id_mcm = mcm_from_cos(x @ t_mcm.T, mcm_temperature)
        row: dict[str, Any] = {"model": view.attrs.get("label", key), "model_key": key, "benchmark": bench.name,
                               "feature": feature, "layer": block, "zs_acc": acc}
        per_set = {}
        for d, xo in ood.items():
            if block is not None and not xo.has("layers/cls"):
                per_set[d] = float("nan")
                continue
            per_set[d] = auroc(id_mcm, mcm_from_cos(_embeds(xo, block) @ t_mcm.T, mcm_temperature))
        row.update({f"auroc:{d}": v for d, v in per_set.items()})
        for group in ("near", "far"):
            vals = [v for d, v in per_set.items() if bench.ood[d] == group]
            row[f"auroc_{group}"] = float(np.mean(vals)) if vals else float("nan")
        row["auroc_avg"] = float(np.mean(list(per_set.values()))) if per_set else float("nan")
        image_centroid = l2_normalize(x).mean(0)
        row["gap"] = float(np.linalg.norm(image_centroid - text_centroid))
        row["gap_cos"] = float(image_centroid @ text_centroid
                               / max(np.linalg.norm(image_centroid) * np.linalg.norm(text_centroid), 1e-12))
        rows.append(row)
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")
    return df


def inspect(model_keys: Sequence[str] | str | None = None, *, benchmark: str = DEFAULT_BENCHMARK,
            store: str | Path | None = None, benchmarks: str | Path | Catalogue | None = None,
            head_templates: str = "ensemble", mcm_templates: str = "first",
            mcm_temperature: float = 1.0) -> pd.DataFrame:
    """The inspect table of one or more models (keys or unique prefixes; None: the only one).

    One row per (model, inspected feature): ``feature`` is ``layer:K`` (``layer`` = K) or
    ``embeds`` (the final image embedding, ``layer`` = <NA>). Columns: ``model, model_key,
    benchmark, feature, layer, zs_acc, auroc:<set>..., auroc_near, auroc_far, auroc_avg, gap,
    gap_cos`` (fractions, not percent).

    Raises:
        OodbenchError: a feature file of the ID test or an OoD set is stale or misnamed
            (:func:`oodbench.verify.check_split_files`, the check ``score`` runs).
    """
    from .api import resolve_model_key
    from .paths import default_store

    st = Store(store or default_store())
    cat = benchmarks if isinstance(benchmarks, Catalogue) else load_catalogue(benchmarks)
    bench = cat.benchmark(benchmark)
    if isinstance(model_keys, str):
        model_keys = [k.strip() for k in model_keys.split(",") if k.strip()]
    keys = [resolve_model_key(st, k) for k in (model_keys or [None])]
    for k in dict.fromkeys(keys):  # stale or misnamed feature files refused, as score does
        check_split_files(st, k, [bench.id_test, *bench.ood], cat, bench.name)
    frames = [inspect_model(st, k, bench, head_templates=head_templates, mcm_templates=mcm_templates,
                            mcm_temperature=mcm_temperature) for k in dict.fromkeys(keys)]
    df = pd.concat(frames, ignore_index=True)
    df.attrs.update({"benchmark": bench.name, "store": str(st.root), "head_templates": head_templates,
                     "mcm_templates": mcm_templates, "mcm_temperature": mcm_temperature})
    return df


# ----------------------------------------------------------------------------- rendering


def _table_columns(df: pd.DataFrame) -> list[str]:
    sets = [c for c in df.columns if c.startswith("auroc:")]
    groups = [c for c in ("auroc_near", "auroc_far", "auroc_avg") if c in df and df[c].notna().any()]
    return ["model", "feature", "zs_acc", *sets, *groups, "gap", "gap_cos"]


def _header(col: str) -> str:
    if col.startswith("auroc:"):
        return f"{col[6:]} AUROC"
    return {"zs_acc": "zero-shot acc", "auroc_near": "near avg AUROC", "auroc_far": "far avg AUROC",
            "auroc_avg": "avg AUROC", "gap": "gap ‖μ_img−μ_txt‖", "gap_cos": "cos(μ_img, μ_txt)"}.get(col, col)


def _cell(col: str, v: Any) -> str:
    if isinstance(v, float) and np.isnan(v):
        return "–"
    if col == "zs_acc" or col.startswith("auroc"):
        return f"{100 * v:.2f}"
    if col in ("gap", "gap_cos"):
        return f"{v:.3f}"
    return str(v)


def format_inspect(df: pd.DataFrame, fmt: str = "rich"):
    """The inspect table as a rich Table (``rich``) or text (``markdown``, ``csv``, ``json``).

    Accuracy and AUROC in percent in rich/markdown; csv/json keep every column as fractions.
    """
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", indent=2)
    cols = _table_columns(df)
    body = [[_cell(c, r[c]) for c in cols] for _, r in df.iterrows()]
    title = f"oodbench inspect — {df.attrs.get('benchmark', '')}: per-layer zero-shot accuracy, MCM AUROC, modality gap"
    if fmt == "markdown":
        lines = [f"**{title}**", "", "| " + " | ".join(_header(c) for c in cols) + " |",
                 "|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n"
    if fmt == "rich":
        from rich.table import Table

        table = Table(title=title)
        for i, c in enumerate(cols):
            table.add_column(_header(c), justify="left" if i < 2 else "right")
        for row in body:
            table.add_row(*row)
        return table
    raise OodbenchError(f"Unknown inspect format {fmt!r}: use rich, markdown, csv or json.")


def save_inspect_plot(df: pd.DataFrame, path: str | Path, *, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Zero-shot accuracy, MCM AUROC and modality gap against the layer, one line per model.

    ``path``: a directory (files ``inspect_<benchmark>.<fmt>`` in it) or a file name whose
    suffix is replaced by each of ``formats``. The final image embedding is drawn as a marker
    one step right of the last block (tick ``emb``). Returns the paths written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if df.empty:
        raise OodbenchError("Nothing to plot: the inspect table is empty.")
    path = Path(path)
    if path.suffix.lower() in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        stem = path.with_suffix("")
    else:
        stem = path / f"inspect_{df.attrs.get('benchmark') or df['benchmark'].iloc[0]}"
    stem.parent.mkdir(parents=True, exist_ok=True)

    layered = df[df["layer"].notna()]
    x_final = int(layered["layer"].max()) + 1 if not layered.empty else 0
    panels = [("zs_acc", "zero-shot accuracy (ID test)"), ("auroc_avg", "MCM AUROC (mean over OoD sets)"),
              ("gap", "modality gap ‖μ_img − μ_txt‖")]
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels))
    colors = [f"C{i}" for i in range(10)]
    for i, (_, frame) in enumerate(df.groupby("model_key", sort=False)):
        color, label = colors[i % 10], str(frame["model"].iloc[0])
        lay = frame[frame["layer"].notna()].sort_values("layer")
        fin = frame[frame["layer"].isna()]
        for ax, (col, _) in zip(axes, panels, strict=True):
            if not lay.empty:
                ax.plot(lay["layer"].astype(int), lay[col], "-o", color=color, label=label, ms=4)
            if not fin.empty:
                ax.plot([x_final], fin[col].to_numpy()[:1], "*", color=color, ms=10,
                        label=None if not lay.empty else label)
            if col == "auroc_avg" and not lay.empty:
                for group, style in (("auroc_near", "--"), ("auroc_far", ":")):
                    if lay[group].notna().any():
                        ax.plot(lay["layer"].astype(int), lay[group], style, color=color, lw=1, alpha=0.7)
    ticks = sorted(int(v) for v in layered["layer"].unique()) if not layered.empty else []
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("vision block")
        ax.set_xticks(ticks + [x_final], [str(t) for t in ticks] + ["emb"])
        ax.grid(alpha=0.3)
    styles = [axes[1].plot([], [], style, color="grey", lw=1, label=name)[0]
              for style, name in (("--", "near avg"), (":", "far avg"))]
    axes[0].legend(fontsize=7)
    axes[1].legend(handles=styles, fontsize=7, loc="lower right")
    FigureCanvasAgg(fig)
    paths = []
    for fmt in formats:
        p = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(p, format=fmt, metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(p)
    return paths
