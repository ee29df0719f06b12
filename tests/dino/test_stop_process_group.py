"""A stop sent to the whole process group (``timeout``, Slurm's scancel, systemd, Ctrl-C in a terminal) reaches
the DataLoader workers too. They must ignore it, so that the main process saves ``last.ckpt`` at the step it
reached, says so and exits 143; the same command then resumes, bitwise the uninterrupted run (issue #23).

The runs are real ``geossl pretrain`` / ``geossl finetune`` commands with two workers, each in a session of
its own (``start_new_session``), stopped with ``os.killpg`` exactly as those tools do it."""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from dino_helpers import TINY, make_patch_folder

from bench.synthetic import make_tiny_encoder
from geossl.dino.checkpoint import load_checkpoint_file
from geossl.dino.data import init_worker, stop_safe_worker_init

STOPPED = 143  # what geossl pretrain and finetune return for a run stopped by a signal (128 + SIGTERM)


def _geossl(args: list[str], log: Path) -> subprocess.Popen:
    """``geossl ARGS`` in a new session (its own process group, as a job under a scheduler), output to ``log``.
    One thread each, so every run does the same arithmetic and the weights can be compared bitwise."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "geossl.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _stop_when(proc: subprocess.Popen, log: Path, ready: Callable[[], bool], timeout: float = 60) -> int:
    """Wait until ``ready()``, send SIGTERM to the whole process group, and return the exit code. Also checks
    that no worker outlives the main process (they ignore SIGTERM, so they must end by themselves)."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the run ended before it could be stopped:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the run made no progress:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(90)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("DataLoader workers outlived the stopped run")
        return code
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _steps_logged(log: Path) -> int:
    steps = re.findall(r"geossl-metric step=(\d+) ", log.read_text())
    return int(steps[-1]) if steps else 0


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint_file(a)["state_dict"], load_checkpoint_file(b)["state_dict"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "the resumed run's weights differ from the uninterrupted one's"


# ----------------------------------------------------------------------------------------- the worker rule
class _SignalDispositions(torch.utils.data.Dataset):
    """What a worker process sees: its SIGTERM and SIGINT handlers and a mark left by a worker_init_fn."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[bool, bool, str]:
        return (signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                os.environ.get("GEOSSL_TEST_INIT", ""))


def _mark(worker_id: int) -> None:
    os.environ["GEOSSL_TEST_INIT"] = f"ran {worker_id}"


@pytest.mark.parametrize(("worker_init_fn", "mark"), [(stop_safe_worker_init(_mark), "ran 0"),
                                                     (lambda worker_id: init_worker(worker_id, 0), "")],
                         ids=["composed-with-another", "training-loaders"])
def test_loader_workers_ignore_sigterm_and_sigint(worker_init_fn, mark):
    loader = torch.utils.data.DataLoader(_SignalDispositions(), batch_size=None, num_workers=1,
                                         worker_init_fn=worker_init_fn)
    seen = list(loader)
    assert seen and all(term and interrupt for term, interrupt, _ in seen)
    assert all(m == mark for *_, m in seen)  # a composed worker_init_fn still runs
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # the rule is the workers', not this process's


# ----------------------------------------------------------------------------------------------- pretrain
@pytest.mark.slow
def test_pretrain_stopped_through_its_process_group_saves_and_resumes_bitwise(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=16)  # 4 steps per epoch
    config = tmp_path / "c.yaml"
    config.write_text("{}")

    def args(run: Path) -> list[str]:
        return ["pretrain", "--config", str(config), "--run-dir", str(run), *TINY, "data.num_workers=2",
                "optim.epochs=15", "trainer.log_every_steps=1", f"data.paths=[{data}]", f"data.stats={stats}"]

    run, log = tmp_path / "run", tmp_path / "stopped.log"
    code = _stop_when(_geossl(args(run), log), log, lambda: _steps_logged(log) >= 5)
    text = log.read_text()
    assert "killed by signal" not in text and code == STOPPED, text[-3000:]
    saved = re.findall(r"geossl: SIGTERM received; checkpoint saved at step (\d+), stopping", text)
    assert len(saved) == 1, text[-3000:]
    step = int(saved[0])
    assert 5 <= step < 60 and load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == step
    assert f"pretrain interrupted: {step} steps" in text

    assert _finish(_geossl(args(run), tmp_path / "resumed.log")) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert f"resumed_from\": \"{run / 'checkpoints' / 'last.ckpt'}" in (tmp_path / "resumed.log").read_text()
    assert _finish(_geossl(args(tmp_path / "straight"), tmp_path / "straight.log")) == 0
    _assert_same_weights(tmp_path / "straight" / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")


# ----------------------------------------------------------------------------------------------- finetune
@pytest.mark.slow
def test_finetune_stopped_through_its_process_group_saves_and_resumes_bitwise(shared_data, tmp_path):
    encoder = make_tiny_encoder(tmp_path / "enc", 3, img_size=64, patch_size=16, depth=2, gsd=10.0,
                                mean=[87.8, 96.9, 103.9], std=[51.9, 34.8, 29.2])
    rows = list(csv.DictReader(open(shared_data / "eurosat-rgb" / "splits.csv", newline="")))
    random.Random(0).shuffle(rows)
    want, taken, chosen = {"train": 8, "val": 2, "test": 1}, {}, []
    for r in rows:  # 8 train / 2 val / 1 test patches per class of the real EuroSAT RGB split (seeded)
        key = (r["label"], r["split"])
        if taken.get(key, 0) < want[r["split"]]:
            taken[key] = taken.get(key, 0) + 1
            chosen.append(r)
    splits = tmp_path / "splits.csv"
    with open(splits, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(chosen)

    def args(out: Path) -> list[str]:  # 80 train patches / batch 16 = 5 steps per epoch, 40 in all
        return ["finetune", "--encoder", str(encoder), "--out", str(out), "--data", str(shared_data / "eurosat-rgb"),
                "--splits", str(splits), "--baselines", "none", "optim.batch_size=16", "optim.epochs=8",
                "optim.warmup_epochs=0.2", "trainer.num_workers=2", "trainer.progress_bar=false",
                "trainer.checkpoint_every_steps=4", "trainer.val_every_epochs=4"]

    out, log = tmp_path / "ft", tmp_path / "stopped.log"
    code = _stop_when(_geossl(args(out), log), log, lambda: (out / "checkpoints" / "step-00000004.ckpt").exists())
    text = log.read_text()
    assert "killed by signal" not in text and code == STOPPED, text[-3000:]
    saved = re.findall(r"geossl: SIGTERM received; checkpoint saved at step (\d+), stopping", text)
    assert len(saved) == 1, text[-3000:]
    step = int(saved[0])
    assert 4 <= step < 40 and load_checkpoint_file(out / "checkpoints" / "last.ckpt")["global_step"] == step
    assert text.rstrip().endswith(f"geossl finetune: interrupted at step {step}; run the same command again to resume")
    assert not (out / "model").exists()

    assert _finish(_geossl(args(out), tmp_path / "resumed.log")) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    resumed = (tmp_path / "resumed.log").read_text()
    assert f"geossl: resumed {out / 'checkpoints' / 'last.ckpt'} at step {step} " in resumed, resumed[-3000:]
    assert "Restored all states" not in resumed
    assert _finish(_geossl(args(tmp_path / "straight"), tmp_path / "straight.log")) == 0
    _assert_same_weights(tmp_path / "straight" / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt")
