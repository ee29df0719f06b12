"""Typed configuration of a SageMaker training job (DINO pretraining or fine-tuning): YAML + ``key=value``
overrides, validated strictly.

One YAML describes *where and how* a run executes (account, instances, spot, data in S3); the
geossl training config it names says *what* is trained. Command-line overrides go to whichever of the
two owns the first key (``compute.instance_count=2`` here, ``optim.epochs=50`` to the training
config), so one command line can tune both. Every check that can fail before an instance is paid for
fails here, with the setting named.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from geossl.config import Config, ConfigError, apply_override, merge_into, parse_override, read_yaml_mapping
from geossl.data.s3 import split_s3_uri

# SageMaker: TrainingJobName ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$. The SDK appends "-YYYYmmddHHMMSS".
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
JOB_NAME_MAX = 63
TIMESTAMP_SUFFIX_LEN = len("-20250101000000")
RUN_NAME_MAX = JOB_NAME_MAX - TIMESTAMP_SUFFIX_LEN
# SageMaker accepts [A-Za-z0-9.-_]{1,64}; the SDK's container drivers export SM_CHANNEL_<NAME> as a
# shell variable, where '.' and '-' break the job, and reserve the channels below for themselves.
CHANNEL_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
RESERVED_CHANNELS = ("code", "sm_drivers", "recipe")
INPUT_MODES = ("File", "FastFile", "Direct")  # Direct: no channel, the job reads s3:// itself
ROLE_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

ENV_ROLE = "GEOSSL_SAGEMAKER_ROLE"
ENV_BUCKET = "GEOSSL_SAGEMAKER_BUCKET"


@dataclass
class AwsSection:
    region: str | None = None  # None: $AWS_REGION, then $AWS_DEFAULT_REGION
    role: str | None = None  # execution role ARN; None: $GEOSSL_SAGEMAKER_ROLE
    bucket: str | None = None  # code, outputs, checkpoints; None: $GEOSSL_SAGEMAKER_BUCKET
    prefix: str = "geossl"  # key prefix of everything this tool writes to the bucket


@dataclass
class ComputeSection:
    instance_type: str = "ml.g5.2xlarge"
    instance_count: int = 1
    processes_per_node: int | None = None  # None: one per GPU (torchrun)
    volume_size_gb: int = 100
    spot: bool = True  # managed spot: cheaper, may be interrupted (the job resumes from checkpoints)
    max_run_minutes: int = 24 * 60  # stopping condition: training time
    max_wait_minutes: int | None = 48 * 60  # spot only: training + waiting for capacity; > max_run


@dataclass
class ImageSection:
    framework_version: str = "2.7.1"  # the AWS PyTorch training image
    py_version: str = "py312"
    uri: str | None = None  # an explicit image URI wins over the two above


@dataclass
class InputSection:
    s3_uri: str | None = None  # s3://bucket/prefix/ holding patches or scenes
    channel: str = "train"
    mode: str = "FastFile"  # File (copy first) | FastFile (stream on demand) | Direct (s3:// paths)
    check: bool = True  # list the prefix before launching: no images, no job


@dataclass
class PretrainSection:
    # geossl training config, relative to the source checkout (or cwd). A shipped file: the GPU run the
    # defaults above describe, as configs/sagemaker_dino.yaml launches it.
    config: str = "configs/eurosat_vits8.yaml"
    overrides: list[str] = field(default_factory=list)  # key=value for the training config


@dataclass
class FinetuneSection:
    # geossl fine-tuning config (``geossl finetune --config``), relative to the source checkout (or cwd)
    config: str = "configs/finetune_gpu.yaml"
    overrides: list[str] = field(default_factory=list)  # key=value for the fine-tuning config
    # s3:// prefix of the encoder (or land-cover model) folder to start from: the job's "encoder" channel
    encoder_s3_uri: str | None = None


TASKS = ("pretrain", "finetune")
ENCODER_CHANNEL = "encoder"


@dataclass
class JobConfig:
    run_name: str = "geossl-dino"  # one run = every job that shares its checkpoints (spot restarts)
    task: str = "pretrain"  # pretrain (geossl pretrain, section pretrain) | finetune (geossl finetune, section finetune)
    aws: AwsSection = field(default_factory=AwsSection)
    compute: ComputeSection = field(default_factory=ComputeSection)
    image: ImageSection = field(default_factory=ImageSection)
    input: InputSection = field(default_factory=InputSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    tags: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)  # extra container environment
    source: str = "<defaults>"  # where this config came from, for messages (not a YAML key)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


def _job_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(JobConfig)} - {"source"}


def _training_keys() -> set[str]:
    """First keys of either training config; the task decides which of the two receives them."""
    from geossl.finetune.config import FinetuneConfig

    return {f.name for f in dataclasses.fields(Config)} | {f.name for f in dataclasses.fields(FinetuneConfig)}


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Route each ``key=value`` to the job config or the training config by its first key."""
    job, training = [], []
    job_keys, training_keys = _job_keys(), _training_keys()
    for text in overrides:
        keys, _ = parse_override(text)
        if keys[0] in job_keys:
            job.append(text)
        elif keys[0] in training_keys:
            training.append(text)
        else:
            raise ConfigError(
                f"override '{text}': unknown key '{keys[0]}' (job keys: {', '.join(sorted(job_keys))}; "
                f"training keys: {', '.join(sorted(training_keys))})"
            )
    return job, training


