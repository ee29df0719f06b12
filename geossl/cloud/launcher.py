"""Build and send a SageMaker training job (SDK v3 ``ModelTrainer``) that runs ``geossl pretrain``.

The SDK is an optional extra, imported only here and only when a job is built, so the rest of geossl
(and the container, which never needs it) stays light. Everything that can be checked before money
is spent is checked first: names, limits, the training config itself, and that the S3 data prefix
really holds images. ``dry_run`` builds the exact CreateTrainingJob request with every AWS call
answered locally, so it prints what would be sent and sends nothing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from botocore.exceptions import ClientError

from geossl.cloud.job_config import (
    ENCODER_CHANNEL,
    AwsSettings,
    ConfigError,
    JobConfig,
    parse_s3_uri,
    resolve_aws,
    task_section,
    validate_job_name,
)
from geossl.config import load_config
from geossl.settings import REPO_ROOT

SDK_HINT = "pip install 'geossl[sagemaker]'"
ENTRY_SCRIPT = "sagemaker/train.py"
REQUIREMENTS = "sagemaker/requirements.txt"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"  # SageMaker's default; told to the container explicitly
IMAGE_EXTS = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2", ".vrt")
SHARDS_MARKER = "geossl_chips.json"  # a prefix of chips cut by geossl chips (data.kind: shards)
MAX_LIST_PAGES = 10  # the pre-launch data check looks at most at 10,000 keys

_NUM = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
# Regexes for the lines ``geossl pretrain`` prints on rank 0 (SageMaker scrapes the job's log stream):
#   geossl-metric step=120 epoch=1 loss=8.123456 lr=0.000123 img_per_s=456.7
#   geossl-metric epoch=1 knn_top1=0.5321
METRIC_DEFINITIONS: list[tuple[str, str]] = [
    ("train:loss", rf"geossl-metric step=\d+ epoch=\d+ loss={_NUM}"),
    ("train:lr", rf"geossl-metric step=\d+ .* lr={_NUM}"),
    ("train:img_per_s", rf"geossl-metric step=\d+ .* img_per_s={_NUM}"),
    ("train:step", r"geossl-metric step=([0-9]+) "),
    ("train:epoch", r"geossl-metric step=\d+ epoch=([0-9]+) "),
    ("val:knn_top1", rf"geossl-metric epoch=\d+ knn_top1={_NUM}"),
]


class SageMakerSDKMissing(RuntimeError):
    """The optional SageMaker SDK is not installed."""


def sagemaker_sdk() -> SimpleNamespace:
    """Import the SDK pieces lazily; a missing SDK is a one-line install hint, not a traceback."""
    try:
        configs = importlib.import_module("sagemaker.core.training.configs")
        return SimpleNamespace(
            configs=configs,
            image_uris=importlib.import_module("sagemaker.core.image_uris"),
            Session=importlib.import_module("sagemaker.core.helper.session_helper").Session,
            ModelTrainer=importlib.import_module("sagemaker.train").ModelTrainer,
            Torchrun=importlib.import_module("sagemaker.train.distributed").Torchrun,
        )
    except ImportError as exc:
        raise SageMakerSDKMissing(f"the SageMaker SDK (v3) is not installed ({exc}); {SDK_HINT}") from None


@dataclass
class LaunchResult:
    job_name: str
    run_name: str
    checkpoint_uri: str
    output_uri: str
    request: dict[str, Any] | None = None  # the CreateTrainingJob request (dry run: what would be sent)
    status: str | None = None
    arn: str | None = None
    uploads: list[str] = field(default_factory=list)  # dry run: objects that would be uploaded


def run_uri(aws: AwsSettings, run_name: str, *parts: str) -> str:
    """s3://bucket/prefix/run_name/parts... : everything of one run lives under one prefix."""
    return "/".join(["s3:/", aws.bucket, *([aws.prefix] if aws.prefix else []), run_name, *parts])


def checkpoint_uri(aws: AwsSettings, run_name: str) -> str:
    """Derived from the run name, never the job name: a new job of the same run resumes from here."""
    return run_uri(aws, run_name, "checkpoints")


