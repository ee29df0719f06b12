"""Hostile and mistaken input, second round (issue #23): concurrent runs, damaged resumes, failed uploads,
mixed units, odd folders, tiny tiles, one-class probes, bad model keywords, read-only exports.

Each case is refused or reported in one line naming the file or option, never with a traceback.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

import geossl.data.shards as shards
from geossl.cli import main
from geossl.config import load_config
from geossl.data.shards import ChipPlan, ShardDataset, cut_shards
from geossl.demo import STEP_SETTINGS, add_arguments, refuse_changed_settings, step_settings
from geossl.io import RunLock
from geossl.settings import REPO_ROOT

NAIP = "naip_5m_north_dakota_2019.tif"


def cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``geossl ARGV``, whether it returned or argparse exited."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    captured = capsys.readouterr()
    # a moto server in the same process logs its requests to stderr: keep geossl's own lines
    err = "\n".join(line for line in captured.err.splitlines() if not line.startswith("127.0.0.1 - -"))
    return rc, captured.out.strip(), err.strip()


def chips_argv(scenes_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["chips", "--scenes", str(scenes_dir / NAIP), "--bands", "1,2,3", "--out", str(out), "--count", "20",
            "--tile-size", "32", "--workers", "1", *extra]


def test_chips_refuses_a_second_run_on_the_same_out(scenes_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "chips"
    with RunLock(out, what="geossl chips", option="--out"):
        rc, _, err = cli(capsys, chips_argv(scenes_dir, out))
    assert rc == 1 and err.startswith("geossl chips: error:") and "another geossl chips" in err
    assert "choose another --out" in err and len(err.splitlines()) == 1
    assert not (out / shards.META_FILE).exists() and not (out / shards.PARTS_DIR).exists()


@pytest.mark.parametrize("mode", [["--count", "4"], ["--grid"]])
def test_chips_of_an_all_nodata_scene_is_one_line_naming_it(mode: list[str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Random chips fail inside a LitData worker, which hands back its whole traceback as the message."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    scene = tmp_path / "all_nodata.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=96, height=96, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(np.zeros((3, 96, 96), "uint8"))
    argv = ["chips", "--scenes", str(scene), "--out", str(tmp_path / "chips"), "--tile-size", "32", "--workers", "1"]
    rc, _, err = cli(capsys, [*argv, *mode])
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("geossl chips: error:") and "90% valid pixels" in err
    assert str(scene) in err and "--min-valid" in err


def test_a_resumed_cut_recuts_truncated_and_altered_chunks(scenes_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import litdata

    plan = ChipPlan(scenes=[str(scenes_dir / NAIP)], tile_size=32, mode="random", count=60, stride=None,
                    bands=[1, 2, 3], min_valid_fraction=0.5, seed=0, part_size=20)
    real, calls = litdata.optimize, []

    def optimize_then_fail(**kwargs: object) -> None:
        calls.append(kwargs["output_dir"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted while cutting the third part
        real(**kwargs)

    monkeypatch.setattr(litdata, "optimize", optimize_then_fail)
    with pytest.raises(KeyboardInterrupt):
        cut_shards(plan, tmp_path / "chips", progress=False)
    monkeypatch.setattr(litdata, "optimize", real)
    parts = tmp_path / "chips" / shards.PARTS_DIR
    truncated = next((parts / "part-00000").glob("*.bin"))
    truncated.write_bytes(truncated.read_bytes()[:-100])  # a chunk cut short (full disk, killed copy)
    altered = next((parts / "part-00001").glob("*.bin"))
    data = bytearray(altered.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the checksum tells
    altered.write_bytes(bytes(data))
    meta = cut_shards(plan, tmp_path / "chips", progress=False)
    assert meta["recut_chunks"] == 2 and meta["resumed_parts"] == 0 and meta["count"] == 60
    ds = ShardDataset(str(tmp_path / "chips"))
    assert all(ds[i]["image"].shape == (3, 32, 32) for i in range(len(ds)))  # every chunk reads back


def test_a_failed_upload_is_one_line_and_a_rerun_only_uploads(moto_server: str, scenes_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import litdata

    from geossl.data.s3 import list_objects, s3_client

    out = tmp_path / "chips"
    rc, _, err = cli(capsys, chips_argv(scenes_dir, out, "--upload", "s3://missing-bucket/naip/"))
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "s3://missing-bucket/naip/: upload failed" in err and "NoSuchBucket" in err and "rerun" in err
    assert (out / shards.META_FILE).is_file()  # the chips are kept

    def no_cutting(**kwargs: object) -> None:
        raise AssertionError("chips cut again")

    monkeypatch.setattr(litdata, "optimize", no_cutting)
    s3_client().create_bucket(Bucket="missing-bucket")
    rc, printed, err = cli(capsys, chips_argv(scenes_dir, out, "--upload", "s3://missing-bucket/naip/"))
    assert rc == 0 and "20 chips already cut" in printed, err
    keys = {o["Key"] for o in list_objects("missing-bucket", "naip/")}
    assert {"naip/index.json", f"naip/{shards.META_FILE}"} <= keys and "naip/.lock" not in keys


@pytest.mark.parametrize("case", ["no credentials", "no network"])
def test_an_upload_without_credentials_or_network_is_one_line(case: str, aws_env: None, scenes_dir: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # an earlier test's session caches its credentials
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    if case == "no credentials":
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    rc, _, err = cli(capsys, chips_argv(scenes_dir, tmp_path / "chips", "--upload", "s3://bucket/p"))
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    cause = "Unable to locate credentials" if case == "no credentials" else "Could not connect to the endpoint"
    assert "s3://bucket/p/: upload failed" in err and cause in err, err


def test_stats_refuses_scenes_of_two_dtypes(scenes_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import rasterio

    uint8 = scenes_dir / "landsat7_300m_RGB.byte.tif"
    uint16 = tmp_path / "landsat_uint16.tif"
    with rasterio.open(uint8) as src:
        profile = {**src.profile, "dtype": "uint16"}
        with rasterio.open(uint16, "w", **profile) as dst:
            dst.write(src.read().astype("uint16") * 40)  # the same scene in reflectance-like units
    out = tmp_path / "stats.json"
    rc, _, err = cli(capsys, ["stats", "--input", str(uint8), str(uint16), "--out", str(out), "--tiles", "4"])
    assert rc == 1 and len(err.splitlines()) == 1
    assert f"{uint8} is uint8 but {uint16} is uint16" in err and not out.exists()


def test_input_folders_follow_symlinked_subfolders_once_without_looping(tmp_path: Path) -> None:
    from geossl.predict.tiles import image_inputs

    elsewhere = tmp_path / "other-disk"
    (elsewhere / "deep").mkdir(parents=True)
    (elsewhere / "deep" / "y.tif").write_bytes(b"")
    root = tmp_path / "tiles"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.tif").write_bytes(b"")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "linked-again").symlink_to(elsewhere, target_is_directory=True)  # the same folder twice
    (root / "a" / "up").symlink_to(root, target_is_directory=True)  # a loop back to the top
    assert image_inputs(str(root)) == [str(root / "a" / "x.tif"), str(root / "linked" / "deep" / "y.tif")]


def test_a_tile_smaller_than_one_patch_is_skipped_and_named(shared_data: Path, tmp_path: Path) -> None:
    import shutil

    import numpy as np
    from PIL import Image

    from bench.synthetic import make_tiny_model
    from geossl.predict import classify_tiles, embed

    model = make_tiny_model(tmp_path / "model", img_size=64)  # 8 px patches
    folder = tmp_path / "tiles"
    folder.mkdir()
    for f in sorted((shared_data / "eurosat-rgb" / "River").glob("River_1?.jpg"))[:2]:
        shutil.copy(f, folder / f.name)
    Image.fromarray(np.full((5, 6, 3), 90, np.uint8)).save(folder / "tiny.png")
    res = classify_tiles(model, str(folder), tmp_path / "out", progress=False)
    assert res.tiles == 2 and len(res.skipped) == 1
    assert res.skipped[0] == f"{folder / 'tiny.png'}: 6x5 px is smaller than one 8 px patch of the model"
    assert f"1 unreadable skipped: {folder / 'tiny.png'}" in res.summary()
    emb = embed(model, str(folder), tmp_path / "e.parquet", progress=False)
    assert emb.rows == 2 and f"1 unreadable skipped: {folder / 'tiny.png'}" in emb.summary()


def test_a_one_class_probe_is_refused_before_any_feature(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from PIL import Image

    data = tmp_path / "data" / "Forest"
    data.mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((16, 16, 3), 40 + i, np.uint8)).save(data / f"f{i}.png")
    out = tmp_path / "probe"
    rc, _, err = cli(capsys, ["probe", "--encoder", str(tmp_path / "encoder"), "--data", str(data.parent),
                              "--out", str(out)])
    assert rc == 1 and len(err.splitlines()) == 1
    assert f"{data.parent}: one class ('Forest') in the train split; a probe needs at least 2 classes" in err
    assert not out.exists()


def test_model_extra_pretrained_is_refused_when_the_config_loads() -> None:
    from geossl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"key 'model.extra.pretrained': not allowed \(geossl never downloads"):
        load_config(None, ["model.extra={pretrained: true}"])
    with pytest.raises(ConfigError, match=r"key 'model.extra.drop_path_rate': not allowed \(set by geossl"):
        load_config(None, ["model.extra={drop_path_rate: 0.2}"])


def test_pretrain_with_a_mistyped_model_extra_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dino_helpers import TINY, make_patch_folder

    data, stats = make_patch_folder(tmp_path / "data", n_per_class=4)
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    overrides = [o for o in TINY if not o.startswith("model.extra=")]
    rc, _, err = cli(capsys, ["pretrain", "--config", str(config), "--run-dir", str(tmp_path / "run"), *overrides,
                              f"data.paths=[{data}]", f"data.stats={stats}",
                              "model.extra={depth: six, embed_dim: 48, num_heads: 3}"])
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "key 'model.extra.depth': timm cannot build 'vit_tiny_patch16_224' with depth='six'" in err


def test_pretraining_on_a_truncated_chips_chunk_is_one_line_naming_it(scenes_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """LitData trusts index.json and would wait for the missing bytes until a time-out minutes later."""
    from dino_helpers import TINY

    chips = tmp_path / "chips"
    cut_shards(ChipPlan(scenes=[str(scenes_dir / NAIP)], tile_size=32, mode="random", count=32, stride=None,
                        bands=[1, 2, 3], min_valid_fraction=0.5, seed=0, part_size=32),
               chips, chunk_bytes="20KB", progress=False)
    chunks = sorted(chips.glob("chunk-*.bin"))
    assert len(chunks) > 1
    ShardDataset(str(chips))  # whole: accepted
    full = chunks[1].stat().st_size
    with open(chunks[1], "r+b") as fh:
        fh.truncate(full // 2)
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"bands": ["r", "g", "b"], "mean": [110.0] * 3, "std": [50.0] * 3,
                                 "p2": [0.0] * 3, "p98": [255.0] * 3, "dtype": "uint8"}))
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    rc, _, err = cli(capsys, ["pretrain", "--config", str(config), "--run-dir", str(tmp_path / "run"), *TINY,
                              "data.kind=shards",
                              f"data.paths=[{chips}]", f"data.stats={stats}"])
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{chunks[1]}: damaged chips chunk, {full // 2} bytes where index.json records {full}" in err
    assert "--overwrite" in err
    chunks[2 % len(chunks)].unlink()
    with pytest.raises(ValueError, match=r"chunk-.*\.bin: damaged chips chunk, .* \(and 1 more of \d+ chunks\)"):
        ShardDataset(str(chips))


def test_an_encoder_whose_timm_kwargs_are_bad_is_named(tmp_path: Path) -> None:
    import json

    from bench.synthetic import make_tiny_encoder
    from geossl.config import ConfigError
    from geossl.models.encoder import load_encoder

    folder = make_tiny_encoder(tmp_path / "enc")
    meta_file = folder / "geossl.json"
    meta = json.loads(meta_file.read_text())
    meta["timm_kwargs"]["pretrained"] = True
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=rf"{meta_file}: timm_kwargs.pretrained: not allowed"):
        load_encoder(folder)
    del meta["timm_kwargs"]["pretrained"]
    meta["timm_kwargs"]["mlp_ratio"] = "4"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=rf"{meta_file}: timm_kwargs.mlp_ratio: timm cannot build .* with "
                                          r"mlp_ratio='4' \(") as info:
        load_encoder(folder)
    assert len(str(info.value).splitlines()) == 1  # torch's C++ frames are not part of the line


def test_a_read_only_export_dir_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from dino_helpers import TINY, make_patch_folder

    import geossl.dino.train as train_module

    data, stats = make_patch_folder(tmp_path / "data", n_per_class=4)
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    read_only = tmp_path / "model-dir"  # e.g. a mounted volume without write permission (root ignores chmod)
    read_only.mkdir()
    real_write = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if self.parent == read_only:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_write(self, data)

    def no_training(cfg: object) -> None:
        raise AssertionError("training started with an export folder it cannot write")

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(train_module, "build_pretrain_dataset", no_training)
    rc, _, err = cli(capsys, ["pretrain", "--config", str(config), "--run-dir", str(tmp_path / "run"),
                              "--export-dir", str(read_only / "encoder"), *TINY, f"data.paths=[{data}]",
                              f"data.stats={stats}"])
    assert rc == 1 and len(err.splitlines()) == 1
    assert f"{read_only / 'encoder'}: cannot write here (no permission to write" in err
    assert not (read_only / "encoder").exists()  # an export folder that exists holds a working encoder


def test_exported_weights_get_the_same_permissions_as_their_json(tmp_path: Path) -> None:
    import os
    import stat

    from bench.synthetic import make_tiny_encoder, make_tiny_model

    old = os.umask(0o022)
    try:
        encoder = make_tiny_encoder(tmp_path / "enc")
        model = make_tiny_model(tmp_path / "model")
    finally:
        os.umask(old)
    for folder, weights in ((encoder, "model.safetensors"), (model, "model.safetensors"), (model, "head.safetensors")):
        assert stat.S_IMODE((folder / weights).stat().st_mode) == 0o644, (folder, weights)
        assert stat.S_IMODE((folder / "geossl.json").stat().st_mode) == 0o644


def test_stac_hrefs_are_percent_encoded(tmp_path: Path) -> None:
    import json
    from urllib.parse import unquote

    from bench.synthetic import make_tiny_model, write_synthetic_scene
    from geossl.models.landcover import load_landcover_model
    from geossl.predict.scene import classify_scene

    model_dir = make_tiny_model(tmp_path / "my model", img_size=32)
    scene = write_synthetic_scene(tmp_path / "field 7 (2019).tif", 64, 64, nodata=0)
    res = classify_scene(load_landcover_model(model_dir), str(scene), tmp_path / "maps", progress=False,
                         model_path=model_dir)
    item = json.loads(res.stac.read_text())
    hrefs = [a["href"] for a in item["assets"].values()] + [link["href"] for link in item["links"]]
    assert hrefs and not [h for h in hrefs if " " in h or "(" in h], hrefs
    assert item["assets"]["classes"]["href"] == "./field%207%20%282019%29_classes.tif"
    for asset in item["assets"].values():
        assert (res.stac.parent / unquote(asset["href"])).is_file()
    links = {link["rel"]: unquote(link["href"]) for link in item["links"]}
    assert links["derived_from"] == str(scene.resolve()) and links["geossl:model"] == str(model_dir.resolve())


def test_cutting_chips_leaves_the_callers_ctrl_c_handler_in_place(tmp_path: Path, shared_data: Path) -> None:
    """Regression: LitData installs its own SIGINT handler while it writes chunks and never restores the
    caller's, so Ctrl-C in a program that cut chips (and a later pretrain in the same process) misbehaved."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    scene = shared_data / "scenes" / "naip_5m_north_dakota_2019.tif"
    assert main(["chips", "--scenes", str(scene), "--out", str(tmp_path / "chips"), "--tile-size", "64",
                     "--count", "8", "--workers", "1"]) == 0
    assert signal.getsignal(signal.SIGINT) is before