def load_job_config(path: str | Path | None, overrides: list[str] | None = None) -> JobConfig:
    """Load the job YAML and apply overrides; training-config overrides join the task's section
    (``pretrain.overrides`` or ``finetune.overrides``)."""
    cfg = JobConfig()
    if path is not None:
        path = Path(path)
        raw = read_yaml_mapping(path, "job config")
        if "source" in raw:
            raise ConfigError(f"{path}: unknown key 'source'")
        merge_into(cfg, raw, "", str(path))
        cfg.source = str(path)
    job_overrides, training_overrides = split_overrides(list(overrides or []))
    for text in job_overrides:
        keys, value = parse_override(text)
        if isinstance(value, int | float) and not isinstance(value, bool) and _wants_str(cfg, keys):
            value = text.split("=", 1)[1].strip()  # image.framework_version=2.10 means "2.10", not 2.1
        apply_override(cfg, keys, value, text)
    section = task_section(cfg) if cfg.task in TASKS else cfg.pretrain
    section.overrides = [*section.overrides, *training_overrides]
    validate_job_config(cfg)
    return cfg


def _wants_str(cfg: JobConfig, keys: list[str]) -> bool:
    """True when ``keys`` names a string setting (so a number typed on the command line stays text)."""
    obj: object = cfg
    for key in keys[:-1]:
        obj = getattr(obj, key, None)
        if not dataclasses.is_dataclass(obj):
            return False
    hint = typing.get_type_hints(type(obj)).get(keys[-1])
    return hint is not None and str in typing.get_args(hint) + (hint,)


def validate_job_config(cfg: JobConfig) -> None:
    """Checks that need no AWS access: names, modes, limits, URIs."""
    src = cfg.source
    validate_run_name(cfg.run_name, src)
    validate_prefix(cfg.aws.prefix, src)
    c = cfg.compute
    if c.instance_count < 1:
        raise ConfigError(f"{src}: key 'compute.instance_count' must be >= 1, got {c.instance_count}")
    if not c.instance_type.startswith("ml."):
        raise ConfigError(f"{src}: key 'compute.instance_type': expected an ml.* type, got {c.instance_type!r}")
    if c.processes_per_node is not None and c.processes_per_node < 1:
        raise ConfigError(f"{src}: key 'compute.processes_per_node' must be >= 1 or null")
    if c.max_run_minutes < 1:
        raise ConfigError(f"{src}: key 'compute.max_run_minutes' must be >= 1")
    if c.spot:
        if c.max_wait_minutes is None:
            raise ConfigError(f"{src}: key 'compute.max_wait_minutes' is required with compute.spot=true")
        if c.max_wait_minutes <= c.max_run_minutes:
            raise ConfigError(
                f"{src}: key 'compute.max_wait_minutes' ({c.max_wait_minutes}) must be above "
                f"compute.max_run_minutes ({c.max_run_minutes}): spot wait time includes the training time"
            )
    i = cfg.input
    if i.mode not in INPUT_MODES:
        raise ConfigError(f"{src}: key 'input.mode': expected one of {', '.join(INPUT_MODES)}, got {i.mode!r}")
    validate_channel(i.channel, src)
    if i.s3_uri is not None:
        parse_s3_uri(i.s3_uri, "input.s3_uri")
    if cfg.task not in TASKS:
        raise ConfigError(f"{src}: key 'task': expected one of {', '.join(TASKS)}, got {cfg.task!r}")
    if not task_section(cfg).config:
        raise ConfigError(f"{src}: key '{cfg.task}.config' must name a geossl {cfg.task} config")
    if cfg.task == "finetune":
        if i.mode == "Direct":
            raise ConfigError(f"{src}: key 'input.mode': fine-tuning reads its labelled patches from a channel "
                              "(File or FastFile), not Direct")
        if i.channel == ENCODER_CHANNEL:
            raise ConfigError(f"{src}: key 'input.channel': '{ENCODER_CHANNEL}' is the encoder's channel")
        if cfg.finetune.encoder_s3_uri is not None:
            parse_s3_uri(cfg.finetune.encoder_s3_uri, "finetune.encoder_s3_uri")
    for key, value in {**cfg.tags, **cfg.environment}.items():
        if not isinstance(value, str):
            raise ConfigError(f"{src}: tag/environment '{key}': expected a string value, got {value!r}")


def task_section(cfg: JobConfig) -> PretrainSection | FinetuneSection:
    """The section (training config + overrides) of the job's task."""
    return cfg.finetune if cfg.task == "finetune" else cfg.pretrain


