"""The dense (per-patch) head of ``geossl probe --dense``: token labels, seeded subsampling, the fit against
the patch probe's own machinery, and how it is saved in (and loaded from) a land-cover model folder."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.synthetic import EUROSAT_CLASSES, make_tiny_encoder  # noqa: E402
from geossl.models.backbone import backbone_kwargs, create_backbone  # noqa: E402
from geossl.models.encoder import Encoder, EncoderMeta, load_encoder  # noqa: E402
from geossl.models.landcover import (  # noqa: E402
    DENSE_WEIGHTS,
    HEAD_META,
    LinearHead,
    load_landcover_model,
    save_landcover_model,
)
from geossl.probe.dense import fit_dense_head, sample_tokens, token_choice  # noqa: E402
from geossl.probe.features import SplitTable, load_split_table  # noqa: E402
from geossl.probe.linear import fit_linear_probe  # noqa: E402

PATCH = 4  # 16 px images -> 4 x 4 tokens


class PoolEncoder(Encoder):
    """An encoder whose tokens are known: each token is its patch's mean normalised pixel (D = bands)."""

    def patch_grid(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.normalize(x), PATCH).permute(0, 2, 3, 1)


def pool_encoder() -> PoolEncoder:
    kwargs = backbone_kwargs(3, 16, patch_size=PATCH, extra={"depth": 1})
    meta = EncoderMeta(timm_name="vit_tiny_patch16_224", timm_kwargs=kwargs, bands=["r", "g", "b"],
                       mean=[0.0] * 3, std=[1.0] * 3, patch_size=PATCH, img_size=16, embed_dim=3)
    return PoolEncoder(create_backbone("vit_tiny_patch16_224", kwargs), meta).eval()


def write_patches(root: Path, per_split: dict[str, int], seed: int = 0) -> SplitTable:
    """Three colour classes (red, green, blue dominant) with per-pixel noise; a splits.csv in class folders."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, name in enumerate(["Blue", "Green", "Red"]):  # sorted: class index = k
        (root / name).mkdir(parents=True, exist_ok=True)
        for split, n in per_split.items():
            for i in range(n):
                img = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
                img[..., 2 - k] += 150  # Blue -> channel 2, Green -> 1, Red -> 0
                path = root / name / f"{split}_{i}.png"
                Image.fromarray(img).save(path)
                rows.append((f"{name}/{path.name}", name, split))
    with open(root / "splits.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *rows])
    return load_split_table(root)


def reference_tokens(table: SplitTable, row: int) -> torch.Tensor:
    """The pool encoder's tokens of one table row, computed straight from the file: (16, 3) row-major."""
    img = torch.from_numpy(np.asarray(Image.open(table.paths[row]), dtype=np.float32)).permute(2, 0, 1)[None]
    return F.avg_pool2d(img, PATCH).permute(0, 2, 3, 1).reshape(-1, 3)


def test_token_choice_is_seeded_sorted_and_capped() -> None:
    a, b = token_choice(64, 16, 3, 7), token_choice(64, 16, 3, 7)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 16 and np.all(np.diff(a) > 0) and a.max() < 64
    assert not np.array_equal(a, token_choice(64, 16, 4, 7))  # another seed, other tokens
    assert not np.array_equal(a, token_choice(64, 16, 3, 8))  # another patch, other tokens
    assert np.array_equal(token_choice(9, 16, 0, 0), np.arange(9)) and np.array_equal(token_choice(9, None, 0, 0),
                                                                                      np.arange(9))


def test_each_token_takes_its_patch_label_and_subsampling_is_deterministic(tmp_path: Path) -> None:
    table = write_patches(tmp_path / "data", {"train": 4, "val": 2, "test": 2})
    from geossl.data.patches import PatchDataset
    from geossl.probe.features import table_csv

    ds = PatchDataset(table_csv(table, tmp_path / "cache", "k"), classes=table.classes)
    enc, rows = pool_encoder(), table.indices("train")
    x, y, owner = sample_tokens(enc, ds, table, rows, per_patch=5, seed=1, batch_size=3)
    assert x.shape == (5 * rows.size, 3)
    assert torch.equal(y, torch.from_numpy(table.labels[owner.numpy()]))  # each token: its own patch's label
    for row in rows:  # the kept tokens are exactly the reference tokens at the seeded positions
        keep = torch.from_numpy(token_choice(16, 5, 1, int(row)))
        assert torch.allclose(x[owner == int(row)], reference_tokens(table, int(row))[keep], atol=1e-4)
    x2, y2, _ = sample_tokens(enc, ds, table, rows, per_patch=5, seed=1, batch_size=7)  # batching is irrelevant
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _, _ = sample_tokens(enc, ds, table, rows, per_patch=5, seed=2, batch_size=3)
    assert not torch.equal(x, x3)
    x_all, _, _ = sample_tokens(enc, ds, table, rows, per_patch=None, seed=1)
    assert x_all.shape[0] == 16 * rows.size


