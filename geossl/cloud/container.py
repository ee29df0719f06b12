"""The training container's side of the SageMaker contract, as plain functions (no SDK needed).

SageMaker hands a job its inputs as environment variables and files (``SM_CHANNEL_TRAIN``,
``SM_MODEL_DIR``, ``SM_HPS``, ``--key value`` arguments, a checkpoint folder it syncs to S3) and
reads back a model folder, metric lines in the log and a failure file. This module maps that
contract onto ``geossl.dino.train.pretrain`` (or, with the ``task=finetune`` hyperparameter,
``geossl.finetune.run.run_finetune``) and nothing else, so ``sagemaker/train.py`` stays a few lines and
every mapping is unit-testable here. ``/opt/ml`` appears only as the fallback of an
environment variable.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geossl.io import atomic_write_text, read_json

OPT_ML = "/opt/ml"
RESERVED_HPS = ("config", "overrides", "channel", "data", "resume", "task")
ENCODER_CHANNEL_VAR = "SM_CHANNEL_ENCODER"  # fine-tuning: the encoder folder (job_config.ENCODER_CHANNEL)
CHANNEL_VAR_RE = re.compile(r"\$\{?(SM_CHANNEL_[A-Z0-9_]+)\}?")
EXIT_INTERRUPTED = 143  # 128 + SIGTERM, as ``geossl pretrain``
FAILURE_FIRST_LINE_MAX = 700  # SageMaker keeps the first 1024 characters as FailureReason
FAILURE_MAX = 8192  # the rest (abridged traceback) is for whoever opens the file
# How a job's user starts a new run, named in pretraining's refusals instead of `geossl pretrain`'s --run-dir:
# jobs of one run_name share checkpoints; `geossl sagemaker local` keeps a run's /opt/ml stand-in in --root.
NEW_RUN = "a new run_name (geossl sagemaker local: or a new --root)"
MODEL_META = "geossl.json"  # in the model dir: written by a finished job only (an encoder or a land-cover model)


@dataclass
class ContainerPaths:
    """Where this job reads and writes, from the SM_* variables (defaults: SageMaker's layout)."""

    model_dir: Path
    checkpoint_dir: Path
    output_data_dir: Path
    failure_file: Path
    source_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str], source_dir: Path | None = None) -> ContainerPaths:
        output_dir = env.get("SM_OUTPUT_DIR", f"{OPT_ML}/output")
        return cls(
            model_dir=Path(env.get("SM_MODEL_DIR", f"{OPT_ML}/model")),
            checkpoint_dir=Path(env.get("GEOSSL_CHECKPOINT_DIR", f"{OPT_ML}/checkpoints")),
            output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", f"{output_dir}/data")),
            failure_file=Path(env.get("SM_OUTPUT_FAILURE", f"{output_dir}/failure")),
            source_dir=Path(env.get("SM_SOURCE_DIR") or source_dir or Path.cwd()),
        )


@dataclass
class JobSpec:
    """What ``pretrain`` is called with, derived from hyperparameters and environment."""

    config_path: Path | None
    overrides: list[str] = field(default_factory=list)
    resume: str = "auto"
    notes: list[str] = field(default_factory=list)  # how inputs were mapped, printed on rank 0