def validate_run_name(name: str, source: str = "config") -> None:
    """A run name must leave room for the SDK's timestamp inside SageMaker's 63-character job name."""
    if not name or not JOB_NAME_RE.match(name):
        raise ConfigError(
            f"{source}: key 'run_name' {name!r}: use letters, digits and '-' only "
            "(start with a letter or digit; SageMaker job names allow nothing else)"
        )
    if len(name) > RUN_NAME_MAX:
        raise ConfigError(
            f"{source}: key 'run_name' {name!r} is {len(name)} characters; at most {RUN_NAME_MAX} "
            f"(SageMaker job names are <= {JOB_NAME_MAX} and a {TIMESTAMP_SUFFIX_LEN}-character timestamp is added)"
        )


def validate_prefix(prefix: str, source: str = "config") -> None:
    """``aws.prefix`` is a relative key prefix: no leading '/', no '.' or '..' segments.

    S3 keys are plain strings, so ``../../x`` would not climb anywhere in the bucket; but SageMaker's SDK,
    local mode and anyone who syncs the run to disk treat keys as paths, where it escapes the run's folder
    (or, for ``/x``, means a different place than the bucket-relative one the launcher writes to)."""
    if prefix.startswith(("/", "\\")):
        raise ConfigError(f"{source}: key 'aws.prefix' {prefix!r}: must be relative to the bucket (no leading '/')")
    if any(part in (".", "..") for part in re.split(r"[/\\]", prefix)):
        raise ConfigError(f"{source}: key 'aws.prefix' {prefix!r}: '.' and '..' segments are not allowed "
                          "(a key prefix such as geossl or team/geossl)")


def validate_job_name(name: str) -> None:
    """The final job name, as SageMaker's CreateTrainingJob would check it."""
    if len(name) > JOB_NAME_MAX:
        raise ConfigError(f"job name {name!r} is {len(name)} characters; SageMaker allows at most {JOB_NAME_MAX}")
    if not JOB_NAME_RE.match(name):
        raise ConfigError(f"job name {name!r}: SageMaker allows only letters, digits and '-' (no leading '-')")


def validate_channel(name: str, source: str = "config") -> None:
    if not CHANNEL_RE.match(name):
        raise ConfigError(
            f"{source}: key 'input.channel' {name!r}: use 1-64 letters, digits or '_' "
            "(SageMaker rejects other characters; '.' and '-' break SM_CHANNEL_<NAME> in the container)"
        )
    if name.lower() in RESERVED_CHANNELS:
        raise ConfigError(
            f"{source}: key 'input.channel' {name!r} is reserved by the SageMaker SDK "
            f"({', '.join(RESERVED_CHANNELS)}); use e.g. 'train'"
        )


def parse_s3_uri(uri: str, setting: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix), split by :func:`geossl.data.s3.split_s3_uri`; a URI
    that is not one, or whose bucket S3 would refuse (or holds a line break), is a ConfigError naming ``setting``."""
    try:
        bucket, prefix = split_s3_uri(uri or "")
    except ValueError:
        bucket, prefix = "", ""
    if bucket and not BUCKET_RE.match(bucket) and "\n" not in (uri or ""):
        raise ConfigError(f"{setting}: {uri!r}: {bucket!r} is not a bucket name S3 accepts "
                          "(3-63 lower-case letters, digits, dots and hyphens)")
    if not BUCKET_RE.match(bucket) or "\n" in (uri or ""):
        raise ConfigError(f"{setting}: expected s3://bucket/prefix, got {uri!r}")
    return bucket, prefix


@dataclass
class AwsSettings:
    """The account-specific settings, each resolved from the config or its environment variable."""

    region: str
    role: str
    bucket: str
    prefix: str


def resolve_aws(cfg: JobConfig, env: dict[str, str] | None = None) -> AwsSettings:
    """Fill region/role/bucket from the environment; a missing one is an error naming the setting."""
    env = dict(os.environ) if env is None else env
    region = cfg.aws.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    role = cfg.aws.role or env.get(ENV_ROLE)
    bucket = cfg.aws.bucket or env.get(ENV_BUCKET)
    if not region:
        raise ConfigError("aws.region is not set: put it in the job config, pass aws.region=..., or set $AWS_REGION")
    if not role:
        raise ConfigError(
            f"aws.role is not set: give the SageMaker execution role ARN in the job config, "
            f"as aws.role=arn:aws:iam::<account>:role/<name>, or in ${ENV_ROLE}"
        )
    if not ROLE_RE.match(role):
        raise ConfigError(f"aws.role {role!r}: expected an IAM role ARN, arn:aws:iam::<12-digit account>:role/<name>")
    if not bucket:
        raise ConfigError(
            f"aws.bucket is not set: name the S3 bucket for code, outputs and checkpoints in the job "
            f"config, as aws.bucket=..., or in ${ENV_BUCKET}"
        )
    if bucket.startswith("s3://") or not BUCKET_RE.match(bucket):
        raise ConfigError(f"aws.bucket {bucket!r}: expected a bare bucket name (no s3://, no slashes)")
    return AwsSettings(region=region, role=role, bucket=bucket, prefix=cfg.aws.prefix.strip("/"))
