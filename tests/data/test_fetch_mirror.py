"""The real table against the real data: shipped files, pinned checksums, the real scenes fetched end to
end from a local mirror (bench/serve_mirror.py) through ``geossl data fetch``, ``geossl demo --offline``.

Everything stays on 127.0.0.1 (the ``local_only`` guard of test_fetch.py applies here too).
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_fetch import closed_port, local_only, make_dataset, servers  # noqa: F401 (local_only: autouse guard)

from bench.serve_mirror import MirrorServer, build_mirror
from geossl.cli import main
from geossl.data import fetch as F

SCENE_FILES = sorted(s.name for s in F.DATASETS["scenes"].sources)


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Callable[..., MirrorServer]]:
    with servers(tmp_path / "mirror") as start:
        yield start


def test_the_shipped_split_file_is_the_shared_one_byte_for_byte(shared_data):
    rgb, ms = shared_data / "eurosat-rgb", shared_data / "eurosat-ms"
    assert F.resource_bytes("eurosat_rgb_splits.csv.gz") == (rgb / "splits.csv").read_bytes()
    assert F.resource_bytes("eurosat_ms_labels.csv.gz") == (ms / "labels.csv").read_bytes()
    for folder in ("eurosat-rgb", "eurosat-ms"):
        assert F.resource_bytes("eurosat_LICENSE.txt") == (shared_data / folder / "LICENSE.txt").read_bytes()
    for resource, dest in F.DATASETS["scenes"].resources:
        assert F.resource_bytes(resource) == (shared_data / "scenes" / dest).read_bytes()
    rows = list(csv.DictReader(io.StringIO(F.resource_bytes("eurosat_rgb_splits.csv.gz").decode())))
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts == {"train": 19_440, "val": 2_160, "test": 5_400}


def test_the_ms_subset_is_the_shared_one(shared_data):
    folder = shared_data / "eurosat-ms"
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*.tif")}
    assert F._subset(F.DATASETS["eurosat-ms"]) == on_disk and len(on_disk) == 820


def test_the_table_is_well_formed():
    for name, ds in F.DATASETS.items():
        assert name == ds.name and ds.license and ds.sources and len(ds.content_sha256) == 64
        for src in ds.sources:
            algorithm, _, hexd = src.checksum.partition(":")
            assert src.url.startswith("https://") and "/" not in src.name
            assert (algorithm, len(hexd)) in {("md5", 32), ("sha256", 64)}, src
            assert (src.dest is None) == bool(src.strip), src  # an archive: a prefix; a single file: a place
        for resource, _ in ds.resources:
            assert F.resource_bytes(resource)
    names = [s.name for ds in F.DATASETS.values() for s in ds.sources]
    assert len(names) == len(set(names))  # one flat mirror folder


def test_real_scenes_end_to_end_from_a_local_mirror(shared_data, serve, tmp_path, capsys):
    server = serve()
    built = build_mirror(shared_data, server.folder, ["scenes"])  # what bench/serve_mirror.py serves
    assert sorted(p.name for p in built) == SCENE_FILES
    root = tmp_path / "data"
    argv = ["data", "fetch", "scenes", "--root", str(root), "--mirror", server.url, "--no-progress"]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"scenes: fetched and verified -> {root / 'scenes'} (6 files, 4.9 MB)\n"
    for path in (shared_data / "scenes").iterdir():
        assert (root / "scenes" / path.name).read_bytes() == path.read_bytes(), path.name
    assert sorted(p.name for p in (root / "scenes").iterdir()) == sorted(
        p.name for p in (shared_data / "scenes").iterdir())
    assert sorted(p for _, p, _ in server.requests) == [f"/{n}" for n in SCENE_FILES]
    assert sorted(p.name for p in root.iterdir()) == ["scenes"]  # no downloads or work folders left
    assert main(["data", "fetch", "scenes", "--root", str(root), "--mirror", server.url]) == 0
    assert "present and verified" in capsys.readouterr().out and len(server.requests) == 3


def test_serve_mirror_archives_round_trip_in_the_public_layout(serve, tmp_path):
    server = serve()
    ds = make_dataset(server)  # pins the content of tmp_path/expected/tiny; its zip is replaced below
    (server.folder / "tiny.zip").unlink()
    data = tmp_path / "expected"
    built = build_mirror(data, server.folder, ["tiny"], datasets={"tiny": ds})
    assert built == [server.folder / "tiny.zip"]
    with zipfile.ZipFile(built[0]) as zf:  # the public layout, without the files geossl ships itself
        assert sorted(zf.namelist()) == sorted("2750/" + p.relative_to(data / "tiny").as_posix()
                                               for p in (data / "tiny").rglob("*.jpg"))
    mtime = built[0].stat().st_mtime_ns
    build_mirror(data, server.folder, ["tiny"], datasets={"tiny": ds})
    assert built[0].stat().st_mtime_ns == mtime  # an existing file is kept
    F.fetch_dataset(ds, tmp_path / "data", mirror=server.url, progress=False)
    assert F.content_digest(tmp_path / "data" / "tiny") == F.content_digest(data / "tiny")


def test_data_list_shows_sources_licences_and_what_is_present(shared_data, capsys):
    assert main(["data", "list", "--root", str(shared_data)]) == 0
    out = capsys.readouterr().out
    for ds in F.DATASETS.values():
        assert f"{ds.name}: present\n" in out and ds.license in out
        assert all(src.url in out for src in ds.sources)


def test_demo_offline_without_data_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GEOSSL_DATA", raising=False)
    assert main(["demo", "--offline", "--data", str(tmp_path), "--run-dir", str(tmp_path / "run")]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("geossl demo: error: eurosat-rgb is missing from")
    assert f"put the eurosat-rgb folder at {tmp_path / 'eurosat-rgb'}" in line and "GEOSSL_DATA" in line
    assert captured.out == "" and not (tmp_path / "run").exists()


def test_demo_without_network_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(F.MIRROR_ENV, f"http://127.0.0.1:{closed_port()}")
    assert main(["demo", "--data", str(tmp_path), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("geossl demo: fetching eurosat-rgb (EuroSAT RGB")
    assert "scenes (3 sample scenes" in err[0] and f"into {tmp_path}" in err[0]
    (line,) = err[1:]
    assert "cannot be reached (connection refused)" in line and f"{tmp_path / 'eurosat-rgb'}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-made


def test_data_fetch_help_is_fast_and_light():
    code = ("import sys, time; t = time.perf_counter(); from geossl.cli import main\n"
            "try:\n    main(['data', 'fetch', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('torch', 'numpy', 'rasterio', 'tqdm') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint('seconds', time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--mirror" in out and "--offline" in out and float(out.rsplit(" ", 1)[1]) < 2.0


@pytest.mark.parametrize("name", ["eurosat-rgb", "eurosat-ms", "scenes", "timeseries"])
def test_the_pins_are_those_of_the_shared_copy_and_verify_without_a_request(shared_data, name):
    """The shared copy verifies against the table (hashing every file), with no request (no server)."""
    ds = F.DATASETS[name]
    line = F.fetch_dataset(ds, shared_data, mirror=f"http://127.0.0.1:{closed_port()}", progress=False)
    assert line == f"{name}: present and verified in {shared_data / name} ({ds.files:,} files)"
    files = [p for p in (shared_data / name).rglob("*") if p.is_file()]
    assert (len(files), sum(p.stat().st_size for p in files)) == (ds.files, ds.size)


OPENGEOS = "https://raw.githubusercontent.com/opengeos/data/main/"


def test_the_time_series_are_pinned_to_their_opengeos_paths_and_the_shared_files(shared_data):
    """Each file of ../shared/data/timeseries comes from its opengeos/data path (naip/<name>, landsat/<year>),
    with the sha256 and size of the shared copy; the NAIP 2019 date is the scenes' NAIP file, renamed."""
    ds = F.DATASETS["timeseries"]
    folder = shared_data / "timeseries"
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.tif"))
    assert sorted(s.dest for s in ds.sources) == on_disk and len(on_disk) == 16
    for src in ds.sources:
        series, _, file = src.dest.partition("/")
        public = f"naip/{file}" if series == "naip_north_dakota" else f"landsat/{file}"
        assert series in ("naip_north_dakota", "landsat_pucallpa") and src.url == OPENGEOS + public, src
        assert src.name == (file if series == "naip_north_dakota" else f"landsat_pucallpa_{file}"), src
        assert src.checksum == f"sha256:{F.file_hash(folder / src.dest, 'sha256')}"
        assert src.size == (folder / src.dest).stat().st_size
    naip_2019 = next(s for s in ds.sources if s.dest.endswith("_20190904.tif"))
    assert naip_2019.checksum == next(s.checksum for s in F.DATASETS["scenes"].sources if s.name.startswith("naip"))
    for resource, dest in ds.resources:
        assert F.resource_bytes(resource) == (folder / dest).read_bytes()


def test_time_series_end_to_end_from_a_local_mirror(shared_data, serve, tmp_path, capsys):
    """Two folders of one dataset fetched file by file from a flat mirror, byte-identical to the shared copy."""
    server = serve()
    built = build_mirror(shared_data, server.folder, ["timeseries"])
    assert sorted(p.name for p in built) == sorted(s.name for s in F.DATASETS["timeseries"].sources)
    root = tmp_path / "data"
    assert main(["data", "fetch", "timeseries", "--root", str(root), "--mirror", server.url, "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"timeseries: fetched and verified -> {root / 'timeseries'} (18 files")
    for path in (shared_data / "timeseries").rglob("*"):
        if path.is_file():
            rel = path.relative_to(shared_data / "timeseries")
            assert (root / "timeseries" / rel).read_bytes() == path.read_bytes(), rel
    assert sorted(p.name for p in root.iterdir()) == ["timeseries"]  # no downloads or work folders left