def _decode(value: Any) -> Any:
    """JSON-decode a hyperparameter string when it is JSON (the SDK's own rule), else keep the string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parse_cli_hyperparameters(argv: list[str]) -> dict[str, Any]:
    """``--key value`` pairs, as the SDK's drivers append them to the entry point's command line."""
    hps: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ValueError(f"hyperparameter arguments: expected --key value, got {arg!r}")
        key, eq, inline = arg[2:].partition("=")
        if eq:
            hps[key] = _decode(inline)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            hps[key] = _decode(argv[i + 1])
            i += 2
        else:
            raise ValueError(f"hyperparameter '--{key}': missing value")
    return hps


def read_hyperparameters(argv: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    """SM_HPS (JSON) then ``--key value`` arguments; both carry the same values on SageMaker."""
    hps: dict[str, Any] = {}
    raw = env.get("SM_HPS")
    if raw:
        try:
            decoded = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"SM_HPS: not valid JSON ({exc})") from None
        if not isinstance(decoded, dict):
            raise ValueError("SM_HPS: expected a JSON object of hyperparameters")
        hps.update({k: _decode(v) for k, v in decoded.items()})
    hps.update(parse_cli_hyperparameters(argv))
    return hps


def _yaml_value(value: Any) -> str:
    """A value as override text (``key=<this>``), parsed back as YAML by geossl.config."""
    if isinstance(value, str):
        return value
    return json.dumps(value)  # numbers, booleans, null, lists, mappings: JSON is YAML


def hyperparameter_overrides(hps: Mapping[str, Any]) -> list[str]:
    """``overrides`` (a list, a JSON list or a shell-like string) plus dotted keys, in that order."""
    raw = hps.get("overrides") or []
    if isinstance(raw, str):
        raw = shlex.split(raw)
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError(f"hyperparameter 'overrides': expected a list of key=value strings, got {raw!r}")
    out = list(raw)
    for key, value in hps.items():
        if key in RESERVED_HPS or key.startswith("sagemaker_") or key == "mp_parameters":
            continue
        if "." not in key:
            raise ValueError(
                f"unknown hyperparameter '{key}' (valid: {', '.join(RESERVED_HPS)}, "
                "or a dotted training key such as optim.epochs)"
            )
        out.append(f"{key}={_yaml_value(value)}")
    return out


def _has_files(folder: Path) -> bool:
    """True at the first file found; never walks a whole (possibly streamed) channel."""
    for _, _, files in os.walk(folder, followlinks=True):
        if files:
            return True
    return False


def data_overrides(hps: Mapping[str, Any], env: Mapping[str, str]) -> tuple[list[str], str]:
    """The training data: an s3:// ``data`` hyperparameter, else the channel folder SageMaker mounted."""
    if hps.get("data"):
        return [f"data.paths={json.dumps([str(hps['data'])])}"], f"data from hyperparameter: {hps['data']}"
    folder, note = channel_folder(hps, env)
    return ([f"data.paths={json.dumps([folder])}"] if folder else []), note


def channel_folder(hps: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str | None, str]:
    """The folder SageMaker mounted for the ``channel`` hyperparameter (default ``train``), checked non-empty."""
    channel = str(hps.get("channel") or "train")
    var = f"SM_CHANNEL_{channel.upper()}"
    folder = env.get(var)
    if folder is None:
        if "channel" in hps:
            raise ValueError(f"channel '{channel}': {var} is not set (channels: {env.get('SM_CHANNELS', 'none')})")
        return None, "no train channel: data.paths from the training config"
    if not Path(folder).is_dir() or not _has_files(Path(folder)):
        raise ValueError(f"channel '{channel}' ({var}={folder}) is empty: the S3 prefix holds no files")
    return folder, f"data from channel '{channel}': {folder}"


def expand_channel_vars(text: str, env: Mapping[str, str]) -> str:
    """``eval.knn_data=$SM_CHANNEL_TRAIN``: an override may name a channel's folder, known only in the job."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ValueError(f"override '{text}': ${name} is not set (channels: {env.get('SM_CHANNELS', 'none')})")
        return env[name]

    return CHANNEL_VAR_RE.sub(sub, text)


def distributed_overrides(env: Mapping[str, str], cuda_available: bool) -> list[str]:
    """Devices and nodes from torchrun's variables (Lightning needs devices x num_nodes == WORLD_SIZE)."""
    out = [] if cuda_available else ["trainer.accelerator=cpu"]
    if "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_WORLD_SIZE", world))
        if local < 1 or world % local:
            raise ValueError(f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local}")
        out += [f"trainer.devices={local}", f"trainer.num_nodes={world // local}"]
    elif not cuda_available:
        out += ["trainer.devices=1", "trainer.num_nodes=1"]
    return out


