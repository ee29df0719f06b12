"""The SageMaker launcher: the request it sends (captured against a local moto server), dry runs that
send nothing, metric regexes against the lines training prints, and every bad input named clearly."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest

from geossl.cli import main as geossl_main
from geossl.cloud import launcher
from geossl.cloud.job_config import (
    ConfigError,
    load_job_config,
    parse_s3_uri,
    resolve_aws,
    split_overrides,
    validate_job_name,
)
from geossl.settings import REPO_ROOT, data_root

JOB_YAML = REPO_ROOT / "configs" / "sagemaker_dino.yaml"
ROLE = "arn:aws:iam::123456789012:role/geossl-sagemaker"
BUCKET = "geossl-test"
ACCOUNT = ["aws.region=us-east-1", f"aws.role={ROLE}", f"aws.bucket={BUCKET}"]


class NetworkLog:
    """Records every host a socket is opened to; refuses anything but loopback (nothing may leave)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hosts: list[str] = []
        real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

        def getaddrinfo(host, *args, **kwargs):  # noqa: ANN001, ANN202
            self._check(host)
            return real_getaddrinfo(host, *args, **kwargs)

        def connect(sock, address):  # noqa: ANN001, ANN202
            if isinstance(address, tuple):
                self._check(address[0])
            return real_connect(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket.socket, "connect", connect)

    def _check(self, host: object) -> None:
        host = host.decode() if isinstance(host, bytes) else str(host)
        self.hosts.append(host)
        loopback = host == "localhost"
        try:
            loopback = loopback or ipaddress.ip_address(host).is_loopback
        except ValueError:
            pass
        if not loopback:
            raise AssertionError(f"a connection tried to leave 127.0.0.1: {host}")


def _upload_eurosat(s3, prefix: str, n: int = 6) -> list[str]:
    keys = []
    for image in sorted((data_root() / "eurosat-rgb" / "Forest").glob("*.jpg"))[:n]:
        key = f"{prefix}Forest/{image.name}"
        s3.upload_file(str(image), BUCKET, key)
        keys.append(key)
    return keys


