"""``geossl probe --head attentive``: the attentive head against a hand-written reference, its model folder
(round trip, errors, old linear folders), the seeded fit, and a probe on real EuroSAT RGB whose model
``geossl classify`` uses unchanged."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.synthetic import make_tiny_encoder  # noqa: E402
from geossl.cli import main  # noqa: E402
from geossl.models.encoder import load_encoder  # noqa: E402
from geossl.models.landcover import (  # noqa: E402
    HEAD_META,
    AttentiveHead,
    LandCoverModel,
    LinearHead,
    default_num_heads,
    last_block_tokens,
    load_landcover_model,
    save_landcover_model,
)
from geossl.predict import classify_scene, classify_tiles  # noqa: E402
from geossl.probe import attentive as attentive_mod  # noqa: E402
from geossl.probe.attentive import train_attentive  # noqa: E402
from geossl.probe.run import summary_line  # noqa: E402

CLASSES = ["Forest", "River", "SeaLake", "Highway"]


def random_head(dim: int = 192, k: int = 4, heads: int | None = None, seed: int = 0) -> AttentiveHead:
    """An attentive head with every parameter and buffer random (biases and standardisation included)."""
    torch.manual_seed(seed)
    head = AttentiveHead(dim, k, heads)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.3)
        head.set_standardization(torch.randn(dim), torch.rand(dim) + 0.5)
    return head.eval()


def reference_logits(head: AttentiveHead, tokens: torch.Tensor) -> torch.Tensor:
    """Written out: per head softmax(q K^T / sqrt(d)) V with the module's own projection weights."""
    d, h = head.in_features, head.num_heads
    dh = d // h
    x = (tokens - head.mean) / head.std
    w_q, w_k, w_v = head.attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = head.attn.in_proj_bias.chunk(3)
    q = head.query.reshape(1, d) @ w_q.T + b_q  # (1, D)
    k = x @ w_k.T + b_k  # (B, N, D)
    v = x @ w_v.T + b_v
    outs = []
    for i in range(h):
        sl = slice(i * dh, (i + 1) * dh)
        scores = torch.einsum("c,bnc->bn", q[0, sl], k[..., sl]) / math.sqrt(dh)
        outs.append(torch.einsum("bn,bnc->bc", torch.softmax(scores, dim=1), v[..., sl]))
    pooled = torch.cat(outs, dim=1) @ head.attn.out_proj.weight.T + head.attn.out_proj.bias
    normed = torch.nn.functional.layer_norm(pooled, (d,), head.norm.weight, head.norm.bias, head.norm.eps)
    return normed @ head.linear.weight.T + head.linear.bias