def _config_path(hps: Mapping[str, Any], paths: ContainerPaths) -> Path | None:
    """The ``config`` hyperparameter as a file in the uploaded source checkout (None: built-in defaults)."""
    if not hps.get("config"):
        return None
    config_path = Path(str(hps["config"]))
    if not config_path.is_absolute():
        config_path = paths.source_dir / config_path
    if not config_path.is_file():
        raise FileNotFoundError(f"hyperparameter 'config': {config_path} not found in the source dir")
    return config_path


def resolve_job(hps: Mapping[str, Any], env: Mapping[str, str], paths: ContainerPaths, cuda_available: bool) -> JobSpec:
    """Hyperparameters + environment -> config file, overrides (config < data < user < topology), resume."""
    config_path = _config_path(hps, paths)
    data, note = data_overrides(hps, env)
    user = [expand_channel_vars(text, env) for text in hyperparameter_overrides(hps)]
    overrides = [*data, *user, *distributed_overrides(env, cuda_available)]
    return JobSpec(config_path, overrides, str(hps.get("resume") or "auto"), [note])


def failure_reason(exc: BaseException, env: Mapping[str, str]) -> str:
    """Readable first: the error on line one, where it happened, then an abridged traceback."""
    message = " ".join(str(exc).split()) or "(no message)"
    first = f"{type(exc).__name__}: {message}"
    if len(first) > FAILURE_FIRST_LINE_MAX:
        first = first[: FAILURE_FIRST_LINE_MAX - 3] + "..."
    lines = [first]
    if isinstance(exc, ModuleNotFoundError):
        lines.append("hint: a package is missing in the image; add it to sagemaker/requirements.txt")
    where = f"rank {env.get('RANK', '0')} on {env.get('SM_CURRENT_HOST', 'this host')}"
    if env.get("TRAINING_JOB_NAME"):
        where += f", job {env['TRAINING_JOB_NAME']}"
    lines.append(f"where: {where}")
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3)
    lines += ["", "traceback (last frames):", *("".join(frames).rstrip().splitlines())]
    return ("\n".join(lines) + "\n")[:FAILURE_MAX]


def write_failure(path: Path, text: str) -> None:
    """Atomic, and the first failure wins: with several ranks the first error is usually the cause."""
    if not path.exists():
        atomic_write_text(path, text)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run(hps: Mapping[str, Any], env: Mapping[str, str], paths: ContainerPaths) -> int:
    """Load the config, call ``pretrain`` (or ``finetune``) with the container's folders, return the exit code."""
    from geossl.config import load_config

    task = str(hps.get("task") or "pretrain")
    if task == "finetune":
        return run_finetune_job(hps, env, paths)
    if task != "pretrain":
        raise ValueError(f"hyperparameter 'task': expected pretrain or finetune, got {task!r}")
    rank0 = env.get("RANK", "0") == "0"
    spec = resolve_job(hps, env, paths, _cuda_available())
    cfg = load_config(spec.config_path, spec.overrides)  # bad input fails here, before the heavy imports
    from geossl.dino.train import pretrain

    if rank0:
        print(f"geossl-sagemaker: config={spec.config_path} overrides={spec.overrides}", flush=True)
        print(f"geossl-sagemaker: {spec.notes[0]}; checkpoints={paths.checkpoint_dir} (resume={spec.resume}); "
              f"model={paths.model_dir}", flush=True)
    summary = pretrain(cfg, paths.output_data_dir / "run", checkpoint_dir=paths.checkpoint_dir,
                       export_dir=paths.model_dir, resume=spec.resume, new_run=NEW_RUN)
    status = summary.get("status")
    if rank0:
        print(f"geossl-sagemaker: {status}: steps={summary.get('steps')} epochs={summary.get('epochs')} "
              f"encoder={summary.get('encoder_dir')}", flush=True)
    if status == "finished":
        return 0
    if status == "interrupted":
        if rank0:
            print("geossl-sagemaker: interrupted (SIGTERM); a checkpoint was saved, the next job of this run "
                  "resumes from it", flush=True)
        return EXIT_INTERRUPTED
    raise RuntimeError(f"pretrain returned status {status!r}")


