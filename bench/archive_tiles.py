"""Many-scenes mode of bench/tiles.py: random tiles from an archive of N scene files, per core.

The archive is N links to the real NAIP scene (the same file N times, as in the issue that asked for
this: the cost measured is per scene *file*, not per pixel). Measured in one run, single process,
pinned to one core, 64 px tiles:

1. random scene tiles with one handle per scene kept forever (``max_open`` = N: the old behaviour),
   the first 3,000 tiles (every scene still to open) and the next ones;
2. the same with the bounded LRU pool (``max_open`` 64);
3. start-up: reading every header vs reusing a current scene index;
4. shards (``geossl chips``) read from the local disk in the chunk-local training order;
5. the same shards from a local S3 server (moto on 127.0.0.1): mirrored to local disk once (timed
   apart), then read like local shards.

The page cache is warm for the scene (one file) and the shards; the figures compare reading layouts,
not disks. Open file descriptors are counted from ``/proc/self/fd``.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

NAIP = "naip_5m_north_dakota_2019.tif"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_archive(folder: Path, scene: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        link = folder / f"scene_{i:05d}.tif"
        if not link.exists():
            link.symlink_to(scene)
        paths.append(str(link))
    return paths


def time_random(paths: list[str], max_open: int, first: int, then: int) -> dict[str, Any]:
    """Tiles/s for the first ``first`` tiles and the ``then`` after; peak descriptors; a failure is a result."""
    from geossl.data.scenes import RandomTileDataset

    base = open_fds()
    t0 = time.perf_counter()
    ds = RandomTileDataset(paths, tile_size=64, length=first + then, min_valid_fraction=0.0, max_open=max_open)
    out: dict[str, Any] = {"max_open": max_open, "startup_s": round(time.perf_counter() - t0, 3)}
    peak = 0
    try:
        for label, start, stop in (("first", 0, first), ("then", first, first + then)):
            t = time.perf_counter()
            for i in range(start, stop):
                ds[i]
                if i % 100 == 0:
                    peak = max(peak, open_fds() - base)
            out[f"{label}_tiles_per_s"] = round((stop - start) / (time.perf_counter() - t), 1)
    except OSError as exc:  # "Too many open files": what an unbounded pool does past the limit
        out["failed"] = f"{type(exc).__name__}: {exc}"[:160]
    out["peak_open_files"] = max(peak, open_fds() - base)
    out["handles_opened"] = ds.pool.opens
    ds.pool.close()
    return out


def time_startup(paths: list[str], index: Path) -> dict[str, float]:
    from geossl.data.scene_index import scene_infos

    t = time.perf_counter()
    scene_infos(paths, None, workers=1)
    read = time.perf_counter() - t
    t = time.perf_counter()
    scene_infos(paths, index, workers=1)  # build
    build = time.perf_counter() - t
    t = time.perf_counter()
    _, status = scene_infos(paths, index)
    reuse = time.perf_counter() - t
    assert status == "reused"
    return {"read_headers_s": round(read, 3), "build_index_s": round(build, 3), "reuse_index_s": round(reuse, 3)}


def time_shards(input_dir: str, n: int, cache_dir: str | None = None) -> tuple[float, float]:
    """(seconds to the first item: opening, or mirroring S3 shards; tiles/s after, in training order)."""
    from geossl.data.shards import ShardDataset

    t = time.perf_counter()
    ds = ShardDataset(input_dir, cache_dir=cache_dir)
    order = ds.epoch_order(seed=0, epoch=0)[:n]
    ds[order[0]]
    first = time.perf_counter() - t
    t = time.perf_counter()
    for i in order:
        ds[i]
    return first, len(order) / (time.perf_counter() - t)


def run_many(scenes_dir: Path, n_scenes: int, n_tiles: int, n_chips: int, work: Path | None = None) -> dict[str, Any]:
    """All five measurements; returns the summary (figures, ratios, goals)."""
    from geossl.data.shards import ChipPlan, cut_shards

    work = Path(work or tempfile.mkdtemp(prefix="geossl-archive-"))
    paths = make_archive(work / "archive", scenes_dir / NAIP, n_scenes)
    first = min(3000, n_tiles)
    unbounded = time_random(paths, max_open=n_scenes, first=first, then=n_tiles)
    bounded = time_random(paths, max_open=64, first=first, then=n_tiles)
    startup = time_startup(paths, work / "scenes.parquet")
    chips = work / "chips"
    shutil.rmtree(chips, ignore_errors=True)
    t = time.perf_counter()
    cut_shards(ChipPlan(scenes=paths, tile_size=64, mode="random", count=n_chips, stride=None, bands=None,
                       min_valid_fraction=0.0, seed=0, part_size=n_chips), chips, workers=1, progress=False,
              index=work / "scenes.parquet")
    cut_s = time.perf_counter() - t
    _, local = time_shards(str(chips), n_chips)
    mirror_s, remote = _time_s3(chips, n_chips, work / "s3-cache") or (None, None)
    shards = {"chips": n_chips, "cut_s": round(cut_s, 2), "local_tiles_per_s": round(local, 1),
              "s3_tiles_per_s": round(remote, 1) if remote else None,
              "s3_mirror_s": round(mirror_s, 2) if mirror_s is not None else None}
    base = bounded.get("then_tiles_per_s") or 1.0
    return {"scenes": n_scenes, "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "random_unbounded": unbounded, "random_lru": bounded, "startup": startup, "shards": shards,
            "ratios": {"shards_local_vs_lru": round(local / base, 2),
                       "shards_s3_vs_lru": round(remote / base, 2) if remote else None},
            "goals": {"shards_5000_per_core": local >= 5000 and (remote or 0) >= 5000,
                      "open_files_bounded": bounded["peak_open_files"] <= 64 + 8,
                      "index_startup_under_2s": startup["reuse_index_s"] < 2.0}}


def _time_s3(chips: Path, n: int, cache: Path) -> tuple[float, float] | None:
    """The shards uploaded to a moto S3 server on 127.0.0.1, read through LitData; None without moto."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    try:
        from geossl.data.s3 import s3_client, upload_dir

        s3_client().create_bucket(Bucket="bench")
        upload_dir(chips, "s3://bench/chips/")
        return time_shards("s3://bench/chips/", n, cache_dir=str(cache))
    finally:
        server.stop()
        os.environ.pop("AWS_ENDPOINT_URL", None)


def print_table(summary: dict[str, Any]) -> None:
    u, b, s, st = summary["random_unbounded"], summary["random_lru"], summary["shards"], summary["startup"]
    print(f"{summary['scenes']} scene files, 64 px tiles, one core (open-file limit {summary['nofile_limit']}):")
    for name, r in (("one handle per scene", u), ("LRU pool of 64", b)):
        tail = f"; FAILED: {r['failed']}" if "failed" in r else ""
        print(f"  random tiles, {name}: first {r.get('first_tiles_per_s', '-')} tiles/s, then "
              f"{r.get('then_tiles_per_s', '-')} tiles/s; peak open files {r['peak_open_files']}{tail}")
    print(f"  start-up: headers {st['read_headers_s']} s, build index {st['build_index_s']} s, "
          f"reuse index {st['reuse_index_s']} s")
    print(f"  shards ({s['chips']} chips, cut in {s['cut_s']} s): local {s['local_tiles_per_s']} tiles/s; "
          f"S3 (moto): mirrored in {s['s3_mirror_s']} s, then {s['s3_tiles_per_s']} tiles/s")