@pytest.fixture()
def s3(moto_server: str):
    """A fresh bucket (moto keeps its state per process: reset it so jobs of other tests don't leak in)."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).close()
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


# --- metric definitions -------------------------------------------------------------------------

def test_metric_regexes_match_the_lines_training_prints():
    from geossl.dino.callbacks import metric_line

    regex = dict(launcher.METRIC_DEFINITIONS)
    step = "geossl-metric step=120 epoch=1 loss=8.123456 lr=0.000123 img_per_s=456.7"
    knn = "geossl-metric epoch=1 knn_top1=0.5321"
    # what pretrain's printer produces today, and a scientific-notation variant
    printed = metric_line(step=7, epoch=0, loss=10.5, lr=1.5e-05, img_per_s=round(12.34, 1))
    expected = {
        step: {"train:loss": 8.123456, "train:lr": 0.000123, "train:img_per_s": 456.7, "train:step": 120,
               "train:epoch": 1},
        knn: {"val:knn_top1": 0.5321},
        printed: {"train:loss": 10.5, "train:step": 7, "train:epoch": 0, "train:img_per_s": 12.3},
        "geossl-metric step=3 epoch=0 loss=9.1 lr=2.5e-05 img_per_s=0.0": {"train:lr": 2.5e-05},
    }
    for line, values in expected.items():
        for name, value in values.items():
            match = re.search(regex[name], line)
            assert match, f"{name} does not match {line!r}"
            assert float(match.group(1)) == pytest.approx(value), (name, line)
    # a step line never yields a k-NN value and vice versa; other log lines yield nothing
    assert re.search(regex["val:knn_top1"], step) is None
    for name in ("train:loss", "train:lr", "train:img_per_s", "train:step", "train:epoch"):
        assert re.search(regex[name], knn) is None
        assert re.search(regex[name], "Epoch 1: 100%|##| loss=3.2 lr=0.1") is None
    assert all(len(r) <= 500 for r in regex.values())  # SageMaker's limit


# --- the request actually sent ------------------------------------------------------------------

@pytest.mark.slow  # a moto round trip (~4-5 s): in make test, not the fast lane
def test_launch_sends_the_full_request_to_sagemaker(s3, monkeypatch):
    _upload_eurosat(s3, "eurosat/")
    cfg = load_job_config(JOB_YAML, [*ACCOUNT, f"input.s3_uri=s3://{BUCKET}/eurosat/", "input.mode=FastFile",
                                     "compute.instance_count=2", "compute.instance_type=ml.g5.12xlarge",
                                     "compute.max_run_minutes=60", "compute.max_wait_minutes=120",
                                     "optim.epochs=3", "optim.warmup_epochs=1", "run_name=eurosat-test"])
    session = boto3.Session(region_name="us-east-1")
    sent: list[dict] = []
    session.events.register("provide-client-params.sagemaker.CreateTrainingJob",
                            lambda params, **_: sent.append(json.loads(json.dumps(params, default=str))))
    net = NetworkLog(monkeypatch)
    result = launcher.launch(cfg, wait=False, boto_session=session)

    assert net.hosts and len(sent) == 1
    req = sent[0]
    assert re.fullmatch(r"eurosat-test-\d{14}", req["TrainingJobName"]) and result.job_name == req["TrainingJobName"]
    algo = req["AlgorithmSpecification"]
    assert algo["TrainingImage"] == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.7.1-gpu-py312"
    assert {m["Name"]: m["Regex"] for m in algo["MetricDefinitions"]} == dict(launcher.METRIC_DEFINITIONS)
    assert req["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge" and req["ResourceConfig"]["InstanceCount"] == 2
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert req["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/geossl/eurosat-test/checkpoints",
                                       "LocalPath": "/opt/ml/checkpoints"}
    assert req["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/geossl/eurosat-test/output"
    assert req["RoleArn"] == ROLE
    assert {"Key": "project", "Value": "geossl"} in req["Tags"]
    hps = req["HyperParameters"]
    assert hps["config"] == "configs/eurosat_vits8.yaml" and hps["channel"] == "train"
    assert "optim.epochs=3" in json.loads(hps["overrides"]) and "trainer.progress_bar=false" in json.loads(hps["overrides"])
    channels = {c["ChannelName"]: c for c in req["InputDataConfig"]}
    assert channels["train"]["InputMode"] == "FastFile"
    assert channels["train"]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/eurosat/"
    assert req["Environment"]["GEOSSL_CHECKPOINT_DIR"] == "/opt/ml/checkpoints"

    # the code the container runs landed in the bucket, where the code channel points
    code_uri = channels["code"]["DataSource"]["S3DataSource"]["S3Uri"]
    assert code_uri.startswith(f"s3://{BUCKET}/geossl/eurosat-test/{req['TrainingJobName']}/")
    code_prefix = code_uri.split(f"s3://{BUCKET}/", 1)[1]
    keys = {o["Key"][len(code_prefix) + 1:] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=code_prefix)["Contents"]}
    assert {"sagemaker/train.py", "sagemaker/requirements.txt", "geossl/cloud/container.py",
            "geossl/dino/train.py", "configs/eurosat_vits8.yaml"} <= keys
    assert not any(k.startswith(("tests/", ".venv/", "runs/")) or "__pycache__" in k for k in keys)
    # and SageMaker (moto) holds the job
    sm = boto3.client("sagemaker", region_name="us-east-1")
    assert sm.describe_training_job(TrainingJobName=req["TrainingJobName"])["TrainingJobName"] == req["TrainingJobName"]


def test_checkpoint_uri_is_shared_by_jobs_of_one_run():
    aws = resolve_aws(load_job_config(JOB_YAML, ACCOUNT), env={})
    first, second = launcher.job_name_for("run-a"), launcher.job_name_for("run-a")
    assert launcher.checkpoint_uri(aws, "run-a") == f"s3://{BUCKET}/geossl/run-a/checkpoints"
    assert first.startswith("run-a-") and second.startswith("run-a-")  # names differ by time, the URI never


# --- dry run ------------------------------------------------------------------------------------

def test_dry_run_prints_the_request_and_sends_nothing(aws_env, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # a real call would head for amazonaws.com
    net = NetworkLog(monkeypatch)
    code = geossl_main(["sagemaker", "launch", "--config", str(JOB_YAML), "--dry-run", *ACCOUNT,
                        f"input.s3_uri=s3://{BUCKET}/eurosat/", "input.mode=File", "compute.spot=false",
                        "data.batch_size=32"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert net.hosts == []  # not even a DNS lookup
    req = json.loads(out)
    assert req["InputDataConfig"][0]["InputMode"] == "File" and req["InputDataConfig"][0]["ChannelName"] == "train"
    assert req["EnableManagedSpotTraining"] is False and "MaxWaitTimeInSeconds" not in req["StoppingCondition"]
    assert "data.batch_size=32" in json.loads(req["HyperParameters"]["overrides"])
    assert "nothing sent" in err and "would create" in err


def test_dry_run_as_the_readme_gives_it_needs_no_credentials_and_no_role_lookup(aws_env, monkeypatch, capsys):
    """Regression: with the SDK's role validation on (its default) the dry run asked IAM for the role
    (answered locally, so KeyError 'Role'), and without keys boto3 went looking for instance credentials."""
    for name in ("SAGEMAKER_VALIDATE_ROLE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    net = NetworkLog(monkeypatch)
    code = geossl_main(["sagemaker", "launch", "--config", str(JOB_YAML), "--dry-run", *ACCOUNT,
                        f"input.s3_uri=s3://{BUCKET}/eurosat/"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert net.hosts == []  # no instance-metadata lookup, no AWS endpoint
    assert json.loads(out)["RoleArn"].startswith("arn:aws:iam::")
    assert "checked at the real launch" in err
    assert "SAGEMAKER_VALIDATE_ROLE" not in os.environ  # restored after the dry run


def test_dry_run_of_a_finetune_job(aws_env, monkeypatch, capsys):
    """task=finetune: the fine-tuning config is validated here (not in the paid container), the encoder
    travels as its own channel, one process runs, and fine-tuning keys route to finetune.overrides."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    base = ["sagemaker", "launch", "--config", str(JOB_YAML), "--dry-run", *ACCOUNT, "task=finetune",
            f"input.s3_uri=s3://{BUCKET}/eurosat/", "finetune.config=configs/finetune_demo.yaml"]
    code = geossl_main([*base, f"finetune.encoder_s3_uri=s3://{BUCKET}/runs/dino/encoder/", "optim.layer_decay=0.9"])
    out, err = capsys.readouterr()
    assert code == 0, err
    req = json.loads(out)
    channels = {c["ChannelName"]: c for c in req["InputDataConfig"]}
    assert set(channels) - {"code", "sm_drivers"} == {"train", "encoder"}  # besides the SDK's own two
    assert channels["encoder"]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/runs/dino/encoder/"
    hps = req["HyperParameters"]
    assert hps["task"] == "finetune" and hps["config"] == "configs/finetune_demo.yaml"
    assert "optim.layer_decay=0.9" in json.loads(hps["overrides"])
    # refusals before anything is built: no encoder, a key the fine-tuning config lacks
    assert geossl_main(base) == 1
    assert "finetune.encoder_s3_uri is not set" in capsys.readouterr().err
    assert geossl_main([*base, f"finetune.encoder_s3_uri=s3://{BUCKET}/e/", "optim.momentum_teacher=0.9"]) == 1
    assert "momentum_teacher" in capsys.readouterr().err


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("missing", "setting"), [("aws.region", "aws.region"), ("aws.role", "aws.role"),
                                                  ("aws.bucket", "aws.bucket")])
