"""The container side of the SageMaker contract: the mapping of SM_* variables and hyperparameters onto
pretraining (unit tests), then the entry point run as SageMaker runs it, on real EuroSAT images:
model and checkpoints where SageMaker collects them, a SIGTERM that checkpoints and a restart that
resumes, a readable failure file, and a 2-process torchrun run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from geossl.cloud import container
from geossl.cloud.container import (
    ContainerPaths,
    data_overrides,
    distributed_overrides,
    failure_reason,
    hyperparameter_overrides,
    read_hyperparameters,
    resolve_job,
    write_failure,
)
from geossl.cloud.launcher import METRIC_DEFINITIONS
from geossl.settings import REPO_ROOT

# A model small enough that a step takes well under a second on a shared CPU core.
TINY = ["data.limit=64", "data.batch_size=8", "data.num_workers=0", "optim.epochs=1", "eval.knn_data=null",
        "model.extra={depth: 2}", "head.out_dim=256", "head.hidden_dim=128", "head.bottleneck_dim=64",
        "augment.n_local=2", "trainer.log_every_steps=1", "trainer.progress_bar=false"]
METRIC_LINE = re.compile(r"^geossl-metric step=(\d+) ", re.M)


# --- unit tests of the mapping --------------------------------------------------------------------

def test_hyperparameters_from_sm_hps_and_arguments():
    env = {"SM_HPS": json.dumps({"config": "configs/demo.yaml", "overrides": ["optim.epochs=2"], "optim.base_lr": 0.001})}
    argv = ["--config", "configs/demo.yaml", "--overrides", '["optim.epochs=2"]', "--data.limit", "64",
            "--trainer.compile=true"]
    hps = read_hyperparameters(argv, env)
    assert hps == {"config": "configs/demo.yaml", "overrides": ["optim.epochs=2"], "optim.base_lr": 0.001,
                   "data.limit": 64, "trainer.compile": True}
    assert hyperparameter_overrides(hps) == ["optim.epochs=2", "optim.base_lr=0.001", "data.limit=64",
                                             "trainer.compile=true"]
    assert hyperparameter_overrides({"overrides": "optim.epochs=2 'data.paths=[a, b]'"}) == [
        "optim.epochs=2", "data.paths=[a, b]"]
    assert hyperparameter_overrides({"sagemaker_program": "x", "mp_parameters": "{}"}) == []
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'epochs' \(valid: config, overrides"):
        hyperparameter_overrides({"epochs": 3})
    with pytest.raises(ValueError, match="hyperparameter '--config': missing value"):
        read_hyperparameters(["--config"], {})
    with pytest.raises(ValueError, match="SM_HPS: not valid JSON"):
        read_hyperparameters([], {"SM_HPS": "{oops"})


def test_paths_come_from_the_environment_with_sagemaker_fallbacks(tmp_path):
    defaults = ContainerPaths.from_env({}, tmp_path)
    assert defaults.model_dir == Path("/opt/ml/model") and defaults.checkpoint_dir == Path("/opt/ml/checkpoints")
    assert defaults.failure_file == Path("/opt/ml/output/failure") and defaults.source_dir == tmp_path
    env = {"SM_MODEL_DIR": "/m", "GEOSSL_CHECKPOINT_DIR": "/c", "SM_OUTPUT_DIR": "/o", "SM_SOURCE_DIR": "/s"}
    paths = ContainerPaths.from_env(env)
    assert (paths.model_dir, paths.checkpoint_dir, paths.failure_file, paths.output_data_dir, paths.source_dir) == (
        Path("/m"), Path("/c"), Path("/o/failure"), Path("/o/data"), Path("/s"))
    assert ContainerPaths.from_env({"SM_OUTPUT_FAILURE": "/f/x"}).failure_file == Path("/f/x")


def test_opt_ml_only_appears_as_a_fallback():
    """Code literals (not docstrings) name /opt/ml once: the default behind the SM_* variables."""
    for path, allowed in ((REPO_ROOT / "geossl" / "cloud" / "container.py", ['"/opt/ml"']),
                          (REPO_ROOT / "sagemaker" / "train.py", [])):
        with open(path, "rb") as fh:
            literals = [t.string for t in tokenize.tokenize(fh.readline)
                        if t.type in (tokenize.STRING, tokenize.FSTRING_MIDDLE) and "/opt/ml" in t.string
                        and not t.string.startswith('"""')]
        assert literals == allowed, (path, literals)


