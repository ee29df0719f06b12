"""S3 for data: list, mirror a prefix locally, upload a folder, and point GDAL at the same endpoint as boto3.

boto3 honours ``AWS_ENDPOINT_URL`` (MinIO, moto, LocalStack) but GDAL ignores it and wants
``AWS_S3_ENDPOINT=host:port`` plus ``AWS_HTTPS``/``AWS_VIRTUAL_HOSTING``: :func:`gdal_s3_options`
derives them, so one environment variable configures both (:func:`geossl.data.raster.raster_env` applies
them with :func:`aws_session`'s credentials around every ``/vsis3/`` read).

``s3://`` URIs are split here too (:func:`split_s3_uri`, the one split): this module sits below
:mod:`geossl.data.uris`, which lists S3 prefixes through it.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from geossl.io import atomic_path

log = logging.getLogger(__name__)


def is_s3(uri: str) -> bool:
    """Whether ``uri`` is an ``s3://bucket/key`` URI (GDAL reads it as ``/vsis3/bucket/key``)."""
    return str(uri).startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; the key may be empty."""
    if not is_s3(uri):
        raise ValueError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket in S3 URI")
    return bucket, key


def s3_client() -> Any:
    """A boto3 S3 client; the endpoint comes from ``AWS_ENDPOINT_URL`` when set (boto3 reads it itself)."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def list_objects(bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    """Every object under ``prefix`` (paginated), folder markers skipped; errors name the bucket/prefix."""
    paginator = s3_client().get_paginator("list_objects_v2")
    try:
        objects = [obj for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])]
    except (ClientError, BotoCoreError) as exc:
        raise FileNotFoundError(f"s3://{bucket}/{prefix}: cannot list ({exc})") from None
    return [obj for obj in objects if not obj["Key"].endswith("/")]


def _local_target(local_dir: Path, relative: str, uri: str) -> Path:
    parts = PurePosixPath(relative).parts
    if not parts or ".." in parts or relative.startswith("/"):
        raise ValueError(f"{uri}: object key escapes the target folder")
    return local_dir.joinpath(*parts)


def sync_prefix(s3_uri: str, local_dir: str | os.PathLike[str]) -> list[Path]:
    """Mirror ``s3://bucket/prefix`` into ``local_dir``; download only objects that are new or changed.

    "Changed" means a different size or last-modified time (each download gets the object's
    LastModified as its mtime, so a second sync of an unchanged prefix transfers nothing). Downloads
    are atomic. Returns the local paths of all objects under the prefix, in key order.
    """
    bucket, key = split_s3_uri(s3_uri)
    local_dir = Path(local_dir)
    objects = list_objects(bucket, key)
    exact = [obj for obj in objects if obj["Key"] == key]
    if exact:  # a single object: mirror it as local_dir/<name>
        base, objects = key.rsplit("/", 1)[0] + "/" if "/" in key else "", exact
    else:
        base = key if not key or key.endswith("/") else key + "/"
        objects = [obj for obj in objects if obj["Key"].startswith(base)]
    if not objects:
        raise FileNotFoundError(f"{s3_uri}: no objects under this prefix")
    client = s3_client()
    paths, downloaded = [], 0
    for obj in objects:
        target = _local_target(local_dir, obj["Key"][len(base) :], f"s3://{bucket}/{obj['Key']}")
        mtime = obj["LastModified"].timestamp() if isinstance(obj["LastModified"], datetime) else None
        if not _is_current(target, obj["Size"], mtime):
            with atomic_path(target) as tmp:
                client.download_file(bucket, obj["Key"], str(tmp))
            if mtime is not None:
                os.utime(target, (mtime, mtime))
            downloaded += 1
        paths.append(target)
    log.info("sync %s -> %s: %d of %d objects downloaded", s3_uri, local_dir, downloaded, len(objects))
    return paths


def _is_current(path: Path, size: int, mtime: float | None) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return stat.st_size == size and (mtime is None or abs(stat.st_mtime - mtime) < 1e-3)


def upload_dir(local_dir: str | os.PathLike[str], s3_uri: str, skip: tuple[str, ...] = (".lock",),
               files: list[Path] | None = None) -> list[str]:
    """Upload every file below ``local_dir`` (recursive; only ``files`` when given) to
    ``s3://bucket/prefix/<relative path>``.

    Files named in ``skip`` (the folder's :class:`geossl.io.RunLock` file) stay local. No credentials,
    no network, a missing bucket or a refusal raise one ``OSError`` line naming the prefix and the cause,
    not botocore's traceback.
    """
    import boto3.exceptions

    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"{local_dir}: no such folder to upload")
    bucket, key = split_s3_uri(s3_uri)
    prefix = key if not key or key.endswith("/") else key + "/"
    uploaded = []
    try:
        client = s3_client()
        chosen = local_dir.rglob("*") if files is None else files
        for path in sorted(p for p in chosen if p.is_file() and p.name not in skip):
            object_key = prefix + path.relative_to(local_dir).as_posix()
            client.upload_file(str(path), bucket, object_key)
            uploaded.append(f"s3://{bucket}/{object_key}")
    except (BotoCoreError, ClientError, boto3.exceptions.Boto3Error) as exc:
        cause = " ".join(str(exc).split())  # one line, whatever botocore's message holds
        raise OSError(f"s3://{bucket}/{prefix}: upload failed after {len(uploaded)} file(s) ({cause})") from None
    return uploaded


def gdal_s3_options() -> dict[str, str]:
    """GDAL config options that send ``/vsis3/`` to ``AWS_ENDPOINT_URL`` (empty when it is unset).

    Explicit ``AWS_S3_ENDPOINT``/``AWS_HTTPS``/``AWS_VIRTUAL_HOSTING`` environment variables win.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return {}
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    options = {
        "AWS_S3_ENDPOINT": parsed.netloc,
        "AWS_HTTPS": "NO" if parsed.scheme == "http" else "YES",
        "AWS_VIRTUAL_HOSTING": "FALSE",  # local servers have no per-bucket DNS names
    }
    return {k: os.environ.get(k, v) for k, v in options.items()}


_SESSIONS: dict[tuple[Any, ...], Any] = {}


def aws_session(endpoint: str | None) -> Any:
    """One ``AWSSession`` per process and endpoint/credentials: boto3 sessions cost milliseconds to build.

    :func:`geossl.data.raster.raster_env` gives it to GDAL for ``/vsis3/`` reads."""
    import boto3
    from rasterio.session import AWSSession

    key = (os.getpid(), endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    if key not in _SESSIONS:
        _SESSIONS[key] = AWSSession(boto3.Session(), endpoint_url=endpoint)
    return _SESSIONS[key]
