"""Split tables, input checks and the feature cache (reused when unchanged, rebuilt when the encoder changes;
a full disk is one line naming the cache file)."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_helpers import COLOURS, make_encoder, make_patches
from PIL import Image
from safetensors import SafetensorError

import geossl.probe.features as features_mod
from geossl.cli import main
from geossl.models.encoder import load_encoder
from geossl.probe.features import cached_features, load_split_table
from geossl.probe.run import ProbeOptions, cls_part, run_probe


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("path,label,split\n" + "".join(f"{p},{lab},{s}\n" for p, lab, s in rows))
    return path


def test_stratified_table_and_splits_csv(tmp_path: Path) -> None:
    data = make_patches(tmp_path / "data")
    table = load_split_table(data, seed=0)
    counts = table.counts()
    assert table.classes == sorted(COLOURS) and len(table.paths) == 30
    assert [counts[s]["Forest"] for s in ("train", "val", "test")] == [7, 1, 2]
    # Seeded: same seed same split, other seed another split.
    assert np.array_equal(table.splits, load_split_table(data, seed=0).splits)
    assert not np.array_equal(table.splits, load_split_table(data, seed=1).splits)
    # An explicit splits CSV elsewhere, paths relative to --data; rows without a split are left out.
    rows = [(f"{c}/{c}_{i}.png", c, ["train", "train", "val", "test", ""][i % 5]) for c in COLOURS for i in range(10)]
    table = load_split_table(data, write_csv(tmp_path / "s.csv", rows))
    assert len(table.paths) == 24 and table.counts()["train"]["total"] == 12
    assert all(p.is_absolute() and p.is_file() for p in table.paths)
    # A splits.csv inside the folder is picked up without --splits.
    write_csv(data / "splits.csv", rows)
    assert load_split_table(data).counts() == table.counts()


def test_bad_split_tables(tmp_path: Path) -> None:
    data = make_patches(tmp_path / "data", n_per_class=4)
    ok = [(f"{c}/{c}_{i}.png", c, ("train", "train", "val", "test")[i]) for c in COLOURS for i in range(4)]
    with pytest.raises(FileNotFoundError, match=r"bad\.csv: 1 of 12 listed files do not exist: .*nope\.png"):
        load_split_table(data, write_csv(tmp_path / "bad.csv", [*ok[:-1], ("Forest/nope.png", "Forest", "test")]))
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['Forrest'\]"):
        load_split_table(data, write_csv(tmp_path / "bad.csv", [*ok[:-1], ("SeaLake/SeaLake_3.png", "Forrest", "test")]))
    with pytest.raises(ValueError, match=r"line 3: unknown split 'trian'"):
        load_split_table(data, write_csv(tmp_path / "bad.csv", [ok[0], ("Forest/Forest_1.png", "Forest", "trian")]))
    with pytest.raises(ValueError, match=r"split 'val' is empty"):
        load_split_table(data, write_csv(tmp_path / "bad.csv", [r for r in ok if r[2] != "val"]))
    with pytest.raises(ValueError, match=r"class 'SeaLake' has 3 example\(s\), too few for the split"):
        load_split_table(data, write_csv(tmp_path / "bad.csv", [r for r in ok if r[:2] != ("SeaLake/SeaLake_3.png", "SeaLake")]))
    # Stratified split of a class with 2 images cannot fill train, val and test.
    for f in list((data / "Forest").iterdir())[2:]:
        f.unlink()
    with pytest.raises(ValueError, match=r"class 'Forest' has 2 example\(s\)"):
        load_split_table(data)


def test_a_file_in_two_splits_spelled_two_ways_names_plain_split_names(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (#23): one file listed relative in a train row and absolute in a test row passes the CSV's
    own check and is caught on the table's numpy split array, whose message read "in both the
    np.str_('train') and the np.str_('test') split". It now reads 'train' and 'test', also from the CLI."""
    from geossl.cli import main

    data = make_patches(tmp_path / "data", n_per_class=4)
    ok = [(f"{c}/{c}_{i}.png", c, ("train", "train", "val", "test")[i]) for c in COLOURS for i in range(4)]
    leak = write_csv(tmp_path / "leak.csv", [*ok, (str(data / ok[0][0]), ok[0][1], "test")])
    message = "is in both the 'train' and the 'test' split"
    with pytest.raises(ValueError, match=message) as refused:
        load_split_table(data, leak)
    assert "np.str_" not in str(refused.value) and str(data / ok[0][0]) in str(refused.value)
    encoder = make_encoder(tmp_path / "enc")
    assert main(["probe", "--encoder", str(encoder), "--data", str(data), "--splits", str(leak),
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "np.str_" not in err


def test_feature_cache_reuse_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_patches(tmp_path / "data", n_per_class=4)
    table = load_split_table(data, write_csv(tmp_path / "s.csv", [
        (f"{c}/{c}_{i}.png", c, ("train", "train", "val", "test")[i]) for c in COLOURS for i in range(4)]))
    enc_dir = make_encoder(tmp_path / "enc", img_size=16, embed_dim=48, seed=1)
    calls: list[str] = []
    real = features_mod.extract_features

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("desc", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(features_mod, "extract_features", counting)
    cache = tmp_path / "cache"
    f1, info1 = cached_features(load_encoder(enc_dir), enc_dir, table, "cls_last4", cache)
    f2, info2 = cached_features(load_encoder(enc_dir), enc_dir, table, "cls_last4", cache)
    assert len(calls) == 1 and not info1["hit"] and info2["hit"] and torch.equal(f1, f2)
    assert f1.shape == (12, 4 * 48)
    # Another recipe is another entry.
    cached_features(load_encoder(enc_dir), enc_dir, table, "cls", cache)
    assert len(calls) == 2
    # New weights in the same folder (re-exported after "more training"): the cache must not be used.
    make_encoder(enc_dir, img_size=16, embed_dim=48, seed=2)
    f3, info3 = cached_features(load_encoder(enc_dir), enc_dir, table, "cls_last4", cache)
    assert len(calls) == 3 and not info3["hit"] and not torch.allclose(f1, f3)
    # Cached values equal a direct extraction in table order.
    enc = load_encoder(enc_dir)
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p)).transpose(2, 0, 1).copy()) for p in table.paths[:3]])
    with torch.inference_mode():
        torch.testing.assert_close(f3[:3], enc.features(x, "cls_last4"), rtol=1e-4, atol=1e-4)
        # The k-NN part of cls_last4 is the final CLS, i.e. exactly what forward() returns.
        torch.testing.assert_close(cls_part(enc.features(x, "cls_last4"), "cls_last4", 48), enc(x))
        torch.testing.assert_close(cls_part(enc.features(x, "cls_avgpool"), "cls_avgpool", 48), enc(x))
        torch.testing.assert_close(cls_part(enc.features(x, "last4_avgpool_cls"), "last4_avgpool_cls", 48), enc(x))
        # last4_avgpool_cls against timm's own blocks: mean patch token of each of the last n blocks after
        # the final norm, then their CLS tokens (n = 4, or every block of a shallower ViT)
        backbone, n = enc.backbone, min(4, len(enc.backbone.blocks))
        h = backbone.norm_pre(backbone._pos_embed(backbone.patch_embed(enc.normalize(x))))
        outs = []
        for block in backbone.blocks:
            h = block(h)
            outs.append(backbone.norm(h))
        ref = torch.cat([o[:, 1:].mean(1) for o in outs[-n:]] + [o[:, 0] for o in outs[-n:]], dim=-1)
        torch.testing.assert_close(enc.features(x, "last4_avgpool_cls"), ref, rtol=1e-5, atol=1e-5)
        assert enc.feature_dim("last4_avgpool_cls") == 2 * n * 48


