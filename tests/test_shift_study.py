"""The study with a covariate-shift set (issue 18): ID accuracy, shift accuracy, FSOOD AUROC and
AURC per scorer for every checkpoint, and the WiSE-FT figure (ID vs shift accuracy along α)."""

from __future__ import annotations

import numpy as np

from oodbench.finetune import run_study
from oodbench.tables import shift_accuracy_of

CATALOGUE = """
version: 1
datasets:
  digits-id-train: {source: digits, digits: [0, 1, 2, 3, 4], split: train}
  digits-id-val: {source: digits, digits: [0, 1, 2, 3, 4], split: val}
  digits-id-test: {source: digits, digits: [0, 1, 2, 3, 4], split: test}
  digits-5to9: {source: digits, digits: [5, 6, 7, 8, 9], split: test, ood: true}
  digits-shifted: {source: shifted_digits, digits: [0, 1, 2, 3, 4], split: test, severity: 3}
benchmarks:
  digits-small:
    model: {name: oodbench-tiny, pretrained: digits}
    classes: [zero, one, two, three, four]
    templates: ["a photo of the digit {}."]
    id: {train: digits-id-train, val: digits-id-val, test: digits-id-test}
    ood: {near: [digits-5to9]}
    shift: [digits-shifted]
"""


def test_study_reports_shift_accuracy_fsood_aurc_and_the_wise_figure(tmp_path):
    cat = tmp_path / "bench.yaml"
    cat.write_text(CATALOGUE)
    res = run_study("digits-small", recipes=["ft"], alphas=[0.5, 1], steps=2, batch_size=16,
                    out=tmp_path / "study", store=tmp_path / "store", methods=["msp", "knn"], device="cpu",
                    local=False, benchmarks=cat)
    labels = [e.label for e in res.entries]
    assert labels == ["zeroshot", "ft", "ft-wise0.5"]
    assert res.files["figure_shift"].exists() and res.files["figure_shift"].stat().st_size > 0
    assert "**Covariate shift** (digits-shifted)" in res.summary and "*FSOOD AUROC" in res.summary
    # every checkpoint's row shows its own ID and shift accuracy, from its own scores file
    avg = res.table[res.table["ood"] == "avg"]
    for rec in res.records:
        if rec.method != "msp":
            continue
        acc, shift = 100 * rec.accuracy, 100 * shift_accuracy_of(rec, "digits-shifted")
        row = avg[(avg["model"] == rec.model) & (avg["method"] == "msp")]
        assert np.isclose(100 * row["shift_accuracy"].iloc[0], shift)
        head = next(e.head for e in res.entries if e.label == rec.model)
        assert f"| {rec.model} | {head} | {acc:.1f} | {shift:.1f} |" in res.summary
