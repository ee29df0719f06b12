"""`geossl classify`'s run manifest (issue #25): reruns skip current scenes and redo changed ones, a failing
scene is recorded and the others go on, same-named scenes get distinct outputs. Real scenes copied into
tmp_path (never written in place), a tiny random model, 32 px windows every 64 px: a run takes a second."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import rasterio

from bench.synthetic import make_tiny_model
from geossl.cli import main
from geossl.predict.common import unique_stems
from geossl.predict.manifest import MANIFEST_NAME, Manifest

LANDSAT, NAIP = "landsat7_300m_RGB.byte.tif", "naip_5m_north_dakota_2019.tif"
FAST = ("--tile-size", "32", "--stride", "64", "--bands", "1,2,3", "--no-preview", "--quiet")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("manifest-models")
    return {"a": make_tiny_model(root / "a", img_size=32), "b": make_tiny_model(root / "b", img_size=32, seed=1)}


def classify(model: Path, inputs: list[Path] | list[str], out: Path, *extra: str) -> int:
    return main(["classify", "--model", str(model), "--input", *map(str, inputs), "--out", str(out), *FAST, *extra])


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def mtimes(out: Path, stem: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob(f"{stem}_*"))}


def latest(out: Path) -> dict[str, dict]:
    """The manifest's latest record per scene, by file name (the scenes of a test have distinct names)."""
    return {Path(key).name: record for key, record in Manifest(out).latest.items()}