def job_name_for(run_name: str, now: _dt.datetime | None = None) -> str:
    """``<run>-YYYYmmddHHMMSS``, the form the SDK gives ``base_job_name``; validated like SageMaker does."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d%H%M%S")
    name = f"{run_name}-{stamp}"
    validate_job_name(name)
    return name


def image_uri(cfg: JobConfig, region: str) -> str:
    """The AWS PyTorch training image for the version, region and instance type (no network call)."""
    if cfg.image.uri:
        return cfg.image.uri
    sdk = sagemaker_sdk()
    try:
        return sdk.image_uris.retrieve(
            framework="pytorch",
            region=region,
            version=cfg.image.framework_version,
            py_version=cfg.image.py_version,
            instance_type=cfg.compute.instance_type,
            image_scope="training",
        )
    except ValueError as exc:
        raise ConfigError(f"image.framework_version/py_version/aws.region: {exc}") from None


def resolve_training_config(cfg: JobConfig, source_root: Path) -> Path:
    """Find the training config (cwd first, then the source checkout) and validate it with its overrides.

    A typo in the training config found here costs nothing; found in the container it costs an instance.
    """
    section = task_section(cfg)
    path = Path(section.config).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, source_root / path]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(f"{cfg.task}.config: training config {section.config!r} not found (looked in "
                          f"{', '.join(str(p.parent) for p in candidates)})")
    if cfg.task == "finetune":
        from geossl.finetune.config import load_finetune_config

        load_finetune_config(found, section.overrides)
    else:
        load_config(found, section.overrides)
    return found.resolve()


def stage_source(source_root: Path, training_config: Path | None, dest: Path) -> str:
    """Copy exactly what the container needs (package, configs, the ``sagemaker/`` entry points) into ``dest``.

    Returns the training config's path inside the staged tree (what the ``config`` hyperparameter says;
    "" for a Processing job, which has none).
    """
    entry = source_root / ENTRY_SCRIPT
    if not entry.is_file():
        raise FileNotFoundError(f"{entry}: not found; launching needs a geossl source checkout")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".DS_Store")
    shutil.copytree(source_root / "geossl", dest / "geossl", ignore=ignore)
    if (source_root / "configs").is_dir():
        shutil.copytree(source_root / "configs", dest / "configs", ignore=ignore)
    shutil.copytree(source_root / "sagemaker", dest / "sagemaker", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (source_root / name).is_file():
            shutil.copy2(source_root / name, dest / name)
    if training_config is None:
        return ""
    try:
        return training_config.relative_to(source_root.resolve()).as_posix()
    except ValueError:  # a config outside the checkout travels with the code
        rel = f"configs/job/{training_config.name}"
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(training_config, dest / rel)
        return rel


def hyperparameters(cfg: JobConfig, config_rel: str) -> dict[str, Any]:
    """What the container's entry point reads (SM_HPS / ``--key value``): config file + overrides."""
    hps: dict[str, Any] = {"config": config_rel, "overrides": list(task_section(cfg).overrides)}
    if cfg.task != "pretrain":
        hps["task"] = cfg.task
    if cfg.input.mode == "Direct":
        hps["data"] = cfg.input.s3_uri
    else:
        hps["channel"] = cfg.input.channel
    return hps


def check_input_prefix(s3_client: Any, uri: str) -> int:
    """Fail before launching when the data prefix is missing, empty or holds neither images nor chips (shards
    of ``geossl chips``); returns the images (or chip descriptions) seen."""
    bucket, prefix = parse_s3_uri(uri, "input.s3_uri")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    seen = images = 0
    try:
        pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page_no, page in enumerate(pages):
            for obj in page.get("Contents", []):
                seen += 1
                images += obj["Key"].lower().endswith(IMAGE_EXTS) or obj["Key"].endswith(SHARDS_MARKER)
            if images or page_no + 1 >= MAX_LIST_PAGES:
                break
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise ConfigError(f"input.s3_uri {uri}: bucket '{bucket}' does not exist") from None
        raise ConfigError(f"input.s3_uri {uri}: cannot list the prefix ({code or exc})") from None
    if seen == 0:
        raise ConfigError(f"input.s3_uri {uri}: no objects under this prefix (upload the patches or scenes first)")
    if images == 0:
        raise ConfigError(
            f"input.s3_uri {uri}: no images ({', '.join(IMAGE_EXTS)}) or chips ({SHARDS_MARKER}, from geossl "
            f"chips) among the first {seen} objects under this prefix"
        )
    return images


