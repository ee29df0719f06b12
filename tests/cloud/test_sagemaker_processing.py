"""``geossl sagemaker classify|embed`` (issue #25): the Processing job request of a dry run (scenes sharded by
key, the model replicated, one output prefix per job and host), the sharding rule against a reference, the
container's command, and a two-instance local rehearsal whose maps equal a plain local ``geossl classify``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from bench.synthetic import make_tiny_model
from geossl.cli import main
from geossl.cloud.processing import container_command, sagemaker_manifest, shard_by_key
from geossl.settings import REPO_ROOT

JOB_YAML = REPO_ROOT / "configs" / "sagemaker_dino.yaml"
ACCOUNT = ["aws.region=us-east-1", "aws.role=arn:aws:iam::123456789012:role/geossl-sagemaker",
           "aws.bucket=geossl-test", "compute.instance_type=ml.c5.2xlarge", "compute.spot=false"]
FAST = "--tile-size 32 --stride 64 --bands 1,2,3 --no-preview --quiet"
LANDSAT, NAIP = "landsat7_300m_RGB.byte.tif", "naip_5m_north_dakota_2019.tif"


def test_dry_run_shards_the_scenes_and_replicates_the_model(aws_env, monkeypatch, capsys) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # a real call would head for amazonaws.com
    code = main(["sagemaker", "classify", "--config", str(JOB_YAML), "--dry-run", "--model", "s3://geossl-test/model/",
                 "--scenes", "s3://geossl-test/scenes/", "--out", "s3://geossl-test/maps", "--args", FAST,
                 *ACCOUNT, "compute.instance_count=3", "run_name=maps"])
    out, err = capsys.readouterr()
    assert code == 0, err
    req = json.loads(out)
    inputs = {i["InputName"]: i["S3Input"] for i in req["ProcessingInputs"]}
    assert inputs["scenes"]["S3Uri"] == "s3://geossl-test/scenes/"
    assert inputs["scenes"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert inputs["scenes"]["LocalPath"] == "/opt/ml/processing/input/scenes"
    assert inputs["model"]["S3DataDistributionType"] == "FullyReplicated"
    assert inputs["model"]["LocalPath"] == "/opt/ml/processing/input/model"
    assert req["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 3
    assert req["AppSpecification"]["ContainerArguments"] == ["classify", *FAST.split()]
    assert "cpu" in req["AppSpecification"]["ImageUri"]  # an ml.c5 type gets the CPU image
    (output,) = req["ProcessingOutputConfig"]["Outputs"]
    job_name = req["ProcessingJobName"]
    assert job_name.startswith("maps-") and output["S3Output"]["S3Uri"] == f"s3://geossl-test/maps/{job_name}"
    assert "nothing sent" in err and f"s3://geossl-test/maps/{job_name}/<host>/" in err


@pytest.mark.parametrize("bad", ["--out x", "--model m", "--input a.tif"])
def test_options_the_job_sets_are_refused_in_args(bad: str, capsys) -> None:
    code = main(["sagemaker", "embed", "--config", str(JOB_YAML), "--dry-run", "--model", "s3://geossl-test/enc/",
                 "--scenes", "s3://geossl-test/scenes/", "--out", "s3://geossl-test/emb/", "--args", bad, *ACCOUNT])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and f"--args: {bad.split()[0]} is set by the job" in err, err


@pytest.mark.parametrize(("command", "bad", "reason"), [
    ("classify", "--bogus 3", "unrecognized arguments: --bogus 3"),
    ("classify", "--tile-size x", "argument --tile-size"),
    ("embed", "--probs", "unrecognized arguments: --probs"),  # a classify option embed lacks
])
def test_args_the_command_refuses_stop_before_the_job(command: str, bad: str, reason: str, capsys) -> None:
    """``--args`` is parsed by the command's own parser at launch, not first inside a paid-for container."""
    code = main(["sagemaker", command, "--config", str(JOB_YAML), "--dry-run", "--model", "s3://geossl-test/m/",
                 "--scenes", "s3://geossl-test/scenes/", "--out", "s3://geossl-test/o/", f"--args={bad}", *ACCOUNT])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"--args: geossl {command} refuses '{bad}'" in err and reason in err, err


@pytest.mark.parametrize(("scenes", "out", "overlap"), [
    ("s3://geossl-test/scenes/", "s3://geossl-test/scenes/maps/", True),
    ("s3://geossl-test/scenes", "s3://geossl-test/scenes/", True),
    ("s3://geossl-test/archive/", "s3://geossl-test/", True),  # the outputs' prefix holds the scenes
    ("s3://geossl-test/scenes/", "s3://geossl-test/scenes-maps/", False),  # whole segments, not characters
])
def test_outputs_overlapping_the_scenes_are_refused(scenes: str, out: str, overlap: bool, aws_env, monkeypatch,
                                                     capsys) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    code = main(["sagemaker", "classify", "--config", str(JOB_YAML), "--dry-run", "--model", "s3://geossl-test/m/",
                 "--scenes", scenes, "--out", out, *ACCOUNT])
    err = capsys.readouterr().err.strip()
    if overlap:
        assert code == 1 and "overlap: the outputs would be read back as input" in err, err
    else:
        assert code == 0, err


