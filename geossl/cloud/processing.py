"""``geossl sagemaker classify`` / ``embed``: one SageMaker Processing job over an archive of scenes.

SageMaker splits the scenes under an S3 prefix across the job's instances itself (``ShardedByS3Key``:
each instance receives about 1/N of the objects), copies the model folder whole to every instance, and
each instance runs the ordinary ``geossl classify`` (or ``embed``) on its share into ``output/<host>/``,
which SageMaker uploads to ``OUT/<job name>/<host>/``: nothing of one instance can replace another's, and
each host folder carries its own ``manifest.jsonl`` and folder products. The container image and the
code are the training job's (the AWS PyTorch image, the staged geossl checkout, its requirements).

The request is built by the SDK's own ``FrameworkProcessor``; ``--dry-run`` answers every AWS call
locally and prints the CreateProcessingJob request it would send. :func:`rehearse` runs the same entry
point here, one process per simulated instance, over a ``/opt/ml/processing``-like tree per instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geossl.cloud.job_config import AwsSettings, ConfigError, JobConfig, parse_s3_uri, resolve_aws
from geossl.cloud.launcher import (
    REQUIREMENTS,
    LaunchResult,
    OfflineAws,
    environment_variable,
    image_uri,
    job_name_for,
    sagemaker_sdk,
    stage_source,
)
from geossl.settings import REPO_ROOT

PROCESS_SCRIPT = "sagemaker/process.py"
PROCESSING_ROOT = "/opt/ml/processing"
COMMANDS = ("classify", "embed")
MODEL_OPTION = {"classify": "--model", "embed": "--encoder"}  # the command's flag for the model folder


@dataclass
class ProcessingJob:
    """What to run: ``command`` over the scenes under ``scenes``, with the model folder ``model``, into ``out``
    (S3 prefixes for a job, local folders for a rehearsal); ``args`` go to the command unchanged."""

    command: str
    model: str
    scenes: str
    out: str
    args: list[str]
    scene_uris: list[str] | None = None  # set by check() when --scenes names a scene list or a scene index

    def check(self, remote: bool) -> None:
        if self.command not in COMMANDS:
            raise ConfigError(f"processing: command must be one of {', '.join(COMMANDS)}, got {self.command!r}")
        for flag in ("--model", "--encoder", "--input", "--out"):
            if flag in self.args:
                raise ConfigError(f"--args: {flag} is set by the job (--model, --scenes and --out of this command)")
        if Path(self.scenes).suffix.lower() in SCENE_LIST_SUFFIXES and not self.scenes.startswith("s3://"):
            self.scene_uris = read_scene_list(Path(self.scenes), remote)
        for option, value in (("--model", self.model), ("--scenes", self.scenes), ("--out", self.out)):
            if option == "--scenes" and self.scene_uris is not None:
                continue
            if remote:
                parse_s3_uri(value, option)
            elif option != "--out" and not Path(value).is_dir():
                raise FileNotFoundError(f"{value}: {option} must be a local folder for a rehearsal")
        scene_roots = [self.scenes] if self.scene_uris is None else [shared_folder(self.scene_uris, remote)]
        for option, value in [*(("--scenes", root) for root in scene_roots), ("--model", self.model)]:
            if _within(self.out, value, remote) or _within(value, self.out, remote):
                raise ConfigError(f"--out {self.out} and {option} {value} overlap: the outputs would be read back "
                                  f"as input by the next job; give --out a prefix of its own")


SCENE_LIST_SUFFIXES = (".txt", ".csv", ".parquet")


def read_scene_list(path: Path, remote: bool) -> list[str]:
    """The scenes of a list file: text (one URI per line; blank lines and ``#`` comments skipped) or a scene
    index (``geossl chips``' GeoParquet, or any Parquet with a ``uri`` column, e.g. the index filtered to an
    area in a GIS). For a job every entry must be an ``s3://`` key (SageMaker fetches them), for a rehearsal
    a local file; a duplicate is refused (it would be mapped twice), each error naming the list and entry."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scene list")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "uri" not in table.column_names:
            raise ConfigError(f"{path}: a scene index needs a 'uri' column (has {', '.join(table.column_names)})")
        entries = [(i + 1, str(u)) for i, u in enumerate(table.column("uri").to_pylist()) if u]
    else:
        entries = [(i + 1, line.strip()) for i, line in enumerate(path.read_text().splitlines())
                   if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise ConfigError(f"{path}: the scene list is empty")
    seen: dict[str, int] = {}
    for number, uri in entries:
        if uri in seen:
            raise ConfigError(f"{path}: entry {number} repeats entry {seen[uri]} ({uri})")
        seen[uri] = number
        if remote and not uri.startswith("s3://"):
            raise ConfigError(f"{path}: entry {number} ({uri}) is not an s3:// key; a job reads its scenes from S3")
        if not remote and not Path(uri).is_file():
            raise FileNotFoundError(f"{path}: entry {number} ({uri}) is not a local file (a rehearsal reads local files)")
    return [uri for _, uri in entries]


def shared_folder(uris: list[str], remote: bool) -> str:
    """The deepest folder (S3: ``s3://bucket/prefix/``) holding every scene of a list: the prefix of a
    SageMaker manifest file, and where the rehearsal keeps the scenes' relative paths from."""
    if remote:
        buckets = {parse_s3_uri(u, "--scenes")[0] for u in uris}
        if len(buckets) > 1:
            raise ConfigError(f"--scenes: the list spans buckets {', '.join(sorted(buckets))}; one job reads one "
                              "bucket (a SageMaker manifest file has one prefix): split the list")
        keys = [u.split("/", 3)[3] if u.count("/") >= 3 else "" for u in uris]
        common = os.path.commonpath(["/" + k for k in keys]).lstrip("/")
        common = common if all(k != common for k in keys) else common.rsplit("/", 1)[0] if "/" in common else ""
        return f"s3://{buckets.pop()}/" + (common + "/" if common else "")
    return os.path.commonpath([str(Path(u).resolve().parent) for u in uris])


def sagemaker_manifest(uris: list[str]) -> list[Any]:
    """The manifest file SageMaker reads for an input of ``S3DataType: ManifestFile``: the common prefix,
    then every key relative to it (each instance receives its share of them with ``ShardedByS3Key``)."""
    prefix = shared_folder(uris, remote=True)
    return [{"prefix": prefix}, *(u[len(prefix):] for u in uris)]


def _within(inner: str, outer: str, remote: bool) -> bool:
    """Whether ``inner`` is ``outer`` or below it: S3 prefixes by whole path segments, local folders resolved."""
    if remote:
        a, b = inner.rstrip("/") + "/", outer.rstrip("/") + "/"
        return a.startswith(b)
    a_path, b_path = Path(inner).resolve(), Path(outer).resolve()
    return a_path == b_path or b_path in a_path.parents


def container_args(job: ProcessingJob) -> list[str]:
    """The entry point's arguments: the command, then the command's own options."""
    return [job.command, *job.args]


def build_processor(cfg: JobConfig, aws: AwsSettings, boto_session: Any) -> Any:
    """The SDK's FrameworkProcessor (the training image, the job's compute and tags); sends nothing."""
    sdk = sagemaker_sdk()
    from sagemaker.core.processing import FrameworkProcessor

    session = sdk.Session(boto_session=boto_session, default_bucket=aws.bucket, default_bucket_prefix=aws.prefix or None)
    return FrameworkProcessor(
        image_uri=image_uri(cfg, aws.region), role=aws.role, instance_count=cfg.compute.instance_count,
        instance_type=cfg.compute.instance_type, command=["python3"], volume_size_in_gb=cfg.compute.volume_size_gb,
        max_runtime_in_seconds=cfg.compute.max_run_minutes * 60, base_job_name=cfg.run_name,
        sagemaker_session=session, env={"PYTHONUNBUFFERED": "1", **cfg.environment},
        tags=[{"Key": k, "Value": v} for k, v in {"geossl:run": cfg.run_name, **cfg.tags}.items()],
    )


def inputs_outputs(job: ProcessingJob, job_name: str, scene_manifest: str | None = None) -> tuple[list[Any], list[Any]]:
    """Scenes sharded by key (a prefix, or the manifest file of a scene list), the model replicated, one
    output folder uploaded at the end of the job."""
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output

    def s3_input(name: str, uri: str, distribution: str, data_type: str = "S3Prefix") -> Any:
        return ProcessingInput(input_name=name, s3_input=ProcessingS3Input(
            s3_uri=uri, local_path=f"{PROCESSING_ROOT}/input/{name}", s3_data_type=data_type, s3_input_mode="File",
            s3_data_distribution_type=distribution))

    out = ProcessingOutput(output_name="output", s3_output=ProcessingS3Output(
        s3_uri=f"{job.out.rstrip('/')}/{job_name}", local_path=f"{PROCESSING_ROOT}/output", s3_upload_mode="EndOfJob"))
    scenes = s3_input("scenes", job.scenes, "ShardedByS3Key") if scene_manifest is None else \
        s3_input("scenes", scene_manifest, "ShardedByS3Key", "ManifestFile")
    return [scenes, s3_input("model", job.model, "FullyReplicated")], [out]


def launch_processing(cfg: JobConfig, job: ProcessingJob, *, dry_run: bool = False, wait: bool = False,
                      boto_session: Any = None, source_root: Path | None = None,
                      env: dict[str, str] | None = None) -> LaunchResult:
    """Create the Processing job (or, with ``dry_run``, build its request with every AWS call answered here)."""
    job.check(remote=True)
    source_root = Path(source_root or REPO_ROOT)
    aws = resolve_aws(cfg, env)
    job_name = job_name_for(cfg.run_name)
    image_uri(cfg, aws.region)  # an unknown version/region fails before any work
    import boto3

    if boto_session is None:
        keys = {"aws_access_key_id": "DRYRUN", "aws_secret_access_key": "DRYRUN"} if dry_run else {}
        boto_session = boto3.Session(region_name=aws.region, **keys)
    offline = OfflineAws(aws.bucket) if dry_run else None
    if offline is not None:
        boto_session.events.register("before-call.*.*", offline)
        boto_session.events.register("provide-client-params.s3.PutObject", offline.record_upload)
        boto_session.events.register("provide-client-params.sagemaker.CreateProcessingJob", offline.record_request)
    result = LaunchResult(job_name=job_name, run_name=cfg.run_name, checkpoint_uri="",
                          output_uri=f"{job.out.rstrip('/')}/{job_name}")
    with tempfile.TemporaryDirectory(prefix="geossl-sagemaker-src-") as tmp:
        staged = Path(tmp) / "source"
        stage_source(source_root, None, staged)
        scene_manifest = None
        if job.scene_uris is not None:  # a scene list: a manifest file beside the job's code
            key = "/".join(filter(None, [aws.prefix.strip("/"), job_name, "input", "scenes.manifest"]))
            boto_session.client("s3").put_object(Bucket=aws.bucket, Key=key,
                                                 Body=json.dumps(sagemaker_manifest(job.scene_uris)).encode())
            scene_manifest = f"s3://{aws.bucket}/{key}"
        inputs, outputs = inputs_outputs(job, job_name, scene_manifest)
        role_check = environment_variable("SAGEMAKER_VALIDATE_ROLE", "false") if dry_run else contextlib.nullcontext()
        try:
            with role_check:
                processor = build_processor(cfg, aws, boto_session)
                processor.run(code=PROCESS_SCRIPT, source_dir=str(staged), requirements=REQUIREMENTS,
                              inputs=inputs, outputs=outputs, arguments=container_args(job), wait=wait and not dry_run,
                              logs=wait and not dry_run, job_name=job_name)
        finally:
            if offline is not None:
                boto_session.events.unregister("before-call.*.*", offline)
                boto_session.events.unregister("provide-client-params.s3.PutObject", offline.record_upload)
                boto_session.events.unregister("provide-client-params.sagemaker.CreateProcessingJob",
                                               offline.record_request)
    if offline is not None:
        result.request = json.loads(json.dumps(offline.requests.get("CreateProcessingJob"), default=str))
        result.uploads, result.status = sorted(offline.uploads), "DryRun"
    else:
        result.status = "InProgress" if not wait else "Completed"
    return result


# --- the container side -------------------------------------------------------------------------------


def current_host(root: Path) -> str:
    """This instance's name (``algo-1``...) from SageMaker's resource config; ``algo-1`` where there is none."""
    config = root / "config" / "resourceconfig.json"
    if not config.is_file():
        return "algo-1"
    return str(json.loads(config.read_text()).get("current_host") or "algo-1")


def container_command(argv: list[str], root: Path) -> list[str] | None:
    """``geossl COMMAND --model|--encoder MODEL --input SCENES --out OUTPUT/HOST ARGS...`` for this
    instance, or None when its share of the scenes is empty (more instances than scenes)."""
    if not argv or argv[0] not in COMMANDS:
        raise ValueError(f"processing entry point: the first argument must be one of {', '.join(COMMANDS)}")
    command, *args = argv
    processing = root / "processing"
    scenes = processing / "input" / "scenes"
    if not scenes.is_dir() or not any(p.is_file() for p in scenes.rglob("*")):
        return None
    out = processing / "output" / current_host(root)  # embed too: a folder, one GeoParquet per scene + manifest
    return [command, MODEL_OPTION[command], str(processing / "input" / "model"), "--input", str(scenes),
            "--out", str(out), *args]


def container_main(argv: list[str], root: Path | None = None) -> int:
    """Run this instance's share; the exit status is the command's (1 when a scene failed). The command
    runs as ``python -m geossl`` from this checkout (the cloud layer does not import the command line)."""
    root = Path(root or os.environ.get("GEOSSL_OPT_ML", "/opt/ml"))
    command = container_command(argv, root)
    if command is None:
        print(f"geossl processing: {current_host(root)} received no scene (more instances than scenes); nothing to do",
              flush=True)
        return 0
    (root / "processing" / "output" / current_host(root)).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.call([sys.executable, "-m", "geossl", *command], env=env)


# --- the local rehearsal ------------------------------------------------------------------------------


def shard_by_key(files: list[Path], instances: int) -> list[list[Path]]:
    """Whole files dealt to instances in key order, as ShardedByS3Key gives each about 1/N of the objects."""
    ordered = sorted(files, key=lambda p: p.as_posix())
    return [ordered[i::instances] for i in range(instances)]


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(target.resolve())


def rehearse(job: ProcessingJob, instances: int, workdir: Path) -> int:
    """Run the entry point here as ``instances`` processes, each over its share of ``job.scenes`` in its own
    ``/opt/ml``-like tree under ``workdir``, writing into ``job.out/<host>/`` as the job's upload would."""
    job.check(remote=False)
    out = Path(job.out)
    if job.scene_uris is None:
        scenes_root = Path(job.scenes)
        files = [p for p in scenes_root.rglob("*") if p.is_file()]
    else:  # a scene list: its files, kept at their paths below the folder they share (as the manifest's keys)
        scenes_root = Path(shared_folder(job.scene_uris, remote=False))
        files = [Path(u).resolve() for u in job.scene_uris]
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, share in enumerate(shard_by_key(files, instances), start=1):
        root, host = workdir / f"algo-{i}", f"algo-{i}"
        shutil.rmtree(root / "processing" / "input" / "scenes", ignore_errors=True)  # an earlier rehearsal's share
        for path in share:
            _link(root / "processing" / "input" / "scenes" / path.relative_to(scenes_root), path)
        _link(root / "processing" / "input" / "model", Path(job.model))
        _link(root / "processing" / "output", out)
        (root / "config").mkdir(parents=True, exist_ok=True)
        (root / "config" / "resourceconfig.json").write_text(json.dumps(
            {"current_host": host, "hosts": [f"algo-{k}" for k in range(1, instances + 1)]}))
        env = {**os.environ, "GEOSSL_OPT_ML": str(root)}
        procs.append(subprocess.Popen([sys.executable, str(REPO_ROOT / PROCESS_SCRIPT), *container_args(job)], env=env))
    return max(p.wait() for p in procs)