def build_trainer(cfg: JobConfig, aws: AwsSettings, staged: Path, config_rel: str, boto_session: Any) -> tuple[Any, list]:
    """The ``ModelTrainer`` and its input channels; builds objects only, sends nothing."""
    sdk = sagemaker_sdk()
    k, compute = sdk.configs, cfg.compute
    session = sdk.Session(boto_session=boto_session, default_bucket=aws.bucket, default_bucket_prefix=aws.prefix or None)
    wait: dict[str, int] = {}
    if compute.spot:
        assert compute.max_wait_minutes is not None  # the job config requires it with compute.spot
        wait = {"max_wait_time_in_seconds": compute.max_wait_minutes * 60}
    environment = {"PYTHONUNBUFFERED": "1", "GEOSSL_CHECKPOINT_DIR": CHECKPOINT_LOCAL_PATH,
                   "GEOSSL_RUN_NAME": cfg.run_name, **cfg.environment}
    trainer = sdk.ModelTrainer(
        sagemaker_session=session,
        role=aws.role,
        base_job_name=cfg.run_name,
        training_image=image_uri(cfg, aws.region),
        source_code=k.SourceCode(source_dir=str(staged), entry_script=ENTRY_SCRIPT, requirements=REQUIREMENTS,
                                 ignore_patterns=["__pycache__", "*.pyc", ".DS_Store"]),
        # fine-tuning runs as one process (one GPU); pretraining as torchrun over every GPU of every node
        distributed=sdk.Torchrun(process_count_per_node=1 if cfg.task == "finetune" else compute.processes_per_node),
        compute=k.Compute(instance_type=compute.instance_type, instance_count=compute.instance_count,
                          volume_size_in_gb=compute.volume_size_gb, enable_managed_spot_training=compute.spot),
        stopping_condition=k.StoppingCondition(max_runtime_in_seconds=compute.max_run_minutes * 60, **wait),
        checkpoint_config=k.CheckpointConfig(s3_uri=checkpoint_uri(aws, cfg.run_name), local_path=CHECKPOINT_LOCAL_PATH),
        output_data_config=k.OutputDataConfig(s3_output_path=run_uri(aws, cfg.run_name, "output")),
        hyperparameters=hyperparameters(cfg, config_rel),
        environment=environment,
        tags=[k.Tag(key=key, value=value) for key, value in {"geossl:run": cfg.run_name, **cfg.tags}.items()],
    ).with_metric_definitions([k.MetricDefinition(name=n, regex=r) for n, r in METRIC_DEFINITIONS])
    inputs: list = []
    if cfg.input.mode != "Direct":  # a Channel, not InputData: InputData from a string is always File mode
        source = k.S3DataSource(s3_data_type="S3Prefix", s3_uri=cfg.input.s3_uri,
                                s3_data_distribution_type="FullyReplicated")
        inputs.append(k.Channel(channel_name=cfg.input.channel, input_mode=cfg.input.mode,
                                data_source=k.DataSource(s3_data_source=source)))
    if cfg.task == "finetune":  # the encoder folder to start from, copied in whole before the job starts
        source = k.S3DataSource(s3_data_type="S3Prefix", s3_uri=cfg.finetune.encoder_s3_uri,
                                s3_data_distribution_type="FullyReplicated")
        inputs.append(k.Channel(channel_name=ENCODER_CHANNEL, input_mode="File",
                                data_source=k.DataSource(s3_data_source=source)))
    return trainer, inputs


class OfflineAws:
    """Answers every AWS call locally (dry run): records what would be sent, sends nothing."""

    class _Http:
        status_code = 200
        headers: dict[str, str] = {}
        raw = None
        content = b""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.calls: list[str] = []
        self.uploads: list[str] = []
        self.requests: dict[str, dict] = {}  # API parameters of the operations asked for (record_request)

    def record_upload(self, params: dict, **_: Any) -> None:
        self.uploads.append(f"s3://{params.get('Bucket')}/{params.get('Key')}")

    def record_request(self, params: dict, model: Any, **_: Any) -> None:
        self.requests[model.name] = dict(params)

    def __call__(self, model: Any, params: dict, **_: Any) -> tuple[Any, dict]:
        op = model.name
        self.calls.append(op)
        if op == "ListBuckets":
            return self._Http(), {"Buckets": [{"Name": self.bucket, "CreationDate": _dt.datetime.now(_dt.UTC)}]}
        if op == "GetCallerIdentity":
            return self._Http(), {"Account": "000000000000", "Arn": "arn:aws:iam::000000000000:user/dry-run"}
        return self._Http(), {}


