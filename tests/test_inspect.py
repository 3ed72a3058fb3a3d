"""oodbench inspect (oodbench.inspect_model) on the digits store extracted with --layers all."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest

from oodbench.errors import OodbenchError
from oodbench.inspect_model import format_inspect, inspect, save_inspect_plot
from oodbench.metrics import auroc
from oodbench.store import FeatureFile


@pytest.fixture(scope="module")
def table(digits_store):
    return inspect([digits_store["key"]], benchmark="digits", store=digits_store["store"])


def test_rows_and_columns(table, digits_store):
    assert list(table["feature"]) == ["layer:0", "layer:1", "layer:2", "embeds"]
    assert list(table["layer"].iloc[:3]) == [0, 1, 2] and pd.isna(table["layer"].iloc[3])
    sets = ["digits-5to9", "textures-synth", "noise-uniform"]
    assert [c for c in table.columns if c.startswith("auroc:")] == [f"auroc:{s}" for s in sets]
    assert (table["model_key"] == digits_store["key"]).all()
    for c in ("zs_acc", "auroc_near", "auroc_far", "auroc_avg", "gap_cos"):
        assert table[c].between(0, 1).all(), c
    assert (table["gap"] > 0).all()


def test_final_row_matches_the_scored_model(table, digits_store):
    """The final embedding row is MCM (first template, T = 1) and the zero-shot head's accuracy."""
    final = table[table["feature"] == "embeds"].iloc[0]
    mcm, msp = digits_store["records"]["mcm"], digits_store["records"]["msp"]
    assert final["zs_acc"] == pytest.approx(msp.accuracy)
    for d, s in mcm.ood_scores.items():
        assert final[f"auroc:{d}"] == pytest.approx(auroc(mcm.id_scores, s), abs=1e-9)
    assert final["auroc_near"] == pytest.approx(final["auroc:digits-5to9"])
    assert final["auroc_far"] == pytest.approx((final["auroc:textures-synth"] + final["auroc:noise-uniform"]) / 2)
    # the last block's CLS token through ln_post + proj is the image embedding
    last = table[table["feature"] == "layer:2"].iloc[0]
    np.testing.assert_allclose(last[["zs_acc", "auroc_avg", "gap"]].astype(float),
                               final[["zs_acc", "auroc_avg", "gap"]].astype(float), atol=2e-3)
    assert table["zs_acc"].iloc[0] < final["zs_acc"]  # block 0 is far less aligned with the text


def test_modality_gap_by_hand(table, digits_store):
    from oodbench.config import load_catalogue
    from oodbench.engine import load_model_view
    from oodbench.store import Store

    st, key = Store(digits_store["store"]), digits_store["key"]
    view = load_model_view(st, key, load_catalogue(None).benchmark("digits"))
    x = FeatureFile(st.features_path(key, "digits-id-test")).load("image_embeds").astype(np.float64)
    img = (x / np.linalg.norm(x, axis=1, keepdims=True)).mean(0)
    txt = view.text["classes"].name_embeds("ensemble").astype(np.float64).mean(0)
    final = table[table["feature"] == "embeds"].iloc[0]
    assert final["gap"] == pytest.approx(np.linalg.norm(img - txt), rel=1e-5)
    assert final["gap_cos"] == pytest.approx(img @ txt / np.linalg.norm(img) / np.linalg.norm(txt), rel=1e-5)


def test_two_models_render_and_plot(digits_store, tmp_path):
    """Two model keys (a copy of the digits model under another key): rows per model, table, plots."""
    root = tmp_path / "store"
    key = digits_store["key"]
    for k in (key, "copy-of-digits"):
        shutil.copytree(digits_store["store"] / key, root / k, ignore=shutil.ignore_patterns("scores", "*.lock"))
    df = inspect([key, "copy-of"], store=root)  # prefixes resolve like --model-key
    assert list(df["model_key"].unique()) == [key, "copy-of-digits"] and len(df) == 8
    num = df.select_dtypes("number").columns
    np.testing.assert_allclose(df.iloc[:4][num].astype(float), df.iloc[4:][num].astype(float))

    md = format_inspect(df, "markdown")
    assert "| model | feature | zero-shot acc |" in md and md.count("\n| ") == 9
    back = pd.read_csv(io.StringIO(format_inspect(df, "csv")))
    assert list(back.columns) == list(df.columns)
    assert format_inspect(df, "rich").row_count == 8
    with pytest.raises(OodbenchError, match="Unknown inspect format"):
        format_inspect(df, "html")

    paths = save_inspect_plot(df, tmp_path / "figs")
    assert [p.name for p in paths] == ["inspect_digits.png", "inspect_digits.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    named = save_inspect_plot(df, tmp_path / "one" / "curves.png", formats=("svg",))
    assert [p.name for p in named] == ["curves.svg"]


def test_store_without_layers(digits_store, tmp_path):
    """Without layers/cls only the final embedding is inspected (and the plot still works)."""
    import h5py

    root = tmp_path / "store"
    key = digits_store["key"]
    shutil.copytree(digits_store["store"] / key, root / key, ignore=shutil.ignore_patterns("scores", "*.lock"))
    for f in (root / key / "features").glob("*.h5"):
        with h5py.File(f, "r+") as h:
            del h["layers"]
    df = inspect(store=root)
    assert list(df["feature"]) == ["embeds"]
    assert len(save_inspect_plot(df, tmp_path / "figs")) == 2
