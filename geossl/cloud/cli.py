"""``geossl sagemaker launch|local|classify|embed``: send pretraining to SageMaker, or rehearse the
container here; classify or embed an archive of scenes as a Processing job (:mod:`geossl.cloud.processing`).

``launch`` builds the training job from a job YAML (``--dry-run`` prints the request and sends
nothing). ``local`` runs ``sagemaker/train.py`` on this machine exactly as the container would: an
/opt/ml-like folder, the SM_* variables, hyperparameters as ``--key value`` arguments, under torchrun
with several CPU processes, so the contract is exercised before an instance is paid for.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

from geossl.cloud.container import finished_local_job
from geossl.cloud.job_config import ConfigError, load_job_config, resolve_aws
from geossl.config import load_config
from geossl.io import RunLock
from geossl.settings import REPO_ROOT, resolve_data_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    launch = sub.add_parser("launch", help="create a SageMaker training job (needs geossl[sagemaker])",
                            description="Create a SageMaker training job that runs geossl pretraining.")
    local = sub.add_parser("local", help="run the container entry point here, as SageMaker would",
                           description="Run sagemaker/train.py here with an /opt/ml-like tree and SM_* variables. "
                                       "Running it again on the same --root resumes an interrupted job; a "
                                       "finished one is refused (nothing is overwritten): pass a new --root "
                                       "or run_name=NAME to train again.")
    for p in (launch, local):
        p.add_argument("--config", required=True, help="job YAML (e.g. configs/sagemaker_dino.yaml)")
        p.add_argument("overrides", nargs="*",
                       help="key=value for the job (compute.instance_count=2) or the training config (optim.epochs=50)")
    launch.add_argument("--dry-run", action="store_true", help="print the CreateTrainingJob request as JSON; send nothing")
    launch.add_argument("--wait", action="store_true", help="wait for the job and stream its logs")
    local.add_argument("--data", help="local folder standing in for input.s3_uri (default: the training config's "
                                      "first data path)")
    local.add_argument("--root", help="the /opt/ml stand-in (default: runs/sagemaker-local/RUN_NAME); "
                                      "its checkpoints/ persist, so running again resumes an interrupted job "
                                      "like a spot restart; a finished job there is refused, not overwritten")
    local.add_argument("--nproc", type=int, default=2, help="torchrun processes (CPU); 0 = no torchrun (default 2)")
    for command in ("classify", "embed"):
        model = "land-cover model folder (geossl probe/finetune)" if command == "classify" else "encoder folder"
        p = sub.add_parser(command, help=f"{command} the scenes of an S3 prefix as a SageMaker Processing job",
                           description=f"geossl {command} over every scene under --scenes, spread over "
                                       "compute.instance_count instances (ShardedByS3Key); each instance writes "
                                       "OUT/JOB/<host>/ with its own manifest.jsonl.")
        p.add_argument("--config", required=True, help="job YAML: aws, compute (an ml.* CPU or GPU type), image")
        p.add_argument("--model", required=True, help=f"S3 prefix of the {model} (a local folder with --local)")
        p.add_argument("--scenes", required=True,
                       help="S3 prefix of the scenes (a local folder with --local), or a scene list: a .txt of "
                            "URIs, one per line, or a scene index .parquet (its uri column)")
        p.add_argument("--out", required=True, help="S3 prefix for the outputs (a local folder with --local)")
        p.add_argument("--args", default="", help=f"options of geossl {command}, quoted: --args '--tile-size 64 --probs' "
                                                          "(a lone flag: --args=--probs)")
        p.add_argument("--dry-run", action="store_true", help="print the CreateProcessingJob request; send nothing")
        p.add_argument("--wait", action="store_true", help="wait for the job and stream its logs")
        p.add_argument("--local", action="store_true",
                       help="rehearse here: compute.instance_count processes, each over its share of the scenes")
        p.add_argument("overrides", nargs="*", help="job config key=value (compute.instance_count=4)")
    merge = sub.add_parser("merge", help="one VRT, STAC Collection and areas.csv over a classify job's hosts",
                           description="Gather the host folders of a `sagemaker classify` job (OUT/JOB/algo-*/) "
                                       "into the products `geossl classify` writes for one folder, at OUT/JOB/.")
    merge.add_argument("--out", required=True, help="the job's output: s3://OUT/JOB/ (or a local folder)")
    merge.add_argument("--model", required=True, help="the land-cover model folder the job used (S3 or local)")
    merge.add_argument("--cache", type=Path, default=None,
                       help="local mirror of an S3 job (default runs/sagemaker-merge/JOB); reused by a later merge")
    merge.add_argument("--mosaic", action="store_true", help="also one COG mosaic in one CRS")
    merge.add_argument("--mosaic-crs", default=None, help="the mosaic's CRS (default: the most common)")


def run(args: argparse.Namespace) -> int:
    if args.action in ("classify", "embed"):
        return _process(args)
    if args.action == "merge":
        return _merge(args.out, args.model, args.cache, mosaic=args.mosaic, mosaic_crs=args.mosaic_crs)
    return _launch(args) if args.action == "launch" else _local(args)


def _process(args: argparse.Namespace) -> int:
    """A Processing job (or its rehearsal) of ``geossl classify`` / ``embed`` over an archive."""
    from geossl.cloud.processing import ProcessingJob, launch_processing, rehearse

    cfg = load_job_config(args.config, args.overrides)
    job = ProcessingJob(args.action, args.model, args.scenes, args.out, shlex.split(args.args))
    job.check(remote=not args.local)
    check_command_args(job.command, job.args)
    if args.local:
        out = Path(args.out)
        with RunLock(out, what=f"geossl sagemaker {args.action} --local", option="--out"):
            code = rehearse(job, cfg.compute.instance_count, out / ".rehearsal")
        print(f"rehearsal: {cfg.compute.instance_count} instance(s) -> {out}/algo-*; exit {code}", file=sys.stderr)
        if args.action == "classify":
            _merge(str(out), args.model, None)
        return code
    if cfg.compute.spot:
        print("note: SageMaker Processing has no spot capacity; compute.spot is ignored, the job runs on demand "
              "(a failed job is relaunched into a new OUT/JOB/ and merged the same way)", file=sys.stderr)
    result = launch_processing(cfg, job, dry_run=args.dry_run, wait=args.wait)
    if args.dry_run:
        print(json.dumps(result.request, indent=2))
        print(f"dry run: nothing sent; would create {result.job_name} and upload {len(result.uploads)} files (code); "
              f"outputs: {result.output_uri}/<host>/", file=sys.stderr)
        return 0
    print(f"launched {result.job_name}: {result.status}; outputs: {result.output_uri}/<host>/", file=sys.stderr)
    if args.action == "classify":
        if args.wait and result.status == "Completed":
            return _merge(result.output_uri, args.model, None)
        print(f"when it ends: geossl sagemaker merge --out {result.output_uri}/ --model {args.model}", file=sys.stderr)
    return 0


def _merge(out: str, model: str, cache: Path | None, *, mosaic: bool = False, mosaic_crs: str | None = None) -> int:
    """The products over a classify job's host folders (:mod:`geossl.cloud.merge`); one summary line."""
    from geossl.cloud.merge import merge_job

    cache = cache or REPO_ROOT / "runs" / "sagemaker-merge" / (out.rstrip("/").rsplit("/", 1)[-1] or "job")
    print(f"merge: {merge_job(out, model, cache, mosaic=mosaic, mosaic_crs=mosaic_crs)}", flush=True)
    return 0


