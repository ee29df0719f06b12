"""Bad patch files at the data layer: a bad first file does not stop a dataset from being built, errors say
what kind of bad, `geossl stats` skips and counts them (the salted folder is ``dino_helpers.salt``, shared with
the training tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dino_helpers import make_patch_folder, salt
from PIL import Image

from geossl.cli import main
from geossl.config import load_config
from geossl.config_checks import ConfigError
from geossl.data.patches import MAX_UNREADABLE_IN_A_ROW, BadPatchError, PatchDataset
from geossl.data.stats import BandStats, compute_stats


@pytest.fixture()
def salted(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    data, _ = make_patch_folder(tmp_path / "patches", n_per_class=12)
    return data, salt(data)


def test_a_bad_first_file_does_not_stop_the_dataset(salted):
    data, bad = salted
    ds = PatchDataset(data)  # 000_text.png (not an image), then 001_rgba.png (4 bands) come first
    assert ds.band_count == 3 and ds.dtype == "uint8" and ds.patch_shape == (32, 32)
    assert str(ds.paths[0]).endswith("000_text.png")
    kinds = {}
    for i, path in enumerate(ds.paths):
        try:
            ds[i]
        except BadPatchError as exc:
            assert str(exc).startswith(f"{path}: ") and exc.path == path
            kinds[str(path)] = exc.kind
    # size is the caller's business (pretraining checks data.tile_size): the small PNG reads fine here
    assert kinds == {p: k for p, k in bad.items() if k != "size"}
    with pytest.raises(ValueError, match=r"001_rgba\.png: has 4 bands but .*bright_0\.png has 3: mixed band counts"):
        ds[1]


def test_the_layout_is_the_majority_of_the_first_readable_files(tmp_path):
    root = tmp_path / "gray_first"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a" / "0.png")  # grayscale first, then 5 RGB
    for k in range(1, 6):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a" / f"{k}.png")
    ds = PatchDataset(root)
    assert ds.band_count == 3 and ds[1]["image"].shape == (3, 8, 8)
    with pytest.raises(BadPatchError, match=r"0\.png: has 1 bands but .*1\.png has 3"):
        ds[0]


def test_a_folder_of_unreadable_files_gives_up_clearly(tmp_path):
    root = tmp_path / "junk"
    (root / "a").mkdir(parents=True)
    for k in range(MAX_UNREADABLE_IN_A_ROW + 5):
        (root / "a" / f"{k:03d}.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=rf"junk: none of the first {MAX_UNREADABLE_IN_A_ROW} files is a readable "
                                         r"image \(.*000\.png: not a readable image"):
        PatchDataset(root)


def test_bad_patch_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(BadPatchError(Path("/x/y.png"), "bands", "has 4 bands")))
    assert (error.path, error.kind, error.problem, str(error)) == (Path("/x/y.png"), "bands", "has 4 bands",
                                                                   "/x/y.png: has 4 bands")


def test_stats_skip_and_count_bad_files(salted, tmp_path):
    data, bad = salted
    stats = compute_stats(data, kind="patches", max_bad_fraction=0.3)
    expected = {p: k for p, k in bad.items() if k != "size"}  # stats read any size
    assert {p: r.split(":")[0] for p, r in stats.skipped_files.items()} == expected
    clean = compute_stats(make_patch_folder(tmp_path / "clean", n_per_class=12)[0], kind="patches")
    assert stats.n_pixels == clean.n_pixels + 24 * 24 * 1  # the 24 good files + the small one
    assert clean.skipped_files == {}

    stats.save(tmp_path / "stats.json")
    assert BandStats.load(tmp_path / "stats.json").skipped_files == stats.skipped_files
    old = {k: v for k, v in json.loads((tmp_path / "stats.json").read_text()).items() if k != "skipped_files"}
    (tmp_path / "old.json").write_text(json.dumps(old))  # written before the field existed
    assert BandStats.load(tmp_path / "old.json").skipped_files == {}

    with pytest.raises(ValueError, match=r"at least 4 of 32 sampled patch files \(12\.5%\) .* more than "
                                         r"max_bad_fraction=0\.1 allows: .*000_text\.png \(unreadable\)"):
        compute_stats(data, kind="patches", max_bad_fraction=0.1)


def test_stats_cli_names_its_own_option_for_bad_files(salted, tmp_path, capsys):
    """Regression (#23): `geossl stats` refused too many bad files with "raise max_bad_fraction", a setting it
    did not have. It now has --max-bad-fraction, and the refusal names it."""
    data, _ = salted
    out = tmp_path / "stats.json"
    base = ["stats", "--input", str(data), "--kind", "patches", "--out", str(out)]
    assert main([*base, "--max-bad-fraction", "0.1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("geossl stats: error: at least 4 of 32 sampled patch files")
    assert "more than --max-bad-fraction=0.1 allows" in err and err.endswith("or raise --max-bad-fraction")
    assert not out.exists()
    assert main([*base, "--max-bad-fraction", "0.3"]) == 0  # 7 of 32 skipped, listed in the JSON
    assert len(json.loads(out.read_text())["skipped_files"]) == 7
    assert "7 bad file(s) skipped" in capsys.readouterr().out
    for bad in ("1.5", "-0.1", "nan", "five"):
        with pytest.raises(SystemExit) as exc:
            main([*base, "--overwrite", "--max-bad-fraction", bad])
        assert exc.value.code == 2
        assert "argument --max-bad-fraction:" in capsys.readouterr().err


def test_max_bad_fraction_is_a_probability():
    assert load_config(None).data.max_bad_fraction == 0.01
    assert load_config(None, ["data.max_bad_fraction=0"]).data.max_bad_fraction == 0.0
    assert load_config(None, ["data.max_bad_fraction=1"]).data.max_bad_fraction == 1.0
    with pytest.raises(ConfigError, match=r"key 'data.max_bad_fraction': must be a finite number in \[0, 1\]"):
        load_config(None, ["data.max_bad_fraction=1.5"])
