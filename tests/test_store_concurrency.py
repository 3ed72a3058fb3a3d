"""Real processes on one store: concurrent `score` runs keep every score; kill -9 during
`report -o` and `report --plots` leaves the previous files whole (written by temp + rename)."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oodbench.cli import app
from oodbench.results import load_records
from oodbench.store import Store


class _Slow:
    """A file whose writes are slow (512-byte pieces, 10 ms apart): a slow disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        n = 0
        for s in range(0, len(data), 512):
            n += self._f.write(data[s : s + 512]) or 0
            self._f.flush()
            time.sleep(0.01)
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _slow_disk(under: Path) -> None:
    """Make every write-mode open() under ``under`` slow (0.3 s after the open, then slow
    writes), so that a kill at a random moment lands inside a write."""
    import builtins
    import io

    real_open, prefix = builtins.open, str(under)

    def slow_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if (isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+")
                and os.path.abspath(os.fspath(file)).startswith(prefix)):
            time.sleep(0.3)
            return _Slow(f)
        return f

    builtins.open = io.open = slow_open


def _fork_cli(args, slow_under: Path) -> int:
    """Run ``oodbench ARGS`` in a forked child process (imports already done: starts at once)
    on a slow disk under ``slow_under``; returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: never returns into pytest
        _slow_disk(slow_under)
        app(args=[str(a) for a in args], prog_name="oodbench", standalone_mode=False)
        code = 0
    finally:
        os._exit(code)


def _cli(*args):
    return [sys.executable, "-m", "oodbench", *map(str, args)]


@pytest.fixture()
def store(digits_store, tmp_path):
    s = tmp_path / "store"
    shutil.copytree(digits_store["store"], s)
    return s


def test_concurrent_score_runs_keep_every_score(store, digits_store):
    """Three `score` processes with different methods at once: all exit 0, nothing is lost."""
    scores = Store(store).scores_path(digits_store["key"], "digits")
    before = {r.method for r in load_records(scores)}
    new = ["entropy", "gen", "tempscale"]
    assert not set(new) & before
    procs = [subprocess.Popen(_cli("score", "-m", m, "--store", store), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m in new]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    assert {r.method for r in load_records(scores)} == before | set(new)
    assert not list(store.rglob("*.lock")) and not list(store.rglob("*.partial"))


def _kill_during_write(args, watch: Path, rng, max_delay=0.4, timeout=60.0) -> bool:
    """Fork ``oodbench ARGS``; once anything in ``watch`` changes, SIGKILL it after a random
    delay. Returns whether it was killed (False: it finished first)."""
    def state():
        return {(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in watch.iterdir()}

    start = state()
    pid = _fork_cli(args, watch)
    deadline = time.time() + timeout
    done = lambda: os.waitpid(pid, os.WNOHANG)[0] != 0  # noqa: E731
    finished = False
    while not (finished := done()) and state() == start and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, max_delay))
    if not finished and not done():
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return True
    return False


def test_kill_during_report_output_keeps_the_previous_report(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "table.json"
    args = ["report", "--store", store, "-f", "json", "-o", target]
    assert CliRunner().invoke(app, [str(a) for a in args]).exit_code == 0
    full = target.read_text()
    assert len(full) > 2048  # several slow 512-byte writes: a kill can land inside them
    window = 0.3 + len(full.encode()) / 512 * 0.01  # the slow disk's open + writes, at least
    rng, killed = random.Random(0), 0
    for trial in range(4):
        target.write_text(previous := f"previous report {trial}\n")
        killed += _kill_during_write(args, out, rng, max_delay=0.9 * window)
        assert target.read_text() in (previous, full)  # never torn, never empty
        assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["table.json"]
    assert killed >= 3


def test_kill_during_plots_leaves_no_torn_figure(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = ["report", "--store", store, "--method", "msp,mcm", "--plots", out]
    assert CliRunner().invoke(app, [str(a) for a in args]).exit_code == 0
    reference = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(reference) >= 8
    rng, killed = random.Random(1), 0
    for _ in range(4):
        killed += _kill_during_write(args, out, rng)
        final = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
        assert set(final) == set(reference)
        torn = [n for n, b in final.items() if b != reference[n]]
        assert not torn, f"killed mid-write, changed: {torn}"
    assert killed >= 3


def test_kill_during_score_keeps_the_previous_scores(store, digits_store, tmp_path):
    """kill -9 of `score` at random moments (fit, scoring, merge-write): the scores file still
    loads with every score it held, unchanged."""
    scores = Store(store).scores_path(digits_store["key"], "digits")
    args = ["score", "-m", "entropy,gen,tempscale", "--store", store]
    t0 = time.time()
    assert CliRunner().invoke(app, [str(a) for a in args]).exit_code == 0
    duration = time.time() - t0
    expected = {r.label: r.id_scores for r in load_records(scores)}
    rng, killed = random.Random(2), 0
    for _ in range(4):
        pid = _fork_cli(args, tmp_path / "not-slowed")
        time.sleep(rng.uniform(0.0, duration))
        if os.waitpid(pid, os.WNOHANG)[0] == 0:  # still running (else reaped just now)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            killed += 1
        got = {r.label: r.id_scores for r in load_records(scores)}
        assert set(got) == set(expected)
        for label, s in expected.items():
            np.testing.assert_array_equal(got[label], s, err_msg=label)
    assert killed >= 2