def test_bad_encoder_inputs(tmp_path: Path) -> None:
    data = make_patches(tmp_path / "data", n_per_class=6)
    ms_enc = make_encoder(tmp_path / "enc13", in_chans=13, img_size=16, embed_dim=48)
    opts = ProbeOptions(encoder=str(ms_enc), data=data, out=tmp_path / "out")
    with pytest.raises(ValueError, match=r"expects 13 bands \['band_0'.*but the data .* has 3 band\(s\) \(uint8\)"):
        run_probe(opts)
    (ms_enc / "geossl.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"enc13/geossl.json: encoder description missing"):
        run_probe(opts)
    with pytest.raises(FileNotFoundError, match=r"geossl.json: encoder description missing"):
        run_probe(ProbeOptions(encoder=f"random:{ms_enc}", data=data, out=tmp_path / "out"))
    shallow = make_encoder(tmp_path / "enc2", img_size=16, embed_dim=48, depth=2)
    with pytest.raises(ValueError, match=r"unknown feature recipe 'cls_last9'"):
        run_probe(ProbeOptions(encoder=str(shallow), data=data, out=tmp_path / "out", features="cls_last9"))


def test_rgb_encoder_on_13_band_patches(tmp_path: Path, shared_data: Path) -> None:
    data = shared_data / "eurosat-ms"
    lines = (data / "labels.csv").read_text().splitlines()[1:]
    seen: dict[str, int] = {}
    rows = []
    for line in lines:
        path, label = line.split(",")
        if seen.get(label, 0) < 3:
            rows.append((path, label, ("train", "val", "test")[seen.get(label, 0)]))
            seen[label] = seen.get(label, 0) + 1
    rgb = make_encoder(tmp_path / "enc", img_size=64, embed_dim=48)
    opts = ProbeOptions(encoder=str(rgb), data=data, splits=write_csv(tmp_path / "s.csv", rows), out=tmp_path / "out")
    with pytest.raises(ValueError, match=r"expects 3 bands \['B4', 'B3', 'B2'\], but the data .*s\.csv has 13 band\(s\) \(uint16\)"):
        run_probe(opts)


def test_cls_last4_uses_every_block_of_a_shallow_vit(tmp_path: Path) -> None:
    """A 2-block ViT gives the CLS of both blocks (2 x embed_dim), the last block's CLS last."""
    import torch

    from geossl.models.encoder import load_encoder

    encoder = load_encoder(make_encoder(tmp_path / "enc2", img_size=16, embed_dim=48, depth=2))
    x = torch.rand(2, 3, 16, 16) * 255
    with torch.no_grad():
        feats = encoder.features(x, "cls_last4")
        assert feats.shape == (2, encoder.feature_dim("cls_last4")) == (2, 96)
        torch.testing.assert_close(feats[:, -48:], encoder(x))


def test_relative_data_folder_with_splits_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--data rel/path --splits s.csv``: table paths are absolute, so the cache's own CSV finds the files."""
    make_patches(tmp_path / "data", n_per_class=4)
    rows = [(f"{c}/{c}_{i}.png", c, ("train", "train", "val", "test")[i]) for c in COLOURS for i in range(4)]
    splits = write_csv(tmp_path / "s.csv", rows)
    monkeypatch.chdir(tmp_path)
    table = load_split_table(Path("data"), splits)
    assert all(p.is_absolute() and p.is_file() for p in table.paths)
    enc_dir = make_encoder(tmp_path / "enc", img_size=16, embed_dim=48, seed=1)
    feats, cache = cached_features(load_encoder(enc_dir), enc_dir, table, "cls", Path("cache"))
    assert feats.shape == (12, 48) and cache["hit"] is False


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),  # what it raises
])
def test_a_full_disk_at_the_feature_cache_is_one_line_and_a_rerun_works(
        error: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (#23): a full disk while writing the feature cache was a raw SafetensorError traceback."""
    data = make_patches(tmp_path / "data", n_per_class=6)
    enc = make_encoder(tmp_path / "enc", img_size=16, embed_dim=48, depth=1)
    args = ["probe", "--encoder", str(enc), "--data", str(data), "--out", str(tmp_path / "out"), "--workers", "0",
            "--device", "cpu", "--no-random-baseline", "--weight-decays", "1e-2"]

    def disk_full(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(features_mod.safetensors.torch, "save_file", disk_full)
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    cache = tmp_path / "out" / "cache"
    assert "Traceback" not in err and err.count("error") == 1, err
    last = err.splitlines()[-1].split("\r")[-1]  # after the extraction's progress bar
    assert re.fullmatch(rf".*geossl probe: error: {re.escape(str(cache))}/features-\w+\.safetensors: cannot write "
                        r"\(the disk is full\)", last), err
    assert not list(cache.glob("features-*")) and not list(cache.glob(".*partial"))  # nothing half-written
    monkeypatch.undo()
    assert main(args) == 0  # the interrupted run's folder (a cache only) does not block the rerun
    assert list(cache.glob("features-*.safetensors"))