def check_command_args(command: str, command_args: list[str]) -> None:
    """Parse ``--args`` with ``geossl COMMAND``'s own parser now, so an option the command lacks (or a value
    it refuses) stops here in one line instead of in the container after the instances are paid for."""
    from geossl.cloud.processing import MODEL_OPTION
    from geossl.predict import cli as classify_cli
    from geossl.predict import embed_cli

    parser = argparse.ArgumentParser(prog=f"geossl {command}")
    (classify_cli if command == "classify" else embed_cli).add_arguments(parser)
    argv = [MODEL_OPTION[command], "MODEL", "--input", "SCENES", "--out", "OUT", *command_args]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parser.parse_args(argv)
    except SystemExit:
        reason = errors.getvalue().strip().splitlines()[-1:] or ["not accepted"]
        raise ConfigError(f"--args: geossl {command} refuses {shlex.join(command_args)!r}: "
                          f"{reason[0].split('error: ', 1)[-1]}") from None


def _launch(args: argparse.Namespace) -> int:
    from geossl.cloud.launcher import launch, print_summary

    cfg = load_job_config(args.config, args.overrides)
    result = launch(cfg, dry_run=args.dry_run, wait=args.wait)
    if args.dry_run:
        print(json.dumps(result.request, indent=2))
        print(f"dry run: nothing sent; would create {result.job_name} and upload {len(result.uploads)} files "
              f"(code); checkpoints: {result.checkpoint_uri}; the role's permissions are checked at the real launch",
              file=sys.stderr)
        return 0
    print_summary(result, resolve_aws(cfg).region)
    if args.wait and result.status != "Completed":
        print(f"{result.job_name} ended {result.status}; launch again with run_name={result.run_name} to resume "
              "from its checkpoints", file=sys.stderr)
        return 1
    return 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_command(nproc: int, args: list[str]) -> list[str]:
    """How the SDK's Torchrun driver starts the entry point (static rendezvous on this host)."""
    entry = "sagemaker/train.py"
    if nproc <= 0:
        return [sys.executable, entry, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", entry, *args]


def refuse_finished(root: Path, explicit_root: bool) -> None:
    """One line, before anything starts, when ``root`` holds a finished job: a finished run cannot be resumed,
    and rerunning the entry point on it died with a traceback naming options this command does not have.
    The hint names what does start a new run here: another --root (and, when the root is the default
    runs/sagemaker-local/RUN_NAME, another run_name)."""
    done = finished_local_job(root)
    if done is not None:
        other = "a new --root" if explicit_root else "a new --root or run_name=NEW_NAME"
        raise FileExistsError(f"{root}: already holds a finished job ({done.relative_to(root)}), which cannot be "
                              f"resumed; pass {other} to train again (nothing was overwritten)")


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """The job's exit code; a SIGTERM sent to this command is passed on (SageMaker's stop / spot interruption)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _local(args: argparse.Namespace) -> int:
    from geossl.cloud.container import hyperparameters_to_args, prepare_local_tree
    from geossl.cloud.launcher import hyperparameters, resolve_training_config

    cfg = load_job_config(args.config, args.overrides)
    training_config = resolve_training_config(cfg, REPO_ROOT)
    hps = hyperparameters(cfg, str(training_config))
    channel, data_dir = (None, None) if cfg.input.mode == "Direct" else (cfg.input.channel, args.data)
    if channel and data_dir is None:
        first = load_config(training_config, cfg.pretrain.overrides).data.paths[0]
        data_dir = resolve_data_path(first)
        if "://" in data_dir:
            raise ConfigError(f"--data: the training config reads {data_dir}; give a local folder with --data")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data {data_dir}: not a folder")
    root = Path(args.root or Path("runs") / "sagemaker-local" / cfg.run_name).resolve()
    with RunLock(root, "geossl sagemaker local", "--root"):
        refuse_finished(root, explicit_root=bool(args.root))
        env = prepare_local_tree(root, hps, channel, Path(data_dir) if data_dir else None, REPO_ROOT,
                                 job_name=f"{cfg.run_name}-local")
        cmd = local_command(args.nproc, hyperparameters_to_args(hps))
        print(f"geossl sagemaker local: {shlex.join(cmd)}\n  (cwd {REPO_ROOT}, /opt/ml -> {root})", file=sys.stderr)
        code = _wait(subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, **env}))
    failure = root / "output" / "failure"
    if code != 0 and failure.is_file():
        print(f"job failed; {failure}:\n{failure.read_text()}", file=sys.stderr)
    elif code == 0:
        print(f"model: {root / 'model'}  checkpoints: {root / 'checkpoints'}", file=sys.stderr)
    return code