def test_a_local_rehearsal_into_its_scenes_folder_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "model").mkdir()
    code = main(["sagemaker", "classify", "--config", str(JOB_YAML), "--local", "--model", str(tmp_path / "model"),
                 "--scenes", str(tmp_path), "--out", str(tmp_path / "maps"), *ACCOUNT])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "overlap" in err and not (tmp_path / "maps").exists(), err


def test_a_bucket_name_s3_refuses_is_named(capsys) -> None:
    code = main(["sagemaker", "classify", "--config", str(JOB_YAML), "--dry-run", "--model", "s3://ab/m/",
                 "--scenes", "s3://geossl-test/scenes/", "--out", "s3://geossl-test/o/", *ACCOUNT])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "--model: 's3://ab/m/': 'ab' is not a bucket name S3 accepts" in err, err


@pytest.mark.parametrize(("files", "instances"), [(7, 3), (2, 4), (6, 2), (1, 1)])
def test_shard_by_key_deals_every_file_once_in_key_order(files: int, instances: int) -> None:
    paths = [Path(f"s/{name}") for name in np.random.default_rng(files).permutation([f"f{i:02d}.tif" for i in range(files)])]
    shards = shard_by_key(paths, instances)
    ordered = sorted(paths)
    expected = [[ordered[k] for k in range(files) if k % instances == i] for i in range(instances)]
    assert shards == expected
    assert sorted(p for shard in shards for p in shard) == ordered
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_the_container_runs_the_command_on_its_share_into_its_host_folder(tmp_path: Path) -> None:
    root = tmp_path / "opt-ml"
    assert container_command(["classify", "--probs"], root) is None  # no scene on this instance
    (root / "processing" / "input" / "scenes").mkdir(parents=True)
    (root / "processing" / "input" / "scenes" / "a.tif").write_bytes(b"x")
    (root / "config").mkdir()
    (root / "config" / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-2", "hosts": []}))
    p = root / "processing"
    assert container_command(["classify", "--probs"], root) == [
        "classify", "--model", str(p / "input" / "model"), "--input", str(p / "input" / "scenes"),
        "--out", str(p / "output" / "algo-2"), "--probs"]
    assert container_command(["embed"], root)[1:3] == ["--encoder", str(p / "input" / "model")]
    assert container_command(["embed"], root)[-1] == str(p / "output" / "algo-2")  # a folder: a GeoParquet per scene
    with pytest.raises(ValueError, match="first argument must be one of classify, embed"):
        container_command(["pretrain"], root)


@pytest.mark.slow  # two container processes each start Python and torch
def test_a_two_instance_rehearsal_makes_the_maps_of_a_local_run(scenes_dir: Path, tmp_path: Path, capsys) -> None:
    model = make_tiny_model(tmp_path / "model", img_size=32)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i, name in enumerate([LANDSAT, NAIP, LANDSAT]):  # three objects: one instance gets two
        shutil.copy(scenes_dir / name, scenes / f"s{i}_{name}")
    assert main(["classify", "--model", str(model), "--input", str(scenes), "--out", str(tmp_path / "local"),
                 *FAST.split()]) == 0
    code = main(["sagemaker", "classify", "--config", str(JOB_YAML), "--local", "--model", str(model), "--scenes",
                 str(scenes), "--out", str(tmp_path / "job"), "--args", FAST, *ACCOUNT, "compute.instance_count=2"])
    assert code == 0, capsys.readouterr().err[-2000:]
    hosts = {p.parent.name: p.name for p in (tmp_path / "job").glob("algo-*/*_classes.tif")}
    local = sorted((tmp_path / "local").glob("*_classes.tif"))
    job = sorted((tmp_path / "job").glob("algo-*/*_classes.tif"), key=lambda p: p.name)
    assert [p.name for p in job] == [p.name for p in local] and len(local) == 3
    assert sorted(hosts) == ["algo-1", "algo-2"]  # both instances worked
    for a, b in zip(local, job, strict=True):
        with rasterio.open(a) as x, rasterio.open(b) as y:
            np.testing.assert_array_equal(x.read(), y.read())
            assert x.transform == y.transform and x.crs == y.crs
    for host in ("algo-1", "algo-2"):  # each host folder is a complete classify folder of its own
        records = [json.loads(line) for line in (tmp_path / "job" / host / "manifest.jsonl").read_text().splitlines()]
        done = {r["stem"] for r in records if r["status"] == "done"}
        assert done == {p.name.removesuffix("_classes.tif") for p in (tmp_path / "job" / host).glob("*_classes.tif")}
    # the rehearsal ends with the merge: one Collection over both hosts' Items, areas of all three maps
    collection = json.loads((tmp_path / "job" / "collection.json").read_text())
    items = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert len(items) == 3 and all((tmp_path / "job" / href).is_file() for href in items)
    areas = (tmp_path / "job" / "areas.csv").read_text()
    assert {line.split(",")[0].split("/")[0] for line in areas.splitlines()[1:]} == {"algo-1", "algo-2"}


@pytest.mark.parametrize(("uris", "prefix"), [
    (["s3://bk1/naip/2019/a.tif", "s3://bk1/naip/2020/b.tif"], "s3://bk1/naip/"),
    (["s3://bk1/naip/a.tif"], "s3://bk1/naip/"),
    (["s3://bk1/a.tif", "s3://bk1/x/b.tif"], "s3://bk1/"),
    (["s3://bk1/naip/a.tif", "s3://bk1/naip2/b.tif"], "s3://bk1/"),  # whole segments: naip is not naip2's folder
])
def test_the_manifest_file_of_a_scene_list(uris: list[str], prefix: str) -> None:
    """SageMaker's ManifestFile: [{"prefix": P}, key relative to P, ...], P the deepest shared folder."""
    manifest = sagemaker_manifest(uris)
    assert manifest[0] == {"prefix": prefix}
    assert [prefix + key for key in manifest[1:]] == uris


def test_a_scene_list_becomes_a_sharded_manifest_file_input(aws_env, monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    scenes = tmp_path / "scenes.txt"
    scenes.write_text("# two NAIP quads\ns3://geossl-test/naip/2019/a.tif\n\ns3://geossl-test/naip/2020/b.tif\n")
    code = main(["sagemaker", "classify", "--config", str(JOB_YAML), "--dry-run", "--model", "s3://geossl-test/m/",
                 "--scenes", str(scenes), "--out", "s3://geossl-test/maps/", *ACCOUNT, "run_name=listed"])
    out, err = capsys.readouterr()
    assert code == 0, err
    req = json.loads(out)
    scenes_input = {i["InputName"]: i["S3Input"] for i in req["ProcessingInputs"]}["scenes"]
    job_name = req["ProcessingJobName"]
    assert scenes_input["S3DataType"] == "ManifestFile"
    assert scenes_input["S3DataDistributionType"] == "ShardedByS3Key"
    assert scenes_input["S3Uri"].endswith(f"/{job_name}/input/scenes.manifest")


@pytest.mark.parametrize(("lines", "message"), [
    ("s3://geossl-test/a.tif\ns3://other-bucket/b.tif\n", "spans buckets geossl-test, other-bucket"),
    ("s3://geossl-test/a.tif\n/data/b.tif\n", "entry 2 (/data/b.tif) is not an s3:// key"),
    ("s3://geossl-test/a.tif\ns3://geossl-test/a.tif\n", "entry 2 repeats entry 1"),
    ("# nothing\n\n", "the scene list is empty"),
])
def test_a_bad_scene_list_is_refused_in_one_line(lines: str, message: str, tmp_path: Path, capsys) -> None:
    scenes = tmp_path / "scenes.txt"
    scenes.write_text(lines)
    code = main(["sagemaker", "classify", "--config", str(JOB_YAML), "--dry-run", "--model", "s3://geossl-test/m/",
                 "--scenes", str(scenes), "--out", "s3://geossl-test/maps/", *ACCOUNT])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and message in err, err


def test_a_rehearsal_over_a_scene_index_deals_its_scenes(tmp_path: Path, monkeypatch) -> None:
    """A scene index (GeoParquet, its uri column) as the rehearsal's input: every listed scene, and only
    those, is linked into one instance's tree, below the folder the scenes share (as the manifest's keys)."""
    import geopandas as gpd
    import shapely

    from geossl.cloud import processing

    files = []
    for rel in ("2019/a.tif", "2020/b.tif", "2020/c.tif", "2020/unlisted.tif"):
        path = tmp_path / "archive" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        files.append(path)
    index = tmp_path / "index.parquet"
    gpd.GeoDataFrame({"uri": [str(p) for p in files[:3]]}, geometry=[shapely.box(0, 0, 1, 1)] * 3,
                     crs="EPSG:4326").to_parquet(index)
    started = []

    class FakeProcess:
        def __init__(self, argv: list[str], env: dict[str, str]) -> None:
            started.append(Path(env["GEOSSL_OPT_ML"]))

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(processing.subprocess, "Popen", FakeProcess)
    job = processing.ProcessingJob("classify", str(files[0].parent), str(index), str(tmp_path / "maps"), [])
    assert processing.rehearse(job, 2, tmp_path / "work") == 0
    linked = sorted(p.relative_to(root / "processing" / "input" / "scenes").as_posix()
                    for root in started for p in (root / "processing" / "input" / "scenes").rglob("*.tif"))
    assert linked == ["2019/a.tif", "2020/b.tif", "2020/c.tif"] and len(started) == 2
