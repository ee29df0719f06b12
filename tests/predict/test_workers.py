"""`geossl classify --workers N` (issue #25): scenes mapped on N spawned processes give the very maps one
process gives, failures are recorded per scene, and a stop sent to the whole process group leaves nothing
half-written under a final name; the next run finishes the job. Real scenes copied into tmp_path."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from bench.synthetic import make_tiny_model
from geossl.cli import main
from geossl.predict.manifest import Manifest
from geossl.predict.workers import threads_per_worker

pytestmark = pytest.mark.slow  # long (subprocesses, real data): in make test, not make check

LANDSAT, NAIP = "landsat7_300m_RGB.byte.tif", "naip_5m_north_dakota_2019.tif"
FAST = ("--tile-size", "32", "--stride", "64", "--bands", "1,2,3", "--no-preview", "--quiet")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("workers-model") / "m", img_size=32)


@pytest.fixture()
def scenes(scenes_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate((LANDSAT, NAIP, LANDSAT, NAIP)):
        shutil.copyfile(scenes_dir / name, folder / f"s{i}.tif")
    return folder


def maps_of(out: Path) -> dict[str, tuple[np.ndarray, dict, dict]]:
    found = {}
    for path in sorted(out.glob("*_classes.tif")):
        with rasterio.open(path) as src:
            found[path.name] = (src.read(), {k: v for k, v in src.profile.items() if k != "blockxsize"}, src.tags())
    return found


def assert_same_maps(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0], err_msg=name)
        assert a[name][1] == b[name][1] and a[name][2] == b[name][2], name


def test_threads_are_shared_out_equally_and_never_zero() -> None:
    assert threads_per_worker(2, cpus=16) == 8
    assert threads_per_worker(3, cpus=16) == 5
    assert threads_per_worker(4, cpus=2) == 1


def test_two_workers_make_the_maps_one_process_makes(model: Path, scenes: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    (scenes / "bad.tif").write_bytes((scenes / "s0.tif").read_bytes()[:300_000])  # unopenable: one failure
    assert main(["classify", "--model", str(model), "--input", str(scenes), "--out", str(one), *FAST]) == 1
    capsys.readouterr()
    assert main(["classify", "--model", str(model), "--input", str(scenes), "--out", str(two), *FAST,
                 "--workers", "2"]) == 1
    captured = capsys.readouterr()
    assert "4 done, 0 skipped as current, 1 failed" in captured.out
    assert captured.err.count("geossl classify: error: ") == 1 and "bad.tif" in captured.err
    assert_same_maps(maps_of(one), maps_of(two))
    statuses = {Path(k).name: r["status"] for k, r in Manifest(two).latest.items()}
    assert statuses == {"s0.tif": "done", "s1.tif": "done", "s2.tif": "done", "s3.tif": "done", "bad.tif": "failed"}

    # a rerun with workers skips what is done and current
    assert main(["classify", "--model", str(model), "--input", str(scenes), "--out", str(two), *FAST,
                 "--workers", "2"]) == 1
    assert "0 done, 4 skipped as current, 1 failed" in capsys.readouterr().out


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and signals as on Linux")
@pytest.mark.parametrize("workers", ["1", "2"])  # 1: the one-process path, where SIGTERM is made an interrupt
def test_sigterm_to_the_process_group_leaves_no_half_written_map(model: Path, scenes: Path, tmp_path: Path,
                                                                 workers: str) -> None:
    reference, out = tmp_path / "reference", tmp_path / "stopped"
    assert main(["classify", "--model", str(model), "--input", str(scenes), "--out", str(reference), *FAST]) == 0
    command = [sys.executable, "-m", "geossl.cli", "classify", "--model", str(model), "--input", str(scenes),
               "--out", str(out), *FAST, "--stride", "8", "--workers", workers]  # 64x the windows: slow enough to stop
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob(".*partial")):  # a map is being written
        time.sleep(0.05)
    assert list(out.glob(".*partial")), "no map was being written within 2 minutes"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in err, err[-2000:]
    assert not list(out.glob("*partial*")), "temporary outputs left behind"
    for path in out.glob("*_classes.tif"):  # whatever has a final name is a whole map
        with rasterio.open(path) as src:
            src.read()
    statuses = {r["status"] for r in Manifest(out).latest.values()}
    assert statuses <= {"started", "done", "failed"} and "started" in statuses | {"done"}

    # the same command, without the stop and at the reference's window size, ends with the reference maps
    assert main(["classify", "--model", str(model), "--input", str(scenes), "--out", str(out), *FAST,
                 "--workers", "2", "--overwrite"]) == 0
    assert_same_maps(maps_of(reference), maps_of(out))