def run_finetune_job(hps: Mapping[str, Any], env: Mapping[str, str], paths: ContainerPaths) -> int:
    """``geossl finetune`` in the container: labelled patches from the train channel, the start from the
    ``encoder`` channel. The run folder lives in the checkpoint folder (synced to S3), so a restarted spot
    job resumes it bitwise; the land-cover model folder goes to the model dir, the reports to output data."""
    from geossl.finetune.config import load_finetune_config
    from geossl.finetune.run import OUTPUTS, FinetuneOptions, run_finetune

    config_path = _config_path(hps, paths)
    folder, note = channel_folder(hps, env)
    if folder is None:
        raise ValueError("fine-tuning needs its labelled patches in a channel (input.channel, default 'train')")
    encoder = env.get(ENCODER_CHANNEL_VAR)
    if not encoder or not Path(encoder).is_dir():
        raise ValueError(f"fine-tuning needs the encoder channel: {ENCODER_CHANNEL_VAR} is not set or not a folder "
                         "(set finetune.encoder_s3_uri in the job config)")
    user = [expand_channel_vars(text, env) for text in hyperparameter_overrides(hps)]
    cfg = load_finetune_config(config_path, [*([] if _cuda_available() else ["trainer.accelerator=cpu"]), *user])
    out = paths.checkpoint_dir / "finetune"
    done = [out / name for name in OUTPUTS if (out / name).exists()]
    if done:  # before run_finetune, whose refusal names --overwrite / --out, options a job does not have
        raise FileExistsError(f"{done[0]}: this run's fine-tune has finished; use {NEW_RUN} to train again "
                              "(nothing was overwritten)")
    print(f"geossl-sagemaker: finetune config={config_path} overrides={user}; {note}; encoder={encoder}; "
          f"run folder={out}", flush=True)
    metrics = run_finetune(FinetuneOptions(encoder=encoder, out=out, cfg=cfg, data=Path(folder), baselines="none"))
    if metrics.get("status") == "interrupted":
        print("geossl-sagemaker: interrupted (SIGTERM); the run folder is in the checkpoints, the next job of "
              "this run resumes it", flush=True)
        return EXIT_INTERRUPTED
    shutil.copytree(out / "model", paths.model_dir, dirs_exist_ok=True)
    paths.output_data_dir.mkdir(parents=True, exist_ok=True)
    for report in out.iterdir():
        if report.is_file() and report.suffix in (".json", ".csv", ".png", ".yaml"):
            shutil.copy2(report, paths.output_data_dir / report.name)
    print(f"geossl-sagemaker: finished: test top-1 {metrics.get('top1')} model={paths.model_dir}", flush=True)
    return 0


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None, source_dir: Path | None = None) -> int:
    """Entry point: any failure becomes a readable failure file and a non-zero exit, never a silent one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ if env is None else env)
    paths = ContainerPaths.from_env(env, source_dir)
    try:
        return run(read_hyperparameters(argv, env), env, paths)
    except Exception as exc:
        reason = failure_reason(exc, env)
        try:
            write_failure(paths.failure_file, reason)
        except OSError as write_exc:
            print(f"geossl-sagemaker: cannot write {paths.failure_file}: {write_exc}", file=sys.stderr)
        print(f"geossl-sagemaker: failed: {reason.splitlines()[0]}", file=sys.stderr, flush=True)
        traceback.print_exc()
        return 1


def hyperparameters_to_args(hps: Mapping[str, Any]) -> list[str]:
    """``--key value`` as the SDK's drivers build them (strings verbatim, everything else JSON)."""
    args: list[str] = []
    for key, value in hps.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def finished_local_job(root: Path) -> Path | None:
    """The file showing that the /opt/ml stand-in ``root`` of ``geossl sagemaker local`` holds a finished job,
    else None.

    Its model dir, checkpoints and outputs persist between runs (so running again resumes an interrupted
    job, like a spot restart); a finished job cannot be resumed, and running the entry point on it again
    died with a traceback naming ``--export-dir``, an option ``sagemaker local`` does not have. Checked before
    anything starts: the model dir holds a finished job's encoder or model; a pretraining's summary says
    finished; a fine-tune's run folder (in the checkpoints) holds its metrics.
    """
    summary = root / "output" / "data" / "run" / "summary.json"
    finished_summary = summary.is_file() and read_json(summary).get("status") == "finished"
    candidates = [(root / "model" / MODEL_META, True), (summary, finished_summary),
                  (root / "checkpoints" / "finetune" / "metrics.json", True)]
    return next((path for path, finished in candidates if finished and path.is_file()), None)


