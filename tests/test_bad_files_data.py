"""Bad patch files at the data layer: a bad first file does not stop a dataset from being built, errors say
what kind of bad, `geossl stats` skips and counts them; plus the salted folder the training tests share."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from dino_helpers import make_patch_folder
from PIL import Image

from geossl.config import load_config
from geossl.config_checks import ConfigError
from geossl.data.patches import MAX_UNREADABLE_IN_A_ROW, BadPatchError, PatchDataset
from geossl.data.stats import BandStats, compute_stats


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def salt(root: Path, size: int = 32) -> dict[str, str]:
    """Write eight bad files into the class folders of ``root``; returns {absolute path: expected kind}.

    Two sort first in their class, so the dataset's first file is bad (not an image) and so is its second
    (RGBA among RGB). A 16-bit PNG is grayscale: Pillow reads 16-bit RGB PNGs as 8-bit RGB.
    """
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    jpeg, png = _encoded(rgb, "JPEG"), _encoded(rgb, "PNG")
    files: dict[str, tuple[bytes, str]] = {
        "bright/000_text.png": (b"this is a text file, not a png\n", "unreadable"),
        "bright/001_rgba.png": (_encoded(np.dstack([rgb, rgb[..., :1]]), "PNG"), "bands"),
        "bright/truncated.jpg": (jpeg[: len(jpeg) // 2], "unreadable"),
        "dark/truncated.png": (png[: len(png) // 2], "unreadable"),
        "dark/empty.png": (b"", "unreadable"),
        "dark/gray.png": (_encoded(rgb[..., 0], "PNG"), "bands"),
        "dark/deep16.png": (_encoded(rgb[..., 0].astype(np.uint16) * 257, "PNG"), "bands"),  # mode I;16
        "dark/small.png": (_encoded(rgb[: size - 8, : size - 8], "PNG"), "size"),
    }
    expected = {}
    for name, (data, kind) in files.items():
        (root / name).write_bytes(data)
        expected[str(root / name)] = kind
    return expected


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


def test_max_bad_fraction_is_a_probability():
    assert load_config(None).data.max_bad_fraction == 0.01
    assert load_config(None, ["data.max_bad_fraction=0"]).data.max_bad_fraction == 0.0
    assert load_config(None, ["data.max_bad_fraction=1"]).data.max_bad_fraction == 1.0
    with pytest.raises(ConfigError, match=r"key 'data.max_bad_fraction': must be a finite number in \[0, 1\]"):
        load_config(None, ["data.max_bad_fraction=1.5"])
