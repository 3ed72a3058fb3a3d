"""The ImageNet-scale speed benchmark runs end to end on a small store of the same kind:
generator -> `score -m ...` sweeps (cold, warm) -> exactness checks -> report, the
interleaved pytorch-ood pairs, and a failed phase reported as such (non-zero exit, the report
says it is incomplete). Timings are never asserted."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "store"
    _run(str(BENCH / "make_imagenet_scale_store.py"), "--out", str(out), "--train", "12000", "--val", "300",
         "--test", "600", "--ood", "200", "--negatives", "300", "--outliers", "50", "--local-patches", "4")
    return out


@pytest.fixture(scope="module")
def score_speed():
    spec = importlib.util.spec_from_file_location("score_speed", BENCH / "score_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_checks_and_report(small_store, tmp_path):
    methods = "vim,residual,knn,mahalanobis,rmds,dice"
    report = tmp_path / "R.md"
    _run(str(BENCH / "score_speed.py"), "--store", str(small_store), "--methods", methods,
         "--skip", "per,openood,knnstats,gemm", "--out", str(report))
    text = report.read_text()
    assert "Incomplete" not in text
    assert "Warm scores identical to cold scores (every method, every split): **True**." in text
    assert "train 12,000" in text and "1000 classes; penultimate 768, embeddings 512" in text
    assert "300 candidates per negative bank, 50 outlier labels" in text
    checks = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("| yes |")]
    assert sorted(line.split("|")[1].strip() for line in checks) == sorted(methods.split(","))
    # the JSON re-renders to the same report
    again = tmp_path / "R2.md"
    _run(str(BENCH / "score_speed.py"), "--report-from", str(report.with_suffix(".json")), "--out", str(again))
    assert again.read_text() == text


def test_a_failed_phase_makes_an_incomplete_report(small_store, tmp_path):
    report = tmp_path / "R.md"
    # SHE needs a correctly classified train row in every class: 12 rows a class are too few here
    proc = _run(str(BENCH / "score_speed.py"), "--store", str(small_store), "--methods", "vim,she",
                "--skip", "per,openood,knnstats,gemm,check", "--out", str(report), check=False)
    assert proc.returncode == 1
    assert "incomplete: 2 problem(s)" in proc.stderr and "she: class" in proc.stderr
    text = report.read_text()
    assert "**Incomplete: 2 problem(s); the numbers below are not a full result.**" in text
    assert "cold (fits computed) — **failed** (exit status 1)" in text
    assert "**not compared** (a sweep failed)" in text
    proc = _run(str(BENCH / "score_speed.py"), "--store", str(small_store), "--methods", "vim,nope",
                "--out", str(tmp_path / "never.md"), check=False)
    assert proc.returncode == 1 and "unknown scorer(s) nope: choose from" in proc.stderr
    assert not (tmp_path / "never.md").exists()


def test_pytorch_ood_pairs(small_store, tmp_path, score_speed):
    import pytorch_ood  # noqa: F401  (the test extra: a missing install fails, never skips)
    pairs = score_speed.run_pairs(small_store, "vim", tmp_path, 2)
    assert [p["order"] for p in pairs] == ["ours first", "pytorch-ood first"]
    for p in pairs:
        assert p["ours_s"] == pytest.approx(p["ours_fit_s"] + p["ours_score_s"] + p["ours_eval_logits_s"])
        assert p["ratio"] == pytest.approx(p["ptood_s"] / p["ours_s"])
    summary = score_speed.pair_summary(pairs)
    assert summary["n"] == 2 and summary["min"] <= summary["median"] <= summary["max"]