def test_fit_dense_head_matches_the_linear_probe_on_the_same_tokens(tmp_path: Path) -> None:
    table = write_patches(tmp_path / "data", {"train": 6, "val": 3, "test": 3})
    enc = pool_encoder()
    head, info = fit_dense_head(enc, table, tmp_path / "cache", tokens_per_patch=4, seed=0,
                                weight_decays=[1e-2, 1e-4], max_iter=50, batch_size=5)
    assert info["train_tokens"] == 4 * 3 * 6 and info["val_tokens"] == 4 * 3 * 3
    assert info["test_tokens"] == 16 * 3 * 3  # every test token is scored, none subsampled
    assert info["test_top1"] == 1.0 and info["test_patch_vote_top1"] == 1.0  # the colours are separable
    assert info["weight_decay"] in (1e-2, 1e-4) and info["feature_dim"] == 3
    # reference: the same tokens, built from the files, through fit_linear_probe directly
    def ref(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = table.indices(split)
        xs = [reference_tokens(table, int(r))[torch.from_numpy(token_choice(16, 4, 0, int(r)))] for r in rows]
        return torch.cat(xs), torch.from_numpy(np.repeat(table.labels[rows], 4))
    (tx, ty), (vx, vy) = ref("train"), ref("val")
    ref_head, ref_info = fit_linear_probe(tx, ty, vx, vy, 3, [1e-2, 1e-4], 50)
    assert ref_info["chosen"]["weight_decay"] == info["weight_decay"]
    assert torch.allclose(head.linear.weight, ref_head.linear.weight, atol=1e-3)
    assert torch.allclose(head.mean, ref_head.mean, atol=1e-4)


def test_patch_grid_of_the_conv_stem_hybrid_is_one_token_per_meta_patch() -> None:
    """The demo's vit_tiny_r_s16_p8_224 with patch_size 2: meta.patch_size 8 px, an (H/8, W/8) grid."""
    kwargs = backbone_kwargs(3, 64, patch_size=2, extra={"depth": 1})
    meta = EncoderMeta(timm_name="vit_tiny_r_s16_p8_224", timm_kwargs=kwargs, bands=["r", "g", "b"],
                       mean=[0.0] * 3, std=[1.0] * 3, patch_size=8, img_size=64, embed_dim=192)
    enc = Encoder(create_backbone(meta.timm_name, kwargs), meta).eval()
    with torch.no_grad():
        grid = enc.patch_grid(torch.rand(2, 3, 64, 96))
        ((tokens, _),) = enc.tokens(torch.rand(1, 3, 64, 64), 1)
    assert grid.shape == (2, 8, 12, 192) and tokens.shape == (1, 64, 192)
    meta.patch_size = 4  # a wrong geossl.json is a clear error, not a shifted map
    with pytest.raises(ValueError, match="patch tokens for a 16x16 grid"):
        enc.patch_grid(torch.rand(1, 3, 64, 64))


def test_dense_head_saved_in_the_model_folder_and_old_folders_still_load(tmp_path: Path) -> None:
    enc_dir = make_tiny_encoder(tmp_path / "enc", img_size=32)
    head, dense = LinearHead(192, 10), LinearHead(192, 10)
    torch.nn.init.normal_(dense.linear.weight)
    out = save_landcover_model(enc_dir, head, EUROSAT_CLASSES, "cls", tmp_path / "model", {}, dense,
                               {"test_top1": 0.5})
    info = json.loads((out / HEAD_META).read_text())
    assert info["dense"]["in_features"] == 192 and info["dense"]["probe"] == {"test_top1": 0.5}
    model = load_landcover_model(out)
    assert torch.equal(model.dense_head.linear.weight, dense.linear.weight)
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        p = model.predict_patch_proba(x)
        tokens = load_encoder(enc_dir).patch_grid(x)
        ref = torch.softmax(dense(tokens), dim=-1).permute(0, 3, 1, 2)
    assert p.shape == (2, 10, 4, 4) and torch.allclose(p, ref, atol=1e-5)
    # a re-probe without --dense into the same folder: no stale dense head survives
    save_landcover_model(enc_dir, head, EUROSAT_CLASSES, "cls", out, {})
    assert not (out / DENSE_WEIGHTS).exists() and "dense" not in json.loads((out / HEAD_META).read_text())
    old = load_landcover_model(out)
    assert old.dense_head is None
    with pytest.raises(ValueError, match="no dense head: rerun `geossl probe --dense`"):
        old.predict_patch_proba(x)
    # a head.json naming a dense head whose file is gone: the error names the file
    save_landcover_model(enc_dir, head, EUROSAT_CLASSES, "cls", out, {}, dense, {})
    (out / DENSE_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=DENSE_WEIGHTS):
        load_landcover_model(out)