def test_missing_account_setting_is_named(missing, setting):
    overrides = [o for o in ACCOUNT if not o.startswith(missing)]
    cfg = load_job_config(JOB_YAML, overrides)
    with pytest.raises(ConfigError, match=rf"^{re.escape(setting)} is not set"):
        resolve_aws(cfg, env={})


def test_account_settings_come_from_the_environment():
    cfg = load_job_config(JOB_YAML, [])
    aws = resolve_aws(cfg, env={"AWS_DEFAULT_REGION": "eu-west-1", "GEOSSL_SAGEMAKER_ROLE": ROLE,
                                "GEOSSL_SAGEMAKER_BUCKET": BUCKET})
    assert (aws.region, aws.role, aws.bucket) == ("eu-west-1", ROLE, BUCKET)
    with pytest.raises(ConfigError, match="aws.role 'my-role': expected an IAM role ARN"):
        resolve_aws(load_job_config(JOB_YAML, ["aws.role=my-role"]), env={"AWS_REGION": "eu-west-1"})
    with pytest.raises(ConfigError, match="aws.bucket 's3://b': expected a bare bucket name"):
        resolve_aws(load_job_config(JOB_YAML, [f"aws.role={ROLE}", "aws.bucket=s3://b"]), env={"AWS_REGION": "x"})