DEMO_CONFIG = str(REPO_ROOT / "configs" / "demo.yaml")


def demo_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--config", DEMO_CONFIG, *argv])


def finished_demo(run: Path, data: Path) -> dict[str, int]:
    """A run folder as a finished ``geossl demo`` (default options) leaves it, as far as its reuse check reads
    it: the pretraining's config.yaml and summary, the probe's and fine-tune's metrics and recorded options.
    Returns {file: mtime} of everything in it, to show a refusal changed nothing."""
    pre = run / "pretrain"
    pre.mkdir(parents=True)
    cfg = load_config(DEMO_CONFIG, [f"data.root={data}"])
    (pre / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (pre / "summary.json").write_text(json.dumps({"status": "finished"}))
    for step, settings in step_settings(demo_args()).items():
        (run / step).mkdir()
        (run / step / "metrics.json").write_text(json.dumps({"encoder": str(pre / "encoder"), "baselines": {}}))
        (run / step / STEP_SETTINGS).write_text(json.dumps(settings))
    return {str(p): p.stat().st_mtime_ns for p in run.rglob("*")}


@pytest.mark.parametrize(("argv", "difference"), [
    (["optim.epochs=7"], "optim.epochs: {epochs} in the run folder, 7 now"),
    (["--seeds", "5"], "--seeds: 3 in the run folder, 5 now"),
    (["--finetune-epochs", "4"], "--finetune-epochs: 1.5 in the run folder, 4.0 now"),
    (["--labels-per-class", "5,all"], '--labels-per-class: [5, 10, 50, 100, "all"] in the run folder, [5, "all"] now'),
])
def test_demo_refuses_new_settings_for_a_finished_run_folder(argv: list[str], difference: str, tmp_path: Path,
                                                             shared_data: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (#23): a re-run of ``geossl demo`` into a finished run folder reused every step and silently
    ignored new overrides and options. Now it refuses in one line naming the difference, before any work."""
    run = tmp_path / "demo"
    before = finished_demo(run, shared_data)
    epochs = load_config(DEMO_CONFIG).optim.epochs
    rc, out, err = cli(capsys, ["demo", "--config", DEMO_CONFIG, "--run-dir", str(run), "--data", str(shared_data),
                                "--offline", *argv])
    assert rc == 1 and out == "", err
    assert err == (f"geossl demo: error: {run}: holds a finished demo made with other settings "
                   f"({difference.format(epochs=epochs)}); reusing it would ignore them: give a new --run-dir "
                   "(nothing was changed)")
    assert {str(p): p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_demo_reuses_a_finished_run_folder_when_nothing_differs(tmp_path: Path, shared_data: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The same command (the progress bar aside, which changes no result) passes the check; a step finished
    by an older geossl, which recorded no options, is reused with a note saying so."""
    run = tmp_path / "demo"
    finished_demo(run, shared_data)
    settings = step_settings(demo_args())
    for overrides in ([], ["trainer.progress_bar=false"]):
        refuse_changed_settings(run, load_config(DEMO_CONFIG, [f"data.root={shared_data}", *overrides]), settings)
    assert capsys.readouterr().err == ""
    (run / "probe" / STEP_SETTINGS).unlink()
    refuse_changed_settings(run, load_config(DEMO_CONFIG, [f"data.root={shared_data}"]), settings)
    assert capsys.readouterr().err.strip() == (
        f"geossl demo: note: {run / 'probe'} was made by an older geossl that did not record its options "
        "(--labels-per-class, --seeds, --splits); it is reused as it is")


@pytest.mark.parametrize("command", ["pretrain", "finetune", "chips"])
def test_an_output_folder_that_is_a_file_is_one_line_naming_the_option(command: str, tmp_path: Path,
                                                                      scenes_dir: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (#23 sweep): the folder lock's mkdir said only "File exists"."""
    target = tmp_path / "a_file"
    target.write_text("keep me\n")
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    from encoder_helpers import make_encoder

    encoder = make_encoder(tmp_path / "encoder", depth=1) if command == "finetune" else None
    argv = {
        "pretrain": ["pretrain", "--config", str(config), "--run-dir", str(target)],
        "finetune": ["finetune", "--encoder", str(encoder), "--out", str(target), "--baselines", "none"],
        "chips": chips_argv(scenes_dir, target),
    }[command]
    rc, _, err = cli(capsys, argv)
    option = "--run-dir" if command == "pretrain" else "--out"
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.endswith(f"{target}: {option} names a file; geossl {command} writes a folder there "
                        f"(choose another {option})"), err
    assert target.read_text() == "keep me\n"


def test_an_encoder_given_as_a_file_says_to_give_its_folder(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    not_an_encoder = tmp_path / "weights.bin"
    not_an_encoder.write_bytes(b"\x00\x01")
    rc, _, err = cli(capsys, ["finetune", "--encoder", str(not_an_encoder), "--out", str(tmp_path / "ft"),
                              "--baselines", "none"])
    assert rc == 1 and len(err.splitlines()) == 1 and "give the encoder's folder (holding geossl.json)" in err, err
