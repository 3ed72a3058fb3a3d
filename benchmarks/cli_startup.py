"""Wall time of the light CLI commands (``--help``, ``list methods``, ``report``) and what they import.

    python benchmarks/cli_startup.py [--runs 7] [--tree before=/tmp/old-checkout] [--json out.json]
                                     [--command "list methods" ...]

Runs each command ``--runs`` times in a fresh interpreter (``python -m oodbench ...`` with
PYTHONPATH set to the checkout being timed: this one, plus every ``--tree LABEL=PATH``, e.g. an
older commit unpacked with ``git archive``) after one warm-up run each. Runs of the trees are
interleaved, so that load on a shared machine hits them alike. Prints the median and the
minimum wall time and whether the command imported torch / open_clip (``-X importtime``).
``report`` reads a small synthetic scores file (3 methods × 3 OoD sets, written with
:func:`oodbench.results.save_records` into a temporary store): it times the command's start
and rendering, not a real run's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {"--help": ["--help"], "list methods": ["list", "methods"], "report": ["report"]}


def make_store(root: Path) -> None:
    import numpy as np

    from oodbench.results import ScoreRecord, save_records
    from oodbench.store import Store

    rng = np.random.default_rng(0)
    st = Store(root)
    key = "oodbench-tiny-digits-000000000000"
    groups = {"digits-5to9": "near", "textures-synth": "far", "noise-uniform": "far"}
    recs = [ScoreRecord(model="tiny", model_key=key, fingerprint="0" * 64, benchmark="digits", method=m,
                        params={}, head="zeroshot", id_scores=rng.normal(1, 1, 361),
                        ood_scores={d: rng.normal(0, 1, 300) for d in groups}, groups=groups, accuracy=1.0,
                        provenance={"store": str(root), "oodbench_version": "bench"})
            for m in ("msp", "energy", "knn")]
    path = st.scores_path(key, "digits")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_records(path, recs, {"benchmark": "digits", "model_key": key, "fingerprint": "0" * 64,
                              "model_label": "tiny"})
    st.write_last_run({"scores": [str(path)]})


def imports(args: list[str], env: dict) -> dict[str, bool]:
    """Whether the command imported torch / open_clip."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "oodbench", *args], env=env,
                         capture_output=True, text=True, cwd=env["OODBENCH_STORE"])
    names = {ln.rsplit("|", 1)[-1].strip() for ln in res.stderr.splitlines() if ln.startswith("import time:")}
    return {"torch": "torch" in names, "open_clip": "open_clip" in names}


def once(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    # cwd: the store, not a checkout (``-m`` puts the working directory first on sys.path)
    subprocess.run([sys.executable, "-m", "oodbench", *args], env=env, capture_output=True, check=True,
                   cwd=env["OODBENCH_STORE"])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--tree", action="append", default=[], help="LABEL=PATH of another checkout to time")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--command", action="append", choices=list(COMMANDS), help="Time only these (default: all).")
    a = ap.parse_args()
    trees = {"this": str(Path(__file__).resolve().parents[1])}
    trees.update(t.split("=", 1) for t in a.tree)
    commands = {c: COMMANDS[c] for c in a.command or COMMANDS}
    with tempfile.TemporaryDirectory() as tmp:
        make_store(Path(tmp) / "store")
        envs = {label: {**os.environ, "PYTHONPATH": path, "OODBENCH_STORE": str(Path(tmp) / "store"),
                        "COLUMNS": "200"} for label, path in trees.items()}
        times: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in commands}
        for env in envs.values():  # warm-up (file cache, .pyc)
            for args in commands.values():
                once(args, env)
        for _ in range(a.runs):
            for c, args in commands.items():
                for label, env in envs.items():
                    times[label, c].append(once(args, env))
        rows = {}
        for (label, c), t in times.items():
            rows[f"{label} {c}"] = {"tree": label, "command": c, "median_s": round(statistics.median(t), 3),
                                    "min_s": round(min(t), 3), "runs": a.runs, **imports(commands[c], envs[label])}
            r = rows[f"{label} {c}"]
            print(f"{label:8s} {c:14s} median {r['median_s']:6.2f} s  min {r['min_s']:6.2f} s  "
                  f"torch={r['torch']} open_clip={r['open_clip']}", flush=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "cpu": _cpu_name(), "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(meta))
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, "trees": trees, "commands": rows}, indent=2) + "\n")


def _cpu_name() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
