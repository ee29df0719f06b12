"""Hostile and mistaken command-line input (issue #23): refused at once, in one line naming the option.

Counts and sizes are parsed by one helper (``geossl.argtypes.positive_int``), so ``--k 0`` fails while the
arguments are read (argparse's exit 2) instead of after feature extraction, and ``--tile-size 0`` can no
longer mean "the default". Device strings are checked before a model is loaded (exit 1). The YAML,
archive, label-polygon, class-name and S3-prefix cases live beside their subjects (test_config.py,
test_fetch.py, test_labels_inputs.py, test_sagemaker_launch.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from geossl.argtypes import positive_int
from geossl.cli import main
from geossl.devices import pick_device


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of ``geossl ARGV``, whether it returned or argparse exited."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err.strip()


def test_positive_int_accepts_counts_and_refuses_zero_negatives_and_text() -> None:
    assert positive_int("1") == 1 and positive_int("64") == 64
    for text, message in (("0", "must be >= 1, got 0"), ("-8", "must be >= 1, got -8"),
                          ("ten", "expected a whole number >= 1, got 'ten'"), ("2.5", "whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            positive_int(text)


@pytest.mark.parametrize("option", ["--k", "--max-iter", "--seeds", "--batch-size", "--attentive-epochs"])
def test_probe_counts_below_one_are_refused_while_parsing(option: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc, err = cli_error(capsys, ["probe", "--encoder", str(tmp_path / "enc"), "--out", str(out), option, "0"])
    assert rc == 2 and f"argument {option}: must be >= 1, got 0" in err and "Traceback" not in err
    assert not out.exists()


def test_run_probe_refuses_k_and_max_iter_below_one_before_any_work(tmp_path: Path) -> None:
    """The Python API gets the same check, before the encoder or the data is looked at."""
    from geossl.probe.run import ProbeOptions, run_probe

    for field, flag in (("k", "--k"), ("max_iter", "--max-iter")):
        opts = ProbeOptions(encoder=str(tmp_path / "missing"), data=tmp_path / "missing", out=tmp_path / "out",
                            **{field: 0})
        with pytest.raises(ValueError, match=f"{flag}: must be >= 1, got 0"):
            run_probe(opts)
    assert not (tmp_path / "out").exists()


def test_import_encoder_sizes_and_demo_seeds_below_one_are_refused(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    for option in ("--img-size", "--patch-size"):
        rc, err = cli_error(capsys, ["import-encoder", "--from", str(tmp_path / "enc"), "--out", str(out), option, "0"])
        assert rc == 2 and f"argument {option}: must be >= 1, got 0" in err
    rc, err = cli_error(capsys, ["demo", "--run-dir", str(out), "--seeds", "0"])
    assert rc == 2 and "argument --seeds: must be >= 1, got 0" in err
    assert not out.exists()


@pytest.mark.parametrize(("command", "option", "value"), [
    ("classify", "--tile-size", "0"), ("classify", "--tile-size", "-64"), ("classify", "--stride", "0"),
    ("classify", "--batch-size", "0"), ("embed", "--tile-size", "0"), ("embed", "--stride", "-1"),
])
def test_tile_sizes_and_strides_below_one_are_refused(command: str, option: str, value: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    model = "--model" if command == "classify" else "--encoder"
    out = tmp_path / ("maps" if command == "classify" else "e.parquet")
    rc, err = cli_error(capsys, [command, model, str(tmp_path / "m"), "--input", str(tmp_path / "x.tif"),
                                 "--out", str(out), option, value])
    assert rc == 2 and f"argument {option}: must be >= 1" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["classify", "embed", "probe"])
@pytest.mark.parametrize(("device", "message"), [("cpu:99", "one CPU device"), ("gpu", "expected auto, cpu"),
                                                 ("meta", "expected auto, cpu")])
def test_a_device_that_does_not_exist_is_one_line_naming_device(command: str, device: str, message: str,
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    if command == "probe":
        argv = ["probe", "--encoder", str(tmp_path / "enc"), "--out", str(out)]
    else:
        argv = [command, "--model" if command == "classify" else "--encoder", str(tmp_path / "m"),
                "--input", str(tmp_path / "x.tif"), "--out", str(out if command == "classify" else out / "e.parquet")]
    rc, err = cli_error(capsys, [*argv, "--device", device])
    assert rc == 1 and err.startswith(f"geossl {command}: error: --device '{device}'") and message in err
    assert len(err.splitlines()) == 1


def test_device_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_device("cpu") == torch.device("cpu") and pick_device("cpu:0") == torch.device("cpu:0")
    assert pick_device("auto").type in ("cpu", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1") and pick_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        pick_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="--device cuda:0: no CUDA GPU available"):
        pick_device("cuda:0")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="--device mps: no Apple MPS device available"):
        pick_device("mps")
