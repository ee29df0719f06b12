"""``geossl probe`` and ``geossl stats`` refuse to replace existing outputs without --overwrite, as classify does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from encoder_helpers import make_encoder, make_patches

from geossl.cli import main

OLD = '{"old": true}\n'


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def probe_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("probe-inputs")
    return make_patches(tmp / "data", n_per_class=6), make_encoder(tmp / "enc", img_size=16, embed_dim=48, depth=1)


def probe_args(inputs: tuple[Path, Path], out: Path) -> list[str]:
    data, enc = inputs
    return ["probe", "--encoder", str(enc), "--data", str(data), "--out", str(out), "--workers", "0",
            "--device", "cpu", "--weight-decays", "1e-2", "--max-iter", "20", "--no-random-baseline"]


@pytest.mark.parametrize("held", ["metrics.json", "model"])
def test_probe_refuses_a_folder_holding_a_probe(probe_inputs: tuple[Path, Path], tmp_path: Path, held: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "probe"
    out.mkdir()
    if held == "model":
        (out / "model").mkdir()
    else:
        (out / "metrics.json").write_text(OLD)
    assert main(probe_args(probe_inputs, out)) == 1
    err = one_line_error(capsys)
    assert f"{out / held} already exists (pass --overwrite to replace)" in err
    assert sorted(p.name for p in out.iterdir()) == [held]  # nothing written: no cache, no splits.csv
    if held == "metrics.json":
        assert (out / "metrics.json").read_text() == OLD


def test_probe_overwrite_replaces_and_a_cache_alone_is_reused(probe_inputs: tuple[Path, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "probe"
    (out / "cache").mkdir(parents=True)  # an interrupted run leaves only its feature cache: not a probe
    assert main(probe_args(probe_inputs, out)) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["encoder_kind"] == "pretrained" and (out / "model" / "head.json").is_file()
    (out / "metrics.json").write_text(OLD)
    (out / "label_efficiency.json").write_text(OLD)  # an earlier run's curve, which this run does not draw
    capsys.readouterr()

    assert main(probe_args(probe_inputs, out)) == 1
    assert "metrics.json, " in (err := one_line_error(capsys)) and "model already exist (pass --overwrite" in err
    assert (out / "metrics.json").read_text() == OLD

    assert main([*probe_args(probe_inputs, out), "--overwrite"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["linear_top1"] == first["linear_top1"] and again["cache"]["hit"] is True
    assert not (out / "label_efficiency.json").exists()


def test_stats_refuses_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_patches(tmp_path / "data", n_per_class=2, size=8)
    out = tmp_path / "stats.json"
    out.write_text(OLD)
    args = ["stats", "--input", str(data), "--out", str(out), "--tiles", "6"]
    assert main(args) == 1
    assert f"{out} already exists (pass --overwrite to replace)" in one_line_error(capsys)
    assert out.read_text() == OLD

    assert main([*args, "--overwrite"]) == 0
    stats = json.loads(out.read_text())
    assert stats["bands"] == ["band_1", "band_2", "band_3"] and len(stats["mean"]) == 3


def test_stats_writes_a_new_file_without_overwrite(tmp_path: Path) -> None:
    data = make_patches(tmp_path / "data", n_per_class=2, size=8)
    out = tmp_path / "new" / "stats.json"
    assert main(["stats", "--input", str(data), "--out", str(out), "--tiles", "6"]) == 0
    assert json.loads(out.read_text())["bands"] == ["band_1", "band_2", "band_3"]