def prepare_local_tree(root: Path, hps: Mapping[str, Any], channel: str | None, data_dir: Path | None,
                       source_dir: Path, job_name: str, num_gpus: int = 0) -> dict[str, str]:
    """An /opt/ml-like tree under ``root`` and the SM_* environment SageMaker would give the entry point.

    Checkpoints persist in ``root/checkpoints`` (like the S3 checkpoint URI), so running again resumes.
    """
    config_dir, data_root = root / "input" / "config", root / "input" / "data"
    for sub in (config_dir, data_root, root / "model", root / "output" / "data", root / "checkpoints"):
        sub.mkdir(parents=True, exist_ok=True)
    (root / "output" / "failure").unlink(missing_ok=True)  # a new attempt, like a fresh container
    channels: dict[str, Any] = {}
    env = {
        "SM_MODEL_DIR": str(root / "model"), "SM_INPUT_DIR": str(root / "input"),
        "SM_INPUT_DATA_DIR": str(data_root), "SM_INPUT_CONFIG_DIR": str(config_dir),
        "SM_OUTPUT_DIR": str(root / "output"), "SM_OUTPUT_FAILURE": str(root / "output" / "failure"),
        "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"), "GEOSSL_CHECKPOINT_DIR": str(root / "checkpoints"),
        "SM_SOURCE_DIR": str(source_dir), "SM_ENTRY_SCRIPT": "sagemaker/train.py",
        "SM_HOSTS": json.dumps(["algo-1"]), "SM_CURRENT_HOST": "algo-1", "SM_HOST_COUNT": "1",
        "SM_CURRENT_HOST_RANK": "0", "SM_MASTER_ADDR": "algo-1", "SM_MASTER_PORT": "7777",
        "SM_NUM_GPUS": str(num_gpus), "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_HPS": json.dumps(dict(hps)), "TRAINING_JOB_NAME": job_name, "PYTHONUNBUFFERED": "1",
    }
    if channel and data_dir is not None:
        link = data_root / channel
        if link.is_symlink() or link.is_file():
            link.unlink()
        if not link.exists():
            link.symlink_to(Path(data_dir).resolve(), target_is_directory=True)
        channels[channel] = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}
        env[f"SM_CHANNEL_{channel.upper()}"] = str(link)
    env["SM_CHANNELS"] = json.dumps(sorted(channels))
    atomic_write_text(config_dir / "hyperparameters.json",
                      json.dumps({k: v if isinstance(v, str) else json.dumps(v) for k, v in hps.items()}))
    atomic_write_text(config_dir / "inputdataconfig.json", json.dumps(channels))
    atomic_write_text(config_dir / "resourceconfig.json", json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "current_instance_type": "local",
         "network_interface_name": "lo"}))
    return env