def summary(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_rerun_skips_current_scenes_and_redoes_changed_ones(scenes_dir: Path, models: dict[str, Path],
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = copy(scenes_dir / LANDSAT, tmp_path / "in" / "a.tif"), copy(scenes_dir / NAIP, tmp_path / "in" / "b.tif")
    out = tmp_path / "maps"
    assert classify(models["a"], [tmp_path / "in"], out) == 0
    assert "2 done, 0 skipped as current, 0 failed" in summary(capsys)
    records = latest(out)
    assert {k: r["status"] for k, r in records.items()} == {"a.tif": "done", "b.tif": "done"}
    rec = records["b.tif"]
    assert rec["scene"] == str(b.resolve()) and rec["stem"] == "b" and rec["input"]["size"] == b.stat().st_size
    assert rec["model"]["hash"].startswith("sha256:") and rec["options"]["stride"] == 64
    assert rec["options"]["bands"] == [1, 2, 3] and rec["outputs"]["classes"] == "b_classes.tif"
    first = {s: mtimes(out, s) for s in "ab"}
    assert len(first["a"]) == 3  # classes, tiles GeoJSON, STAC Item

    assert classify(models["a"], [tmp_path / "in"], out) == 0  # the same command again: nothing to do
    assert "0 done, 2 skipped as current, 0 failed" in summary(capsys)
    assert {s: mtimes(out, s) for s in "ab"} == first

    st = b.stat()
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # "touched": only b is redone
    assert classify(models["a"], [tmp_path / "in"], out) == 0
    assert "1 done, 1 skipped as current, 0 failed" in summary(capsys)
    assert mtimes(out, "a") == first["a"] and all(mtimes(out, "b")[n] > t for n, t in first["b"].items())

    assert classify(models["b"], [tmp_path / "in"], out) == 0  # another model: both redone, no --overwrite needed
    assert "2 done, 0 skipped as current, 0 failed" in summary(capsys)
    assert latest(out)["a.tif"]["model"]["hash"] != rec["model"]["hash"]
    second = {s: mtimes(out, s) for s in "ab"}

    assert classify(models["b"], [tmp_path / "in"], out, "--stride", "32") == 1  # other pixel options: refused
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exist" in err and "made with other options: stride 64 -> 32" in err
    assert "--overwrite" in err and {s: mtimes(out, s) for s in "ab"} == second
    assert classify(models["b"], [tmp_path / "in"], out, "--stride", "32", "--overwrite") == 0
    assert "2 done" in summary(capsys) and latest(out)["a.tif"]["options"]["stride"] == 32

    (out / "c_classes.tif").write_text("not ours")  # a file the manifest does not record: --overwrite rule
    copy(a, tmp_path / "in" / "c.tif")
    assert classify(models["b"], [tmp_path / "in"], out, "--stride", "32") == 1
    err = capsys.readouterr().err.strip()
    assert f"{out / 'c_classes.tif'} already exists (pass --overwrite to replace)" in err
    assert (out / "c_classes.tif").read_text() == "not ours"


def test_failing_scenes_are_recorded_and_the_others_go_on(scenes_dir: Path, models: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    copy(scenes_dir / LANDSAT, src / "a.tif")
    (src / "b.tif").write_bytes((scenes_dir / NAIP).read_bytes()[:1_500_000])  # header fine, data cut: read error
    (src / "c.tif").write_bytes((scenes_dir / LANDSAT).read_bytes()[:300_000])  # directory cut off: unopenable
    with rasterio.open(scenes_dir / LANDSAT) as s:  # one band: wrong band count for --bands 1,2,3
        profile = {**s.profile, "count": 1}
        with rasterio.open(src / "d.tif", "w", **profile) as d:
            d.write(s.read(1), 1)
    out = tmp_path / "maps"
    assert classify(models["a"], [src], out, "--no-check-stats") == 1  # no stats check: b fails mid-map
    captured = capsys.readouterr()
    assert "1 done, 0 skipped as current, 3 failed" in captured.out.strip().splitlines()[-1]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("geossl classify: error: ") for e in errors)
    records = latest(out)
    assert records["a.tif"]["status"] == "done"
    for name, words in (("b.tif", "cannot read window"), ("c.tif", "cannot open"), ("d.tif", "has 1 bands")):
        assert records[name]["status"] == "failed", name
        reason = records[name]["reason"]
        assert str(src / name) in reason and words in reason and "\n" not in reason
    # nothing half-written: no outputs of the failed scenes, no temporaries
    # (the folder's products over the one finished map: predict.collection)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("a_")) == [
        ".lock", "areas.csv", "classes.vrt", "collection.json", MANIFEST_NAME]
    assert [r.split(",")[0] for r in (out / "areas.csv").read_text().splitlines()[1:]] == ["a"] * len(
        (out / "areas.csv").read_text().splitlines()[1:])  # only the done scene is in the products

    copy(scenes_dir / NAIP, src / "b.tif")  # fixed; c and d still broken
    assert classify(models["a"], [src], out, "--no-check-stats") == 1
    assert "1 done, 1 skipped as current, 2 failed" in summary(capsys)
    assert latest(out)["b.tif"]["status"] == "done" and (out / "b_classes.tif").is_file()
    copy(scenes_dir / LANDSAT, src / "c.tif")
    (src / "d.tif").unlink()
    assert classify(models["a"], [src], out, "--no-check-stats") == 0
    assert "1 done, 2 skipped as current, 0 failed" in summary(capsys)


def test_same_named_scenes_get_distinct_stable_names(scenes_dir: Path, models: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    for rel in ("2019/x.tif", "2020/x.tif", "y.tif"):
        copy(scenes_dir / LANDSAT, src / rel)
    out = tmp_path / "maps"
    assert classify(models["a"], [src], out) == 0
    stems = {Path(k).relative_to(src.resolve()).as_posix(): r["stem"] for k, r in Manifest(out).latest.items()}
    assert stems == {"2019/x.tif": "x_2019", "2020/x.tif": "x_2020", "y.tif": "y"}  # y keeps today's name
    for stem in stems.values():
        item = json.loads((out / f"{stem}_classes.stac.json").read_text())
        assert item["id"] == f"{stem}_classes" and (out / f"{stem}_classes.tif").is_file()
    assert classify(models["a"], [src], out) == 0
    assert "0 done, 3 skipped as current" in summary(capsys)

    # names are stable: a scene keeps the name the manifest gave it when a same-named one joins later
    solo = tmp_path / "solo"
    assert classify(models["a"], [src / "2019" / "x.tif"], solo) == 0 and (solo / "x_classes.tif").is_file()
    assert classify(models["a"], [src / "2019" / "x.tif", src / "2020" / "x.tif"], solo) == 0
    assert "1 done, 1 skipped as current" in summary(capsys)
    assert sorted(p.name for p in solo.glob("*_classes.tif")) == ["x_2020_classes.tif", "x_classes.tif"]


def test_s3_scenes_are_recorded_by_uri_size_and_time(moto_server: str, scenes_dir: Path, models: dict[str, Path],
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geossl.data.s3 import s3_client

    s3_client().create_bucket(Bucket="maps")
    s3_client().upload_file(str(scenes_dir / LANDSAT), "maps", "in/a.tif")
    out = tmp_path / "maps"
    assert classify(models["a"], ["s3://maps/in/"], out) == 0
    record = Manifest(out).latest["s3://maps/in/a.tif"]
    assert record["status"] == "done" and record["input"]["size"] == (scenes_dir / LANDSAT).stat().st_size
    assert record["input"]["mtime"] and record["input"]["etag"]
    assert classify(models["a"], ["s3://maps/in/"], out) == 0
    assert "0 done, 1 skipped as current" in summary(capsys)


def test_unique_stems() -> None:
    assert unique_stems(["/d/2019/x.tif", "/d/2020/x.tif", "/d/y.tif"]) == {
        "/d/2019/x.tif": "x_2019", "/d/2020/x.tif": "x_2020", "/d/y.tif": "y"}
    assert unique_stems(["/a/b/c/x.tif", "s3://a/d/c/x.tif"]) == {"/a/b/c/x.tif": "x_b_c", "s3://a/d/c/x.tif": "x_d_c"}
    same_folder = unique_stems(["/d/x.tif", "/d/x.tiff"])  # folders cannot tell them apart: a hash of the URI
    assert len(set(same_folder.values())) == 2 and all(len(s) == len("x_") + 8 for s in same_folder.values())
    assert unique_stems(["/e/x.tif"], {"/d/x.tif": "x"}) == {"/e/x.tif": "x_e"}  # "x" is another scene's
    assert unique_stems(["/d/x_2020.tif", "/d/2020/x.tif", "/e/2020/x.tif"]) == {
        "/d/x_2020.tif": "x_2020", "/d/2020/x.tif": "x_d_2020", "/e/2020/x.tif": "x_e_2020"}


def test_a_name_depends_on_the_inputs_not_on_which_scenes_an_earlier_run_reached() -> None:
    """A run killed after naming /d/a/x.tif must not let a rerun name /d/b/x.tif plain "x": every name equals
    the one an uninterrupted run gives, whichever subset the manifest already holds."""
    inputs = ["/d/a/x.tif", "/d/b/x.tif", "/d/a/y.tif", "/d/b/z.tif"]
    full = unique_stems(inputs)
    assert full == {"/d/a/x.tif": "x_a", "/d/b/x.tif": "x_b", "/d/a/y.tif": "y", "/d/b/z.tif": "z"}
    for k in range(len(inputs) + 1):
        assert unique_stems(inputs, {uri: full[uri] for uri in inputs[:k]}) == full


def test_a_torn_manifest_line_is_ignored_and_not_glued_onto(tmp_path: Path) -> None:
    good = {"scene": "/d/a.tif", "stem": "a", "status": "done"}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(good) + "\n" + '{"scene": "/d/b.tif", "st')
    manifest = Manifest(tmp_path)
    assert list(manifest.latest) == ["/d/a.tif"]
    manifest.append({"scene": "/d/b.tif", "stem": "b", "status": "done"})
    assert sorted(Manifest(tmp_path).latest) == ["/d/a.tif", "/d/b.tif"]