def test_forward_matches_the_reference_and_multihead_attention() -> None:
    head = random_head(dim=12, k=3, heads=3)
    tokens = torch.randn(5, 7, 12) * 2 + 1
    with torch.no_grad():
        got = head(tokens)
        torch.testing.assert_close(got, reference_logits(head, tokens), rtol=1e-5, atol=1e-5)
        # the factorised pooling is torch's own MultiheadAttention with one query, exactly
        z = (tokens - head.mean) / head.std
        mha, _ = head.attn(head.query.expand(5, -1, -1), z, z, need_weights=False)
        torch.testing.assert_close(head.pool(tokens), mha[:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head(tokens.half()), got, rtol=1e-2, atol=1e-2)  # float16 storage reads
    assert got.shape == (5, 3) and head.num_heads == 3 and head.num_classes == 3
    assert [default_num_heads(d) for d in (192, 384, 768, 48, 200)] == [3, 6, 12, 1, 2]
    with pytest.raises(ValueError, match="5 heads do not divide embed_dim 12"):
        AttentiveHead(12, 3, 5)


def test_save_load_round_trip_identical_logits_and_errors(tmp_path: Path) -> None:
    enc_dir = make_tiny_encoder(tmp_path / "enc", img_size=32, patch_size=8, depth=1)
    encoder = load_encoder(enc_dir)
    head = random_head(192, len(CLASSES))
    out = save_landcover_model(enc_dir, head, CLASSES, "tokens", tmp_path / "model", {"x": 1})
    info = json.loads((out / HEAD_META).read_text())
    assert info["head"] == "attentive" and info["version"] == 2 and info["feature_recipe"] == "tokens"
    assert info["in_features"] == 192 and info["attentive"]["num_heads"] == 3 and info["attentive"]["queries"] == 1

    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    reference = LandCoverModel(encoder, head, CLASSES, "tokens").eval()
    model = load_landcover_model(out)
    assert isinstance(model.head, AttentiveHead) and model.feature_recipe == "tokens" and model.classes == CLASSES
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
        torch.testing.assert_close(model(x), reference_logits(head, last_block_tokens(encoder, x)),
                                   rtol=1e-4, atol=1e-4)
        assert torch.allclose(model.predict_proba(x).sum(1), torch.ones(3))
    assert last_block_tokens(encoder, x).shape == (3, 1 + 16, 192)  # CLS + a 4 x 4 grid

    with pytest.raises(ValueError, match="feature_recipe must be 'tokens'"):
        save_landcover_model(enc_dir, head, CLASSES, "cls", tmp_path / "bad", {})

    def broken(name: str, **changes: object) -> Path:
        bad = save_landcover_model(enc_dir, head, CLASSES, "tokens", tmp_path / name, {})
        data = json.loads((bad / HEAD_META).read_text())
        for key, value in changes.items():
            if value is None:
                data.pop(key)
            else:
                data[key] = value
        (bad / HEAD_META).write_text(json.dumps(data))
        return bad

    cases = {
        "kind": ({"head": "mlp"}, r"head\.json: unknown head type 'mlp'"),
        "entry": ({"attentive": None}, r"head\.json: an attentive head needs 'attentive'"),
        "nheads": ({"attentive": {"num_heads": 5}}, r"head\.json: 5 attention heads do not divide"),
        "recipe": ({"feature_recipe": "cls"}, r"head\.json: head 'attentive' with feature recipe 'cls'"),
        "linear": ({"head": None}, r"head\.json: head 'linear' with feature recipe 'tokens'"),
        "dim": ({"in_features": 96}, r"head\.json: head takes 96 token dims but the encoder gives 192"),
    }
    for name, (changes, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            load_landcover_model(broken(name, **changes))
    bad = broken("classes", classes=CLASSES[:3])
    with pytest.raises(ValueError, match=r"head\.safetensors: tensor shapes"):
        load_landcover_model(bad)


def test_linear_folders_are_written_and_read_as_before(tmp_path: Path) -> None:
    enc_dir = make_tiny_encoder(tmp_path / "enc", img_size=32, patch_size=8, depth=1)
    linear = LinearHead(192, 4)
    torch.nn.init.normal_(linear.linear.weight)
    out = save_landcover_model(enc_dir, linear, CLASSES, "cls", tmp_path / "model", {"p": 1})
    info = json.loads((out / HEAD_META).read_text())
    assert set(info) == {"format", "version", "classes", "feature_recipe", "in_features", "probe"}
    assert info["version"] == 1  # older geossl still reads a linear model written now
    # a head.json exactly as geossl wrote it before attentive heads existed
    (out / HEAD_META).write_text(json.dumps({"format": "geossl-landcover-head", "version": 1, "classes": CLASSES,
                                             "feature_recipe": "cls", "in_features": 192, "probe": {}}))
    model = load_landcover_model(out)
    assert isinstance(model.head, LinearHead) and model.feature_recipe == "cls"
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), linear(load_encoder(enc_dir).features(x, "cls")), rtol=0, atol=0)
    # an attentive probe into the same folder replaces the head; a linear one restores the old layout
    save_landcover_model(enc_dir, random_head(192, 4), CLASSES, "tokens", out, {})
    assert isinstance(load_landcover_model(out).head, AttentiveHead)
    save_landcover_model(enc_dir, linear, CLASSES, "cls", out, {})
    assert "head" not in json.loads((out / HEAD_META).read_text())
    assert isinstance(load_landcover_model(out).head, LinearHead)


