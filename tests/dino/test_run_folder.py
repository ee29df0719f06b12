"""The run folder: a lock, SIGINT like SIGTERM, logs and curves across resumes, retention, no leftovers,
one-line errors for a full disk, and config conveniences (--print-config, trainer.kwargs)."""

from __future__ import annotations

import csv
import errno
import os
import re
import signal
from pathlib import Path

import lightning as L
import pytest
import yaml
from dino_helpers import TINY, SignalAt, make_patch_folder, tiny_config

from geossl.cli import main
from geossl.dino.checkpoint import load_checkpoint_file
from geossl.dino.run_folder import RunLock, prune_checkpoints
from geossl.dino.train import pretrain


@pytest.fixture()
def patches(tmp_path):
    return make_patch_folder(tmp_path / "patches", n_per_class=16)  # 32 patches / batch 8 = 4 steps per epoch


def csv_steps(run: Path) -> list[int]:
    with open(run / "logs" / "csv" / "metrics.csv", newline="") as fh:
        return [int(float(r["step"])) for r in csv.DictReader(fh) if r.get("train/loss")]


def test_sigint_saves_then_resume_keeps_logs_and_curve_history(tmp_path, patches):
    data, stats = patches
    cfg = tiny_config(data, stats, ["optim.epochs=3", "trainer.log_every_steps=1"])
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when started in the background
    first = pretrain(cfg, tmp_path / "run", callbacks=[SignalAt(6, signal.SIGINT)])
    assert first["status"] == "interrupted" and first["steps"] == 6 and first["encoder_dir"] is None
    assert load_checkpoint_file(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is put back
    logged_before = csv_steps(tmp_path / "run")
    assert logged_before == list(range(6))  # every step up to the one saved (0-based rows), none lost

    second = pretrain(cfg, tmp_path / "run")
    assert second["status"] == "finished" and second["steps"] == 12
    steps = csv_steps(tmp_path / "run")
    assert set(logged_before) <= set(steps) and max(steps) >= 11  # rows of both segments, none lost
    assert len(steps) == len(set(steps))  # and none twice
    history = load_checkpoint_file(tmp_path / "run" / "checkpoints" / "last.ckpt")["callbacks"]
    printer = next(v for k, v in history.items() if "MetricPrinter" in k)
    assert [h["step"] for h in printer["history"]][:3] == [1, 2, 3]  # curves.png is drawn from the whole run


def test_a_second_pretrain_on_a_locked_folder_is_refused(tmp_path, patches, capsys):
    data, stats = patches
    config = tmp_path / "c.yaml"
    config.write_text("{}")
    with RunLock(tmp_path / "run"):
        args = ["pretrain", "--config", str(config), "--run-dir", str(tmp_path / "run"), *TINY,
                f"data.paths=[{data}]", f"data.stats={stats}"]
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"another geossl pretrain (pid {os.getpid()}) is running" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert main(args) == 0  # released: the run goes ahead


def test_explicit_resume_into_a_finished_run_is_refused(tmp_path, patches):
    data, stats = patches
    cfg = tiny_config(data, stats, ["optim.epochs=1"])
    pretrain(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        pretrain(cfg, tmp_path / "run", resume=str(ckpt))


@pytest.mark.parametrize("resume", ["never", "auto"])
def test_a_finished_run_is_never_offered_resume_auto(resume, tmp_path, patches, capsys):
    """Regression (#23): `--resume never` on a finished run said "use --resume auto to continue it", which
    only met the next refusal (a finished run cannot be continued). Both modes now say what works."""
    data, stats = patches
    config = tmp_path / "c.yaml"
    config.write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"status": "finished"}')
    args = ["pretrain", "--config", str(config), "--run-dir", str(run), "--resume", resume, *TINY,
            f"data.paths=[{data}]", f"data.stats={stats}"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"geossl pretrain: error: {run}: already holds a finished run (summary.json), which cannot be "
                   f"resumed; use a new --run-dir (model.init={run} trains on from its weights; nothing was "
                   "overwritten)")
    assert sorted(p.name for p in run.iterdir()) == [".lock", "summary.json"]


def test_never_on_an_unfinished_run_offers_resume_auto(tmp_path, patches):
    data, stats = patches
    cfg = tiny_config(data, stats, ["optim.epochs=2"])
    assert pretrain(cfg, tmp_path / "run", callbacks=[SignalAt(2)])["status"] == "interrupted"
    with pytest.raises(FileExistsError, match=r"already holds an unfinished run \(checkpoints\); use --resume auto "
                                              r"to continue it, or a new --run-dir$"):
        pretrain(cfg, tmp_path / "run", resume="never")


def test_retention_keeps_the_newest_and_every_kth(tmp_path, patches):
    data, stats = patches
    cfg = tiny_config(data, stats, ["optim.epochs=2", "trainer.checkpoint_every_steps=1", "trainer.keep_last=2",
                                    "trainer.keep_every=3"])
    pretrain(cfg, tmp_path / "run")
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*.ckpt"))
    assert kept == ["step-00000003.ckpt", "step-00000006.ckpt", "step-00000007.ckpt", "step-00000008.ckpt"]


def test_prune_reference(tmp_path):
    """Reference: with checkpoints every 5 steps, keep the newest 2 and every 3rd (multiples of 15)."""
    for step in range(5, 55, 5):
        (tmp_path / f"step-{step:08d}.ckpt").write_bytes(b"x")
    (tmp_path / "last.ckpt").write_bytes(b"x")
    prune_checkpoints(tmp_path, keep_last=2, keep_every=3, every_steps=5)
    left = sorted(int(p.stem.split("-")[1]) for p in tmp_path.glob("step-*.ckpt"))
    assert left == [15, 30, 45, 50] and (tmp_path / "last.ckpt").exists()
    prune_checkpoints(tmp_path, keep_last=0, keep_every=0, every_steps=5)  # 0 keeps everything
    assert len(list(tmp_path.glob("step-*.ckpt"))) == 4


def test_partial_files_are_cleaned_at_start(tmp_path, patches):
    data, stats = patches
    leftovers = [tmp_path / "run" / "checkpoints" / ".last.ckpt.abc.ckpt.partial",
                 tmp_path / "run" / ".summary.json.xyz.partial"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    pretrain(tiny_config(data, stats, ["optim.epochs=1"]), tmp_path / "run")
    assert not any(p.exists() for p in leftovers)


TORCH_WRITE_FAILED = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"  # what torch.save raises


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError(TORCH_WRITE_FAILED)])
def test_a_full_disk_is_one_line_naming_the_file(error, tmp_path, patches, capsys, monkeypatch):
    """Regression (#23): a full disk while saving a checkpoint showed torch's C++ enforce message (no path,
    no word of the disk). It is one line naming the checkpoint, even though Lightning's clean-up (its CSV
    logger's last save) then fails on the same disk; nothing half-written stays; a rerun works."""
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    import geossl.dino.checkpoint as ckpt_module
    import geossl.io as io_module

    data, stats = patches
    config = tmp_path / "c.yaml"
    config.write_text("{}")
    full = []

    def no_space(*args, **kwargs):
        full.append(True)
        raise error

    def csv_save(self):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", no_space)
    monkeypatch.setattr(ExperimentWriter, "save", csv_save)
    if isinstance(error, RuntimeError):  # torch's error says nothing of the disk: the space left does
        monkeypatch.setattr(io_module, "disk_is_full", lambda folder: True)
    args = ["pretrain", "--config", str(config), "--run-dir", str(tmp_path / "run"), *TINY,
            f"data.paths=[{data}]", f"data.stats={stats}", "optim.epochs=1", "trainer.checkpoint_every_steps=1"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert len(err.splitlines()) == 1 and "enforce" not in err, err
    assert re.search(rf"error: {re.escape(str(checkpoints))}/[\w.-]+\.ckpt: cannot write \(the disk is full\); "
                     "the newest complete checkpoint is kept for --resume$", err), err
    assert not list(checkpoints.glob("*.partial")) and not list(checkpoints.glob("*.ckpt"))
    monkeypatch.undo()
    assert main(args) == 0  # nothing left behind blocks the rerun
    capsys.readouterr()


def test_a_failed_torch_save_names_the_checkpoint_when_the_disk_is_not_full(tmp_path, monkeypatch):
    """Any other failure of torch's writer (an I/O error, a quota) is still one line naming the file."""
    import geossl.dino.checkpoint as ckpt_module
    from geossl.io import WriteError

    def failing(*args, **kwargs):
        raise RuntimeError(TORCH_WRITE_FAILED)

    monkeypatch.setattr(ckpt_module.torch, "save", failing)
    with pytest.raises(WriteError) as caught:
        ckpt_module.AtomicCheckpointIO().save_checkpoint({}, tmp_path / "last.ckpt")
    assert caught.value.filename == str(tmp_path / "last.ckpt")
    assert caught.value.strerror == f"cannot write (RuntimeError: {TORCH_WRITE_FAILED})"
    assert list(tmp_path.iterdir()) == []


def test_a_full_folder_is_refused_before_training(tmp_path, patches, capsys, monkeypatch):
    data, stats = patches
    config = tmp_path / "c.yaml"
    config.write_text("{}")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", lambda self, data: no_space())  # the folder check at start
    assert main(["pretrain", "--config", str(config), "--run-dir", str(tmp_path / "other"), *TINY,
                 f"data.paths=[{data}]", f"data.stats={stats}", "optim.epochs=1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "other: cannot write here (the disk is full)" in err


def test_print_config_and_trainer_kwargs(tmp_path, patches, capsys):
    data, stats = patches
    assert main(["pretrain", "--config", "configs/demo.yaml", "--print-config", "optim.epochs=7",
                 "trainer.kwargs={accumulate_grad_batches: 2}"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["epochs"] == 7 and printed["model"]["arch"] == "vit_tiny_r_s16_p8_224"
    assert printed["trainer"]["kwargs"] == {"accumulate_grad_batches": 2}

    seen = {}

    class Look(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["accumulate"] = trainer.accumulate_grad_batches

    cfg = tiny_config(data, stats, ["optim.epochs=1", "trainer.kwargs={accumulate_grad_batches: 2}"])
    pretrain(cfg, tmp_path / "run", callbacks=[Look()])
    assert seen["accumulate"] == 2


def test_knn_data_follows_data_root(tmp_path, monkeypatch):
    """eval.knn_data's $GEOSSL_DATA means data.root, as data.paths does."""
    monkeypatch.delenv("GEOSSL_DATA", raising=False)
    root = tmp_path / "root"
    data, stats = make_patch_folder(root / "mine", n_per_class=8)
    cfg = tiny_config(data, stats, ["optim.epochs=1", f"data.root={root}", "eval.knn_data=$GEOSSL_DATA/mine"])
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["knn_top1"] is not None


def test_a_file_in_two_splits_is_refused(tmp_path, capsys):
    data, _ = make_patch_folder(tmp_path / "patches", n_per_class=6)
    files = sorted(p.relative_to(data) for p in data.rglob("*.png"))
    rows = ["path,label,split"] + [f"{p},{p.parent},{('train', 'val', 'test')[i % 3]}" for i, p in enumerate(files)]
    rows.append(f"./{files[0]},{files[0].parent},test")  # the first (train) file again, spelled differently
    (data / "splits.csv").write_text("\n".join(rows) + "\n")
    from geossl.data.patches import PatchDataset
    from geossl.probe.features import load_split_table

    for load in (lambda: PatchDataset(data, split="train"), lambda: load_split_table(data)):
        with pytest.raises(ValueError, match=r"splits\.csv: .*bright_0\.png is in both the 'train' and the 'test'"):
            load()


def test_another_runs_checkpoint_and_export_folders_are_refused(tmp_path, patches):
    """Regression (#23): --checkpoint-dir pointing at another run's checkpoints resumed that (finished) run
    and rewrote its last.ckpt; --export-dir holding another run's encoder was overwritten."""
    data, stats = patches
    cfg = tiny_config(data, stats, ["optim.epochs=1"])
    ckpts, model = tmp_path / "ckpts-a", tmp_path / "model-a"
    first = pretrain(cfg, tmp_path / "run-a", checkpoint_dir=ckpts, export_dir=model)
    assert first["status"] == "finished" and (ckpts / ".geossl-run").read_text().strip() == str(tmp_path / "run-a")
    def files() -> dict[str, int]:  # everything but the lock file (rewritten with the pid of each holder)
        return {p.name: p.stat().st_mtime_ns for p in [*ckpts.iterdir(), *model.iterdir()] if p.name != ".lock"}

    before = files()
    with pytest.raises(FileExistsError, match=r"--checkpoint-dir .*holds the checkpoints of .*run-a"):
        pretrain(cfg, tmp_path / "run-b", checkpoint_dir=ckpts)
    with pytest.raises(FileExistsError, match=r"--export-dir .*already holds an encoder"):
        pretrain(cfg, tmp_path / "run-c", export_dir=model)
    assert files() == before
    # the same run folder again (a restarted spot job) still owns its checkpoint folder: refused only as finished
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        pretrain(cfg, tmp_path / "run-a", checkpoint_dir=ckpts, export_dir=tmp_path / "model-new")
    # and a checkpoint folder in use by a live run is locked
    with RunLock(tmp_path / "ckpts-d"), pytest.raises(RuntimeError, match="choose another --checkpoint-dir"):
        pretrain(cfg, tmp_path / "run-d", checkpoint_dir=tmp_path / "ckpts-d")