@pytest.mark.parametrize(("override", "message"), [
    ("input.channel=train-data", r"key 'input.channel' 'train-data': use 1-64 letters"),
    ("input.channel=code", r"key 'input.channel' 'code' is reserved by the SageMaker SDK"),
    ("input.channel=" + "c" * 65, r"key 'input.channel'"),
    ("run_name=my_run", r"key 'run_name' 'my_run': use letters, digits and '-' only"),
    ("run_name=" + "r" * 49, r"key 'run_name' 'r+' is 49 characters; at most 48"),
    ("compute.max_wait_minutes=60", r"key 'compute.max_wait_minutes' \(60\) must be above compute.max_run_minutes"),
    ("input.mode=Pipe", r"key 'input.mode': expected one of File, FastFile, Direct"),
    ("input.s3_uri=my-bucket/data", r"input.s3_uri: expected s3://bucket/prefix"),
    ("compute.instance_count=two", r"key 'compute.instance_count': expected int"),
    ("compute.instnce_type=ml.p3.2xlarge", r"unknown key 'compute.instnce_type'"),
    ("optimm.epochs=3", r"unknown key 'optimm' \(job keys: .*training keys: "),
    ("aws.prefix=../../x", r"key 'aws.prefix' '../../x': '.' and '..' segments are not allowed"),
    ("aws.prefix=team/./geossl", r"key 'aws.prefix' 'team/./geossl': '.' and '..' segments"),
    ("aws.prefix=geossl\\..", r"key 'aws.prefix' .*'.' and '..' segments"),
    ("aws.prefix=/abs/geossl", r"key 'aws.prefix' '/abs/geossl': must be relative to the bucket"),
])
def test_bad_job_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_job_config(JOB_YAML, ["compute.max_run_minutes=60", override])


def test_s3_uris_split_as_the_data_layer_splits_them():
    from geossl.data.s3 import split_s3_uri

    for uri in ("s3://my-bucket", "s3://my-bucket/", "s3://my-bucket/a/b/", "s3://my-bucket//a"):
        assert parse_s3_uri(uri, "input.s3_uri") == split_s3_uri(uri)
    # not an S3 URI, a bucket name S3 refuses, or a line break (a YAML slip): one line naming the setting
    for uri in ("my-bucket/data", "s3://", "s3:///a", "s3://my-bucket/a\n", "s3://my-bucket\n", "", None):
        with pytest.raises(ConfigError, match=r"^finetune.encoder_s3_uri: expected s3://bucket/prefix"):
            parse_s3_uri(uri, "finetune.encoder_s3_uri")
    for uri, bucket in (("s3://ab/x", "ab"), ("s3://My_Bucket/x", "My_Bucket")):  # the bucket named, and the rule
        with pytest.raises(ConfigError, match=rf"^finetune.encoder_s3_uri: '{uri}': '{bucket}' is not a bucket name "
                                              r"S3 accepts \(3-63 lower-case"):
            parse_s3_uri(uri, "finetune.encoder_s3_uri")


def test_job_name_validation():
    validate_job_name("a" * 63)
    with pytest.raises(ConfigError, match="is 64 characters; SageMaker allows at most 63"):
        validate_job_name("a" * 64)
    with pytest.raises(ConfigError, match="only letters, digits and '-'"):
        validate_job_name("-bad")
    assert re.fullmatch(r"r{48}-\d{14}", launcher.job_name_for("r" * 48))


def test_overrides_route_by_first_key():
    job, training = split_overrides(["compute.instance_count=2", "optim.epochs=5", "run_name=x", "data.limit=8"])
    assert job == ["compute.instance_count=2", "run_name=x"] and training == ["optim.epochs=5", "data.limit=8"]


def test_unknown_key_in_the_job_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("compute:\n  spot_instances: true\n")
    with pytest.raises(ConfigError, match=r"job.yaml: unknown key 'compute.spot_instances'"):
        load_job_config(path)


def test_a_bad_training_override_fails_before_anything_is_sent(aws_env, monkeypatch):
    NetworkLog(monkeypatch)  # any AWS access would raise
    cfg = load_job_config(JOB_YAML, [*ACCOUNT, f"input.s3_uri=s3://{BUCKET}/x/", "optim.epoch=3"])
    with pytest.raises(ConfigError, match="unknown key 'optim.epoch'"):
        launcher.launch(cfg)