@contextlib.contextmanager
def environment_variable(name: str, value: str) -> Any:
    """Set one environment variable for the block, restoring what was there before."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def launch(
    cfg: JobConfig,
    *,
    dry_run: bool = False,
    wait: bool = False,
    boto_session: Any = None,
    source_root: Path | None = None,
    env: dict[str, str] | None = None,
) -> LaunchResult:
    """Validate, stage the code and create the training job (or, with ``dry_run``, only build the request)."""
    source_root = Path(source_root or REPO_ROOT)
    aws = resolve_aws(cfg, env)
    if cfg.input.s3_uri is None:
        raise ConfigError("input.s3_uri is not set: give the S3 prefix of the training data (s3://bucket/prefix/)")
    if cfg.task == "finetune" and cfg.finetune.encoder_s3_uri is None:
        raise ConfigError("finetune.encoder_s3_uri is not set: give the S3 prefix of the encoder folder to "
                          "fine-tune (s3://bucket/prefix/encoder/)")
    training_config = resolve_training_config(cfg, source_root)
    job_name_for(cfg.run_name)  # fail on a bad name before any work
    image_uri(cfg, aws.region)  # fail on an unknown version/region before any work
    import boto3  # after the cheap checks: a bad config never needs AWS libraries

    if boto_session is None:
        # A dry run sends nothing, so it needs no credentials either: placeholder keys keep boto3 from
        # looking for real ones (profile files, the EC2 instance metadata service) at all.
        keys = {"aws_access_key_id": "DRYRUN", "aws_secret_access_key": "DRYRUN"} if dry_run else {}
        boto_session = boto3.Session(region_name=aws.region, **keys)
    offline = None
    if dry_run:
        offline = OfflineAws(aws.bucket)
        boto_session.events.register("before-call.*.*", offline)
        boto_session.events.register("provide-client-params.s3.PutObject", offline.record_upload)
    elif cfg.input.check:
        check_input_prefix(boto_session.client("s3"), cfg.input.s3_uri)
    with tempfile.TemporaryDirectory(prefix="geossl-sagemaker-src-") as tmp:
        staged = Path(tmp) / "source"
        config_rel = stage_source(source_root, training_config, staged)
        # The SDK checks the role's IAM policies and trust (GetRole, SimulatePrincipalPolicy) when the trainer
        # is built; a dry run asks AWS nothing, so that check is left to the real launch.
        with environment_variable("SAGEMAKER_VALIDATE_ROLE", "false") if dry_run else contextlib.nullcontext():
            trainer, inputs = build_trainer(cfg, aws, staged, config_rel, boto_session)
        result = LaunchResult(job_name="", run_name=cfg.run_name, checkpoint_uri=checkpoint_uri(aws, cfg.run_name),
                              output_uri=run_uri(aws, cfg.run_name, "output"))
        if dry_run:
            # The SDK's own request builder (what train() sends), run with every AWS call answered locally.
            assert offline is not None  # registered above for every dry run
            try:
                request = trainer._create_training_job_args(input_data_config=inputs, boto3=True)
            finally:
                boto_session.events.unregister("before-call.*.*", offline)
                boto_session.events.unregister("provide-client-params.s3.PutObject", offline.record_upload)
            result.request = json.loads(json.dumps(request, default=str))
            result.job_name = request["TrainingJobName"]
            result.uploads = sorted(offline.uploads) if offline else []
            result.status = "DryRun"
            return result
        _train(trainer, inputs, wait, result)
        job = trainer._latest_training_job
        result.job_name = job.training_job_name
        result.arn = getattr(job, "training_job_arn", None)
        result.status = str(getattr(job, "training_job_status", None) or "InProgress")
        return result


def _train(trainer: Any, inputs: list, wait: bool, result: LaunchResult) -> None:
    """``ModelTrainer.train`` with AWS refusals and failed jobs turned into one readable line."""
    from boto3.exceptions import S3UploadFailedError

    waiter_error = importlib.import_module("sagemaker.core.utils.exceptions").WaiterError
    try:
        trainer.train(input_data_config=inputs, wait=wait, logs=wait)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise RuntimeError(f"AWS refused {exc.operation_name}: {err.get('Code')}: {err.get('Message')}") from None
    except S3UploadFailedError as exc:
        raise RuntimeError(f"uploading the code to s3 failed: {exc}") from None
    except waiter_error as exc:
        job = trainer._latest_training_job
        name = job.training_job_name if job is not None else "the job"
        raise RuntimeError(f"{name} did not complete: {exc}. Checkpoints stay in {result.checkpoint_uri}; "
                           f"launching again with run_name={result.run_name} resumes from them") from None


def print_summary(result: LaunchResult, region: str, out: Any = None) -> None:
    """One screen a user can act on: the job, where checkpoints go, how to watch it."""
    out = out or sys.stdout
    print(f"launched {result.job_name} (run {result.run_name}): {result.status}", file=out)
    print(f"  checkpoints: {result.checkpoint_uri}  (a new job with run_name={result.run_name} resumes from here)",
          file=out)
    print(f"  outputs:     {result.output_uri}/{result.job_name}/output/model.tar.gz", file=out)
    print(f"  watch:       aws sagemaker describe-training-job --region {region} --training-job-name {result.job_name}",
          file=out)
    print(f"  console:     https://{region}.console.aws.amazon.com/sagemaker/home?region={region}"
          f"#/jobs/{result.job_name}", file=out)