def test_data_comes_from_the_channel_or_an_s3_hyperparameter(tmp_path):
    (tmp_path / "train" / "Forest").mkdir(parents=True)
    (tmp_path / "train" / "Forest" / "a.jpg").write_bytes(b"x")
    env = {"SM_CHANNEL_TRAIN": str(tmp_path / "train")}
    assert data_overrides({}, env)[0] == [f'data.paths=["{tmp_path / "train"}"]']
    assert data_overrides({"data": "s3://b/p/"}, env)[0] == ['data.paths=["s3://b/p/"]']
    assert data_overrides({}, {})[0] == []  # no channel: the config's paths stand
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"channel 'train' \(SM_CHANNEL_TRAIN=.*empty\) is empty"):
        data_overrides({}, {"SM_CHANNEL_TRAIN": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match=r"channel 'images': SM_CHANNEL_IMAGES is not set"):
        data_overrides({"channel": "images"}, env)


def test_overrides_may_name_a_channel_folder():
    env = {"SM_CHANNEL_TRAIN": "/opt/ml/input/data/train", "SM_CHANNELS": '["train"]'}
    assert container.expand_channel_vars("eval.knn_data=$SM_CHANNEL_TRAIN", env) == "eval.knn_data=/opt/ml/input/data/train"
    assert container.expand_channel_vars("eval.knn_data=${SM_CHANNEL_TRAIN}/x", env).endswith("/train/x")
    with pytest.raises(ValueError, match=r"\$SM_CHANNEL_LABELS is not set \(channels: \["):
        container.expand_channel_vars("eval.knn_data=$SM_CHANNEL_LABELS", env)


def test_devices_and_nodes_follow_torchrun():
    assert distributed_overrides({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, cuda_available=True) == [
        "trainer.devices=4", "trainer.num_nodes=2"]
    assert distributed_overrides({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, cuda_available=False) == [
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=1"]
    assert distributed_overrides({}, cuda_available=True) == []
    with pytest.raises(ValueError, match="WORLD_SIZE=6 is not a multiple of LOCAL_WORLD_SIZE=4"):
        distributed_overrides({"WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "4"}, cuda_available=True)


def test_override_order_config_then_data_then_user_then_topology(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text("seed: 1\n")
    (tmp_path / "ch" / "a").mkdir(parents=True)
    (tmp_path / "ch" / "a" / "b.jpg").write_bytes(b"x")
    env = {"SM_CHANNEL_TRAIN": str(tmp_path / "ch"), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    spec = resolve_job({"config": "configs/x.yaml", "overrides": ["trainer.devices=7"], "resume": "never"},
                       env, ContainerPaths.from_env(env, tmp_path), cuda_available=True)
    assert spec.config_path == tmp_path / "configs" / "x.yaml" and spec.resume == "never"
    assert spec.overrides[0].startswith("data.paths=") and spec.overrides[-2:] == ["trainer.devices=2", "trainer.num_nodes=1"]
    with pytest.raises(FileNotFoundError, match=r"hyperparameter 'config': .*nope.yaml not found"):
        resolve_job({"config": "nope.yaml"}, {}, ContainerPaths.from_env({}, tmp_path), cuda_available=True)


def test_failure_reason_reads_first_and_the_first_failure_wins(tmp_path):
    try:
        raise ValueError("data.paths: /x: no images\nsecond line " + "y" * 2000)
    except ValueError as exc:
        text = failure_reason(exc, {"RANK": "1", "SM_CURRENT_HOST": "algo-2", "TRAINING_JOB_NAME": "j"})
    first = text.splitlines()[0]
    assert first.startswith("ValueError: data.paths: /x: no images second line") and len(first) <= 700
    assert "where: rank 1 on algo-2, job j" in text[:1024] and text.index("Traceback") > text.index("where:")
    assert len(text) <= container.FAILURE_MAX
    hint = failure_reason(ModuleNotFoundError("No module named 'timm'"), {})
    assert "sagemaker/requirements.txt" in hint.splitlines()[1]
    path = tmp_path / "output" / "failure"
    write_failure(path, "first\n")
    write_failure(path, "second\n")
    assert path.read_text() == "first\n" and not list(path.parent.glob("*.partial"))


# --- the entry point, run as SageMaker runs it ---------------------------------------------------

@pytest.fixture(scope="module")
def channel(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small EuroSAT subset laid out as the train channel SageMaker downloads (class folders)."""
    root = tmp_path_factory.mktemp("channel") / "train"
    for cls in sorted(p for p in (shared_data / "eurosat-rgb").iterdir() if p.is_dir()):
        (root / cls.name).mkdir(parents=True)
        for image in sorted(cls.glob("*.jpg"))[:7]:
            shutil.copy(image, root / cls.name / image.name)
    return root


def sagemaker_env(root: Path, channel_dir: Path, hps: dict) -> dict[str, str]:
    """The variables SageMaker (and the SDK's environment.py) give the entry point, written out by hand."""
    for sub in ("model", "output/data", "checkpoints", "input/config"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "GEOSSL_", "RANK", "WORLD_SIZE"))}
    env.update({
        "SM_MODEL_DIR": str(root / "model"), "SM_OUTPUT_DIR": str(root / "output"),
        "SM_OUTPUT_DATA_DIR": str(root / "output/data"), "SM_OUTPUT_FAILURE": str(root / "output/failure"),
        "SM_CHANNEL_TRAIN": str(channel_dir), "SM_CHANNELS": '["train"]', "SM_HPS": json.dumps(hps),
        "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1", "SM_HOST_COUNT": "1", "SM_NUM_GPUS": "0",
        "SM_SOURCE_DIR": str(REPO_ROOT), "GEOSSL_CHECKPOINT_DIR": str(root / "checkpoints"),
        "TRAINING_JOB_NAME": "geossl-test-20250101000000", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    })
    return env


def entry_point(hps: dict) -> list[str]:
    return [sys.executable, "sagemaker/train.py", *container.hyperparameters_to_args(hps)]


def _metric_steps(stdout: str) -> list[int]:
    return [int(s) for s in METRIC_LINE.findall(stdout)]


@pytest.mark.slow
def test_entry_point_checkpoints_on_sigterm_then_resumes_and_exports(tmp_path, channel):
    """The container run end to end: a spot interruption mid-epoch, then the restarted job finishes."""
    # 3 epochs of 8 steps: the signal, sent at step 2, lands mid-run however fast the machine is
    hps = {"config": "configs/demo.yaml", "overrides": [*TINY, "optim.epochs=3"], "channel": "train"}
    env = sagemaker_env(tmp_path, channel, hps)
    proc = subprocess.Popen(entry_point(hps), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("geossl-metric step=2 "):
            proc.send_signal(signal.SIGTERM)  # what SageMaker sends on stop / spot interruption
            break
    rest, _ = proc.communicate(timeout=120)  # SageMaker's grace period
    out1 = "".join(seen) + rest
    assert proc.returncode == container.EXIT_INTERRUPTED, out1[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "model" / "model.safetensors").exists()
    assert not (tmp_path / "output" / "failure").exists()
    saved = _metric_steps(out1)[-1]  # the step printed last is the step checkpointed on SIGTERM

    # SageMaker restores the checkpoint folder into a fresh container and runs the same command again
    shutil.rmtree(tmp_path / "output")
    proc2 = subprocess.run(entry_point(hps), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc2.returncode == 0, proc2.stdout[-3000:] + proc2.stderr[-3000:]
    summary = json.loads((tmp_path / "output" / "data" / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 3.0 and summary["resumed_from"]
    assert saved < summary["steps"]
    assert _metric_steps(proc2.stdout) == list(range(saved + 1, summary["steps"] + 1))  # continued, not restarted
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    meta = json.loads((tmp_path / "model" / "geossl.json").read_text())
    assert meta["timm_kwargs"]["in_chans"] == 3 and meta["extra"]["steps"] == summary["steps"]
    assert not (tmp_path / "output" / "failure").exists()
    # the job's metric definitions scrape these very lines
    loss = dict(METRIC_DEFINITIONS)["train:loss"]
    assert all(re.search(loss, ln) for ln in proc2.stdout.splitlines() if ln.startswith("geossl-metric step="))


@pytest.mark.parametrize(("overrides", "empty_channel", "first_line"), [
    (["optim.epochs=zero"], False, r"ConfigError: override 'optim.epochs=zero': key 'optim.epochs': expected int"),
    ([], True, r"ValueError: channel 'train' \(SM_CHANNEL_TRAIN=.*\) is empty"),
])
def test_bad_input_writes_a_readable_failure_file(tmp_path, channel, overrides, empty_channel, first_line):
    hps = {"config": "configs/demo.yaml", "overrides": overrides, "channel": "train"}
    channel_dir = tmp_path / "empty" if empty_channel else channel
    channel_dir.mkdir(exist_ok=True)
    proc = subprocess.run(entry_point(hps), cwd=REPO_ROOT, env=sagemaker_env(tmp_path, channel_dir, hps),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    reason = (tmp_path / "output" / "failure").read_text()
    assert re.match(first_line, reason.splitlines()[0]), reason
    assert "where: rank 0 on algo-1, job geossl-test-20250101000000" in reason[:1024]
    assert not list((tmp_path / "output").glob("*.partial"))


@pytest.mark.slow
def test_local_runs_the_entry_point_under_torchrun_with_two_processes(tmp_path, channel):
    cmd = [sys.executable, "-m", "geossl.cli", "sagemaker", "local", "--config", "configs/sagemaker_dino.yaml",
           "--root", str(tmp_path / "opt-ml"), "--data", str(channel), "--nproc", "2",
           "pretrain.config=configs/demo.yaml", *TINY, "trainer.max_steps=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "torch.distributed.run" in out and "--nproc_per_node=2" in out
    assert out.count("geossl-sagemaker: config=") == 1  # rank 0 speaks, rank 1 does not
    assert "'trainer.devices=2', 'trainer.num_nodes=1'" in out
    assert _metric_steps(proc.stdout) == [1, 2, 3]  # one line per step: printed on rank 0 only
    root = tmp_path / "opt-ml"
    assert (root / "model" / "model.safetensors").is_file() and (root / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((root / "input" / "config" / "hyperparameters.json").read_text())["channel"] == "train"


@pytest.mark.slow
def test_finetune_task_trains_from_the_encoder_channel_and_exports_a_model(tmp_path, channel):
    """task=finetune: patches from the train channel, the start from the encoder channel; the land-cover
    model lands in the model dir (what SageMaker uploads), the reports in output data, the run folder in
    the checkpoint folder (what a restarted spot job gets back)."""
    from bench.synthetic import make_tiny_encoder

    encoder = make_tiny_encoder(tmp_path / "encoder-channel", 3, img_size=64, patch_size=16, depth=2, gsd=10.0,
                                mean=[87.8, 96.9, 103.9], std=[51.9, 34.8, 29.2])
    hps = {"config": "configs/finetune_demo.yaml", "channel": "train", "task": "finetune",
           "overrides": ["optim.epochs=1", "optim.batch_size=16", "trainer.num_workers=0",
                         "trainer.progress_bar=false", "optim.warmup_epochs=0.2"]}
    env = sagemaker_env(tmp_path / "ml", channel, hps)
    env.update({"SM_CHANNEL_ENCODER": str(encoder), "SM_CHANNELS": '["encoder", "train"]'})
    assert container.main([], env) == 0
    ml = tmp_path / "ml"
    assert {"head.json", "model.safetensors", "geossl.json"} <= {p.name for p in (ml / "model").iterdir()}
    metrics = json.loads((ml / "output" / "data" / "metrics.json").read_text())
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["test_count"] > 0
    assert (ml / "checkpoints" / "finetune" / "checkpoints" / "last.ckpt").is_file()
    # without the encoder channel: a readable failure, not a traceback deep in fine-tuning
    env.pop("SM_CHANNEL_ENCODER")
    assert container.main([], env) == 1
    assert "SM_CHANNEL_ENCODER is not set" in (ml / "output" / "failure").read_text().splitlines()[0]


# --- running `geossl sagemaker local` again --------------------------------------------------------

def local_argv(root: Path, channel_dir: Path, *extra: str) -> list[str]:
    return ["sagemaker", "local", "--config", "configs/sagemaker_dino.yaml", "--root", str(root), "--data",
            str(channel_dir), "--nproc", "0", "pretrain.config=configs/demo.yaml", *TINY, *extra]


@pytest.mark.parametrize("done", ["model/geossl.json", "output/data/run/summary.json",
                                  "checkpoints/finetune/metrics.json"])
def test_local_rerun_of_a_finished_job_is_one_line_naming_root(done, tmp_path, channel, capsys):
    """Regression (#23): running `geossl sagemaker local` a second time with the same arguments died with a
    traceback (the entry point refused the model dir as an --export-dir, an option this command does not
    have). Now a finished job in --root is refused in one line, before anything starts or is written."""
    from geossl.cli import main

    root = tmp_path / "opt-ml"
    (root / done).parent.mkdir(parents=True)
    (root / done).write_text(json.dumps({"status": "finished"}))
    assert main(local_argv(root, channel)) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"geossl sagemaker: error: {root}: already holds a finished job ({done}), which cannot be "
                   "resumed; pass a new --root to train again (nothing was overwritten)")
    assert not (root / "input").exists()  # nothing prepared, nothing started


def test_local_rerun_beside_a_running_job_names_root(tmp_path, channel, capsys):
    from geossl.cli import main
    from geossl.io import RunLock

    root = tmp_path / "opt-ml"
    with RunLock(root, "geossl sagemaker local", "--root"):
        assert main(local_argv(root, channel)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another geossl sagemaker local" in err and "another --root" in err


def test_an_unfinished_local_job_is_not_refused(tmp_path):
    """An interrupted job (checkpoints, a summary saying interrupted, an empty model dir) resumes as before."""
    root = tmp_path / "opt-ml"
    for sub in ("model", "checkpoints", "output/data/run"):
        (root / sub).mkdir(parents=True)
    (root / "output/data/run/summary.json").write_text(json.dumps({"status": "interrupted"}))
    assert container.finished_local_job(root) is None


def test_the_entry_point_names_run_name_not_pretrain_options_for_a_finished_run(tmp_path, channel):
    """In the container, pretraining's refusals name what starts a new run there (a run_name; a --root for
    `sagemaker local`), not `geossl pretrain`'s --run-dir / --export-dir."""
    hps = {"config": "configs/demo.yaml", "overrides": TINY, "channel": "train"}
    env = sagemaker_env(tmp_path, channel, hps)
    (tmp_path / "output/data/run").mkdir(parents=True)
    (tmp_path / "output/data/run/summary.json").write_text(json.dumps({"status": "finished"}))
    assert container.main([], env) == 1
    first = (tmp_path / "output" / "failure").read_text().splitlines()[0]
    assert "already holds a finished run (summary.json), which cannot be resumed; use a new run_name " \
           "(geossl sagemaker local: or a new --root)" in first and "--run-dir" not in first
    (tmp_path / "output" / "failure").unlink()
    (tmp_path / "model" / "geossl.json").write_text("{}")
    assert container.main([], env) == 1
    first = (tmp_path / "output" / "failure").read_text().splitlines()[0]
    assert "already holds an encoder (geossl.json); use a new run_name" in first and "another --export-dir" not in first


def test_a_finetune_job_of_a_finished_run_names_run_name_not_overwrite(tmp_path, channel):
    """A fine-tune job whose run folder (in the checkpoints) is finished: refused naming a new run_name, not
    `geossl finetune`'s --overwrite / --out, which a job does not have."""
    hps = {"config": "configs/finetune_demo.yaml", "channel": "train", "task": "finetune"}
    env = sagemaker_env(tmp_path, channel, hps)
    (tmp_path / "encoder").mkdir()
    env.update({"SM_CHANNEL_ENCODER": str(tmp_path / "encoder"), "SM_CHANNELS": '["encoder", "train"]'})
    (tmp_path / "checkpoints/finetune").mkdir(parents=True)
    (tmp_path / "checkpoints/finetune/metrics.json").write_text("{}")
    assert container.main([], env) == 1
    first = (tmp_path / "output" / "failure").read_text().splitlines()[0]
    assert first == (f"FileExistsError: {tmp_path}/checkpoints/finetune/metrics.json: this run's fine-tune has "
                     "finished; use a new run_name (geossl sagemaker local: or a new --root) to train again "
                     "(nothing was overwritten)")