def test_training_is_seeded_and_picks_the_learning_rate_on_val() -> None:
    """One token of each tile carries its class (at a random place): what attention pools, a mean dilutes."""
    gen = torch.Generator().manual_seed(0)
    n, tokens_per, dim, k = 160, 9, 16, 3
    labels = np.arange(n) % k
    x = torch.randn(n, tokens_per, dim, generator=gen)
    where = torch.randint(0, tokens_per, (n,), generator=gen)
    x[torch.arange(n), where, :k] += 6 * torch.nn.functional.one_hot(torch.from_numpy(labels), k).float()
    x[torch.arange(n), where, k] += 6  # and is marked as the informative one
    train, val = np.arange(0, 120), np.arange(120, 160)
    flat = x[torch.from_numpy(train)].flatten(0, 1)
    mean, std = flat.mean(0), flat.std(0)
    raw, x = x, ((x - mean) / std).half()  # the store of extract_tokens: standardised float16
    kwargs = dict(lrs=[1e-2, 1e-3], epochs=8, batch_size=32, seed=3)
    head, info = train_attentive(x, labels, train, val, k, mean, std, **kwargs)
    again, info2 = train_attentive(x, labels, train, val, k, mean, std, **kwargs)
    for a, b in zip(head.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    def timeless(i: dict) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in i["sweep"]]

    assert timeless(info) == timeless(info2) and info["chosen"] == info2["chosen"]
    assert [r["lr"] for r in info["sweep"]] == [1e-3, 1e-2] and len(info["sweep"][0]["val_top1_per_epoch"]) == 8
    assert info["val_top1"] == max(r["val_top1"] for r in info["sweep"]) >= 0.9
    assert info["chosen"]["lr"] == next(r["lr"] for r in info["sweep"] if r["val_top1"] == info["val_top1"])
    # the head keeps the statistics: on raw tokens (what classify feeds it) it gives the logits it was fitted on
    with torch.no_grad():
        torch.testing.assert_close(head(raw[120:]), attentive_mod.predict_logits(head, x, val), rtol=0, atol=0.05)
    other, _ = train_attentive(x, labels, train, val, k, mean, std, **{**kwargs, "seed": 4})
    assert not torch.equal(other.query, head.query)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train_attentive(x, labels, train, val, k, mean, std, lrs=[1e-3], epochs=0)


def test_extract_tokens_standardises_with_train_statistics(tmp_path: Path) -> None:
    from test_dense_head import write_patches

    from geossl.data.patches import PatchDataset
    from geossl.probe.features import table_csv

    table = write_patches(tmp_path / "data", {"train": 4, "val": 2, "test": 2})
    ds = PatchDataset(table_csv(table, tmp_path / "cache", "k"), classes=table.classes)
    enc = load_encoder(make_tiny_encoder(tmp_path / "enc", img_size=16, patch_size=4, depth=1))
    train = table.indices("train")
    store, mean, std = attentive_mod.extract_tokens(enc, ds, train, batch_size=5)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))]).float()
    with torch.no_grad():
        raw = last_block_tokens(enc, images)  # (rows, 1 + 16, 192) in table order
    flat = raw[torch.from_numpy(train)].flatten(0, 1).double()
    torch.testing.assert_close(mean, flat.mean(0).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std, flat.std(0, unbiased=False).float(), rtol=1e-4, atol=1e-5)
    assert store.dtype == torch.float16 and store.shape == raw.shape
    torch.testing.assert_close(store.float(), (raw - mean) / std, rtol=0, atol=2e-2)


def small_eurosat_splits(data: Path, out: Path, per: dict[str, int]) -> Path:
    """The first ``per[split]`` files of each class from EuroSAT's own split (seeded by the file order)."""
    taken: dict[tuple[str, str], int] = {}
    rows = []
    with open(data / "splits.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            key = (r["label"], r["split"])
            if taken.get(key, 0) < per.get(r["split"], 0):
                taken[key] = taken.get(key, 0) + 1
                rows.append((r["path"], r["label"], r["split"]))
    with open(out, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *rows])
    return out


