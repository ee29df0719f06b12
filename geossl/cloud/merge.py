"""``geossl sagemaker merge``: one product over the host folders of a ``sagemaker classify`` job.

Each instance of a Processing job writes its own ``OUT/JOB/<host>/`` (maps, ``manifest.jsonl`` and the
products of its share). What a user wants at the end is one thing to open: the merge reads every host's
manifest and writes, at ``OUT/JOB/``, the products ``geossl classify`` writes for one folder (VRTs, the
optional mosaic, ``areas.csv``, the STAC Collection) over all hosts' finished maps, paths relative to the
job folder so it can move (a VRT in an S3 prefix resolves its ``algo-N/...`` sources there through GDAL's
``/vsis3/``). On S3 the job prefix is mirrored into a local cache first (only new or changed objects: a
second merge downloads nothing new), the products are made there, and only they are uploaded back.
"""

from __future__ import annotations

import sys
from pathlib import Path

from geossl.data.s3 import is_s3, sync_prefix, upload_dir
from geossl.predict.manifest import MANIFEST_NAME

PRODUCT_SUFFIXES = (".vrt", ".csv", ".json", ".tif")  # what the merge writes at the job folder's top level


def host_folders(job_dir: Path) -> list[Path]:
    """The job folder's subfolders holding a ``manifest.jsonl`` (``algo-1``, ``algo-2``...), by name."""
    return sorted(p.parent for p in job_dir.glob(f"*/{MANIFEST_NAME}"))


def merge_job_folder(job_dir: Path, model_dir: Path, *, mosaic: bool = False, mosaic_crs: str | None = None) -> str:
    """Write the products over every host folder of ``job_dir``; returns the one-line summary."""
    from geossl.models.landcover import load_landcover_model
    from geossl.predict.collection import finished_maps, products_of
    from geossl.predict.manifest import Manifest

    hosts = host_folders(job_dir)
    if not hosts:
        raise FileNotFoundError(f"{job_dir}: no host folder with a {MANIFEST_NAME} (algo-1/, ...): "
                                "give the job's output folder OUT/JOB")
    maps, failed, dense = [], 0, False
    for host in hosts:
        latest = Manifest(host).latest
        maps += finished_maps(job_dir, latest, host)
        failed += sum(record.get("status") == "failed" for record in latest.values())
        dense |= any((record.get("options") or {}).get("dense") for record in latest.values())
    model = load_landcover_model(model_dir)
    summary = products_of(job_dir, maps, model, model_dir, dense=dense, mosaic=mosaic, mosaic_crs=mosaic_crs)
    return f"{len(hosts)} host folder(s), {failed} failed scene(s) in their manifests; {summary}"


def merge_job(job: str, model: str, cache: Path, *, mosaic: bool = False, mosaic_crs: str | None = None) -> str:
    """:func:`merge_job_folder` over a local job folder, or over an S3 job prefix mirrored into ``cache``
    (the model too, when it is on S3), uploading the products back beside the host folders."""
    model_dir = Path(model)
    if is_s3(model):
        model_dir = cache / "model"
        sync_prefix(model, model_dir)
    if not is_s3(job):
        return merge_job_folder(Path(job), model_dir, mosaic=mosaic, mosaic_crs=mosaic_crs)
    job_dir = cache / "job"
    sync_prefix(job, job_dir)
    summary = merge_job_folder(job_dir, model_dir, mosaic=mosaic, mosaic_crs=mosaic_crs)
    products = [p for p in job_dir.iterdir() if p.is_file() and p.suffix in PRODUCT_SUFFIXES]
    uploaded = upload_dir(job_dir, job, files=products)
    print(f"merge: {len(uploaded)} product file(s) uploaded to {job.rstrip('/')}/", file=sys.stderr)
    return summary