@pytest.mark.parametrize(("setup", "message"), [
    ("empty", r"no objects under this prefix"),
    ("no-images", r"no images \(.tif.*or chips .*among the first 2 objects"),
    ("no-bucket", r"bucket 'missing-bucket' does not exist"),
])
def test_data_prefix_without_images_is_refused_before_launch(s3, setup, message, monkeypatch):
    uri = f"s3://{BUCKET}/data/"
    if setup == "no-images":
        s3.put_object(Bucket=BUCKET, Key="data/readme.txt", Body=b"x")
        s3.put_object(Bucket=BUCKET, Key="data/labels.csv", Body=b"path,label\n")
    if setup == "no-bucket":
        uri = "s3://missing-bucket/data/"
    NetworkLog(monkeypatch)
    cfg = load_job_config(JOB_YAML, [*ACCOUNT, f"input.s3_uri={uri}"])
    with pytest.raises(ConfigError, match=message):
        launcher.launch(cfg, boto_session=boto3.Session(region_name="us-east-1"))
    assert boto3.client("sagemaker", region_name="us-east-1").list_training_jobs()["TrainingJobSummaries"] == []
    assert all(o["Key"].startswith("data/") for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_missing_input_uri_is_named(aws_env):
    with pytest.raises(ConfigError, match=r"^input.s3_uri is not set"):
        launcher.launch(load_job_config(JOB_YAML, ACCOUNT))


def test_unknown_framework_version_is_named(aws_env):
    cfg = load_job_config(JOB_YAML, [*ACCOUNT, "input.s3_uri=s3://b-1/x/", "image.framework_version=9.9"])
    with pytest.raises(ConfigError, match=r"image.framework_version.*Unsupported pytorch version: 9.9"):
        launcher.launch(cfg)


def test_missing_sdk_gives_the_install_hint(monkeypatch, aws_env):
    monkeypatch.setitem(sys.modules, "sagemaker.train", None)  # import fails as if not installed
    cfg = load_job_config(JOB_YAML, [*ACCOUNT, "input.s3_uri=s3://b-1/x/"])
    with pytest.raises(launcher.SageMakerSDKMissing, match=re.escape("pip install 'geossl[sagemaker]'")):
        launcher.launch(cfg, dry_run=True)


def test_cli_reports_bad_input_in_one_line(aws_env, capsys):
    code = geossl_main(["sagemaker", "launch", "--config", str(JOB_YAML), "aws.region=us-east-1", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("geossl sagemaker: error: aws.role is not set") and "Traceback" not in err


def test_requirements_cover_the_package_dependencies():
    """The container runs geossl from source: what pyproject needs and the image lacks must be listed."""
    import tomllib

    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower() for d in deps}
    listed = {re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower()
              for line in (REPO_ROOT / "sagemaker" / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    in_image = {"torch", "torchvision", "numpy", "pandas", "pillow", "pyyaml", "boto3", "tqdm"}
    assert names - in_image <= listed, f"add to sagemaker/requirements.txt: {sorted(names - in_image - listed)}"
    assert "torch" not in listed  # never let pip replace the image's CUDA build
    assert not (Path(REPO_ROOT) / "sagemaker" / "__init__.py").exists()  # it would shadow the SDK


def test_numbers_typed_for_string_settings_stay_text():
    cfg = load_job_config(JOB_YAML, ["image.framework_version=2.10", "run_name=2024", "compute.instance_count=3"])
    assert cfg.image.framework_version == "2.10" and cfg.run_name == "2024" and cfg.compute.instance_count == 3


@pytest.mark.slow  # a moto round trip (~4-5 s): in make test, not the fast lane
def test_cli_launch_and_wait_reports_the_finished_job(s3, monkeypatch, capsys):
    """``--wait`` polls the job to its end (moto completes jobs at once) and prints where things are."""
    _upload_eurosat(s3, "eurosat/", n=2)
    NetworkLog(monkeypatch)
    code = geossl_main(["sagemaker", "launch", "--config", str(JOB_YAML), "--wait", *ACCOUNT,
                        f"input.s3_uri=s3://{BUCKET}/eurosat/", "run_name=wait-test"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"^launched wait-test-\d{14} \(run wait-test\): Completed$", out, re.M)
    assert f"checkpoints: s3://{BUCKET}/geossl/wait-test/checkpoints" in out


def test_aws_refusal_is_one_readable_line(s3, monkeypatch):
    """An AWS error on CreateTrainingJob (here: a quota) becomes a RuntimeError naming code and message."""
    from botocore.exceptions import ClientError

    _upload_eurosat(s3, "eurosat/", n=1)
    session = boto3.Session(region_name="us-east-1")

    def refuse(**_):
        raise ClientError({"Error": {"Code": "ResourceLimitExceeded", "Message": "quota for ml.g5.2xlarge spot is 0"}},
                          "CreateTrainingJob")

    session.events.register("before-call.sagemaker.CreateTrainingJob", refuse)
    cfg = load_job_config(JOB_YAML, [*ACCOUNT, f"input.s3_uri=s3://{BUCKET}/eurosat/"])
    with pytest.raises(RuntimeError, match=r"^AWS refused CreateTrainingJob: ResourceLimitExceeded: quota for"):
        launcher.launch(cfg, boto_session=session)


def test_the_sdk_is_imported_only_when_a_job_is_built():
    """The SDK is an optional extra: importing the CLI, launcher or container must not need it."""
    code = ("import sys, geossl.cloud.cli, geossl.cloud.launcher, geossl.cloud.container; "
            "print([m for m in sys.modules if m == 'sagemaker' or m.startswith('sagemaker.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