def test_probe_attentive_on_real_eurosat_then_classify(tmp_path: Path, shared_data: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    data = shared_data / "eurosat-rgb"
    splits = small_eurosat_splits(data, tmp_path / "splits.csv", {"train": 30, "val": 10, "test": 20})
    enc = make_tiny_encoder(tmp_path / "enc", img_size=64, patch_size=8, depth=1, seed=5, gsd=10.0)
    out = tmp_path / "probe"
    rc = main(["probe", "--encoder", str(enc), "--data", str(data), "--splits", str(splits), "--out", str(out),
               "--workers", "0", "--device", "cpu", "--weight-decays", "1e-2,1e-3", "--no-random-baseline",
               "--head", "attentive", "--attentive-epochs", "12", "--attentive-lrs", "3e-3"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary_line(metrics) == line and "attentive head: top-1" in line and "linear top-1" in line
    att = metrics["attentive"]
    n_test = metrics["counts"]["test"]["total"]
    assert n_test == 200 and metrics["counts"]["train"]["total"] == 300 and metrics["head"] == "attentive"
    assert {"test_top1", "val_top1", "chosen", "epochs", "num_heads", "sweep", "seconds", "per_class"} <= att.keys()
    assert att["chosen"]["lr"] == 3e-3 and att["epochs"] == 12 and att["tokens_per_patch"] == 65
    assert att["val_top1"] == max(r["val_top1"] for r in att["sweep"])
    assert sum(c["support"] for c in att["per_class"].values()) == n_test
    assert "linear_top1" in metrics and "knn_top1" in metrics and metrics["wall_seconds"]["attentive"] > 0
    print(f"linear {metrics['linear_top1']:.3f} knn {metrics['knn_top1']:.3f} attentive {att['test_top1']:.3f} "
          f"({att['seconds']:.1f} s)")
    assert att["test_top1"] * n_test >= 45  # chance is 20 of 200; P(Binomial(200, 0.1) >= 45) < 1e-7

    model = load_landcover_model(out / "model")
    assert isinstance(model.head, AttentiveHead) and model.classes == metrics["classes"]
    head_info = json.loads((out / "model" / HEAD_META).read_text())
    assert head_info["probe"]["head"] == "attentive" and head_info["probe"]["attentive_top1"] == att["test_top1"]

    # the saved model on the test pixels scores what the probe reported (it scored float16 tokens: a near tie
    # may flip), so the saved head is the fitted one, with its statistics, on CLS + patch tokens in order
    with open(splits, newline="") as fh:
        test = [(data / r["path"], r["label"]) for r in csv.DictReader(fh) if r["split"] == "test"]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p), dtype=np.float32).transpose(2, 0, 1) for p, _ in test]))
    with torch.inference_mode():
        direct = [model.classes[i] for i in model(x).argmax(1).tolist()]
    assert abs(np.mean([d == lab for d, (_, lab) in zip(direct, test, strict=True)]) - att["test_top1"]) <= 0.01

    # geossl classify on tiles: the classes the saved model gives on the same pixels
    tiles = [p for p, _ in test][::20]
    res = classify_tiles(out / "model", [str(t) for t in tiles], tmp_path / "tiles", device="cpu", progress=False)
    with open(res.csv, newline="") as fh:
        predicted = {Path(r["path"]).name: r["class"] for r in csv.DictReader(fh)}
    assert [predicted[t.name] for t in tiles] == direct[::20] and res.tiles == len(tiles) == 10

    # and a small window of a real NAIP scene (4 bands; the RGB ones), mapped with the attentive model
    scene = shared_data / "scenes" / "naip_5m_north_dakota_2019.tif"
    crop = tmp_path / "naip_crop.tif"
    with rasterio.open(scene) as src:
        win = Window(200, 200, 256, 192)
        profile = {**src.profile, "width": 256, "height": 192, "transform": src.window_transform(win),
                   "tiled": False, "compress": None}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=win))
    result = classify_scene(out / "model", str(crop), tmp_path / "map", device="cpu", bands=[1, 2, 3],
                            resample=False, check_stats=False, progress=False, stac=False)
    with rasterio.open(result.class_map) as m:
        classes = m.read(1)
    assert classes.shape == (192 // 64, 256 // 64) and set(np.unique(classes)) <= set(range(10))
