"""--rescale percentile: scene percentiles map exactly onto the model's, constant bands and nodata/NaN are
safe, the refusal of check_statistics points to it, and an 8-bit RGB model runs on a reflectance scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from bench.synthetic import RGB_MEAN, RGB_STD, make_tiny_model, write_synthetic_scene
from geossl.cli import main
from geossl.models.encoder import EncoderMeta
from geossl.models.landcover import load_landcover_model
from geossl.predict.scene import classify_scene
from geossl.scene.reader import ModelSceneReader
from geossl.scene.rescale import fit_percentile_rescale

P2, P98 = [20.0, 30.0, 25.0], [200.0, 180.0, 170.0]


def meta(p2: list[float] | None = P2, p98: list[float] | None = P98) -> EncoderMeta:
    return EncoderMeta(timm_name="x", timm_kwargs={"in_chans": 3}, bands=["B4", "B3", "B2"], mean=RGB_MEAN,
                       std=RGB_STD, patch_size=8, img_size=32, embed_dim=192, p2=p2, p98=p98)


def test_sampled_percentiles_map_exactly_onto_the_models() -> None:
    rng = np.random.default_rng(0)
    pixels = np.stack([rng.normal(1000, 300, 5000), rng.uniform(0, 1, 5000), rng.gamma(2, 500, 5000)])
    fit = fit_percentile_rescale(meta(), pixels, "s.tif")
    out = fit.apply(pixels.astype(np.float32).copy())
    np.testing.assert_allclose(np.percentile(out, 2, axis=1), P2, rtol=1e-4)
    np.testing.assert_allclose(np.percentile(out, 98, axis=1), P98, rtol=1e-4)
    # reference written here: (x - p2_scene) / (p98_scene - p2_scene) * (p98 - p2) + p2
    lo, hi = np.percentile(pixels, 2, axis=1), np.percentile(pixels, 98, axis=1)
    ref = (pixels - lo[:, None]) / (hi - lo)[:, None] * (np.array(P98) - P2)[:, None] + np.array(P2)[:, None]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


def test_constant_band_nan_and_nodata() -> None:
    rng = np.random.default_rng(1)
    pixels = np.stack([np.full(1000, 7.0), rng.uniform(100, 200, 1000), rng.uniform(100, 200, 1000)])
    clean = fit_percentile_rescale(meta(), pixels, "s.tif")
    dirty = pixels.copy()
    dirty[1, :300], dirty[2, :300] = np.nan, -9999.0
    fit = fit_percentile_rescale(meta(), np.concatenate([pixels, dirty[:, :300]], axis=1), "s.tif", nodata=-9999.0)
    np.testing.assert_allclose(fit.scale, clean.scale) and np.testing.assert_allclose(fit.offset, clean.offset)
    assert fit.scale[0] == 0 and np.isfinite(fit.offset).all()
    assert fit.apply(np.full((3, 2), 7.0, np.float32))[0, 0] == pytest.approx((P2[0] + P98[0]) / 2)
    with pytest.raises(ValueError, match="s.tif: --rescale percentile: band 2 has no valid pixels"):
        fit_percentile_rescale(meta(), np.stack([pixels[0], np.full(1000, np.nan), pixels[2]]), "s.tif")
    with pytest.raises(ValueError, match="needs the model's p2/p98 band percentiles, but its encoder's geossl.json has none"):
        fit_percentile_rescale(meta(None, None), pixels, "s.tif")


def test_reflectance_scene_refused_then_rescaled(tmp_path: Path) -> None:
    model = load_landcover_model(make_tiny_model(tmp_path / "m", img_size=32, p2=P2, p98=P98))
    scene = write_synthetic_scene(tmp_path / "refl.tif", 96, 96, dtype="uint16", nodata=0, border=20)
    with rasterio.open(scene, "r+") as dst:
        data = dst.read()
        dst.write(np.where(data == 0, 0, data.astype(np.uint16) * 40 + 3000))
    with pytest.raises(ValueError, match=r"refl.tif: band \d values .*--rescale percentile"):
        classify_scene(model, str(scene), tmp_path / "o", progress=False)
    # the hint names the command that has --rescale: embed, change, probe and finetune print it too (#23)
    with pytest.raises(ValueError, match=r"geossl classify --rescale percentile maps .*; --no-check-stats"):
        with ModelSceneReader(str(scene), model.meta) as reader:
            reader.check_statistics()
    res = classify_scene(model, str(scene), tmp_path / "o", rescale="percentile", progress=False, stride=16)
    with ModelSceneReader(str(scene), model.meta, rescale="percentile") as reader:
        sample = reader.sample_pixels()  # valid pixels only, already rescaled: the nodata collar is ignored
    np.testing.assert_allclose(np.percentile(sample, 2, axis=1), P2, rtol=1e-3)
    np.testing.assert_allclose(np.percentile(sample, 98, axis=1), P98, rtol=1e-3)
    assert "rescaled by percentiles" in res.resample_note and res.preview.read_bytes()[:4] == b"\x89PNG"
    with rasterio.open(res.class_map) as m:
        assert "rescaled by percentiles" in m.tags()["RESAMPLING"]


@pytest.mark.slow
def test_rgb_model_on_the_reflectance_s2_scene(scenes_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny EuroSAT-RGB-statistics model (0-255) on the float64 reflectance-like S2 scene (~488-2102)."""
    model = make_tiny_model(tmp_path / "m", img_size=32, p2=[30.0, 40.0, 45.0], p98=[160.0, 150.0, 140.0])
    scene = scenes_dir / "s2_like_10m_netherlands_cog.tif"
    args = ["classify", "--model", str(model), "--input", str(scene), "--bands", "3,2,1", "--quiet",
            "--stride", "16", "--no-preview"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "do not match the model's" in err and "--rescale percentile" in err
    assert main([*args, "--out", str(tmp_path / "ok"), "--rescale", "percentile"]) == 0
    assert "rescaled by percentiles" in capsys.readouterr().out
    with rasterio.open(tmp_path / "ok" / "s2_like_10m_netherlands_cog_classes.tif") as m:
        cls = m.read(1)
    assert cls.shape == (206 // 16, 343 // 16) and (cls != 255).all()
    no_p = make_tiny_model(tmp_path / "nop", img_size=32)
    assert main(["classify", "--model", str(no_p), "--input", str(scene), "--bands", "3,2,1", "--quiet",
                 "--out", str(tmp_path / "nop_out"), "--rescale", "percentile"]) == 1
    assert "has none" in capsys.readouterr().err and not (tmp_path / "nop_out" / "s2_like_10m_netherlands_cog_classes.tif").exists()
