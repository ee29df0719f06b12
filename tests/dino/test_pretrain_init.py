"""`geossl pretrain --init`: continued DINO from an encoder (or a run), bands matched by name."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import safetensors.torch
import torch
from dino_helpers import make_patch_folder, tiny_config

from geossl.cli import main
from geossl.dino.train import pretrain
from geossl.models.encoder import read_meta

REPO = Path(__file__).resolve().parents[2]


class StartState(L.Callback):
    """The student and teacher backbones (and heads) as training starts, before any update."""

    def on_train_start(self, trainer, pl_module):
        net = pl_module.model
        self.student = {k: v.clone() for k, v in net.student.state_dict().items()}
        self.teacher = {k: v.clone() for k, v in net.teacher.state_dict().items()}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("init")
    data, stats = make_patch_folder(tmp / "patches", n_per_class=8)
    pretrain(tiny_config(data, stats, ["optim.epochs=1"]), tmp / "run")
    return tmp, data, stats


def test_student_and_teacher_start_as_the_encoder_with_its_architecture(source_run):
    tmp, data, stats = source_run
    start = StartState()
    # The config asks for another depth: the encoder's architecture wins.
    cfg = tiny_config(data, stats, ["optim.epochs=1", "trainer.max_steps=1", f"model.init={tmp / 'run' / 'encoder'}",
                                    "model.extra={depth: 1, embed_dim: 48, num_heads: 3}"])
    summary = pretrain(cfg, tmp / "cont", callbacks=[start])
    weights = safetensors.torch.load_file(str(tmp / "run" / "encoder" / "model.safetensors"))
    for net in (start.student, start.teacher):
        backbone = {k[len("backbone."):]: v for k, v in net.items() if k.startswith("backbone.")}
        assert backbone.keys() == weights.keys()
        assert all(torch.equal(backbone[k], weights[k]) for k in weights)
    # From a run folder the DINO head comes from its newest checkpoint; both networks' heads.
    assert summary["init"]["head"].startswith("from ") and summary["init"]["bands"] == "bands: same as the encoder"
    from geossl.dino.checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(tmp / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    for name in ("student", "teacher"):
        head = {k: v for k, v in getattr(start, name).items() if k.startswith("head.")}
        assert head and all(torch.equal(v, ckpt[f"model.{name}.{k}"]) for k, v in head.items())
    assert read_meta(tmp / "cont" / "encoder").timm_kwargs["depth"] == 2


def test_an_imported_encoder_gets_a_new_head_and_renamed_bands_are_matched(source_run, tmp_path):
    tmp, data, stats = source_run
    enc = tmp_path / "enc"
    assert main(["import-encoder", "--from", str(tmp / "run" / "encoder"), "--bands", "B04,B03,B02",
                 "--out", str(enc)]) == 0
    cfg = tiny_config(data, stats, ["optim.epochs=1", "trainer.max_steps=1", f"model.init={enc}",
                                    "data.band_names=[B4, B3, B2]"])
    summary = pretrain(cfg, tmp_path / "cont")
    assert summary["init"]["head"] == "new" and summary["init"]["encoder"] == str(enc.resolve())
    assert read_meta(tmp_path / "cont" / "encoder").bands == ["B4", "B3", "B2"]


def test_unmatched_bands_are_one_clear_line(source_run, tmp_path, capsys):
    tmp, data, stats = source_run
    config = tmp_path / "c.yaml"
    config.write_text("{}")
    from dino_helpers import TINY

    args = ["pretrain", "--config", str(config), "--run-dir", str(tmp_path / "r"),
            "--init", str(tmp / "run" / "encoder"), *TINY, f"data.paths=[{data}]", f"data.stats={stats}",
            "data.band_names=[X, Y, Z]"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no band of the model (r, g, b) matches a band of the data (X, Y, Z)" in err
    assert main([*args[:-1], "model.init_new_bands=random"]) == 1
    assert "model.init_new_bands" in capsys.readouterr().err


@pytest.mark.slow
def test_rgb_encoder_continued_on_real_13_band_eurosat_ms(tmp_path, shared_data):
    """Real data end to end: pretrain on EuroSAT RGB, name its bands, continue on EuroSAT MS, probe on MS."""
    rgb_cfg = tiny_config(shared_data / "eurosat-rgb", tmp_path / "none", [
        "data.stats=null", "data.split=train", "data.limit=32", "data.tile_size=64", "optim.epochs=1"])
    pretrain(rgb_cfg, tmp_path / "rgb")
    assert main(["import-encoder", "--from", str(tmp_path / "rgb" / "encoder"), "--bands", "B04,B03,B02",
                 "--out", str(tmp_path / "rgb-named")]) == 0
    assert main(["pretrain", "--config", str(REPO / "configs" / "continue_eurosat_ms.yaml"), "--init",
                 str(tmp_path / "rgb-named"), "--run-dir", str(tmp_path / "ms"), f"data.root={shared_data}",
                 "data.batch_size=8", "data.num_workers=0", "data.limit=40", "augment.n_local=2",
                 "head.out_dim=64", "head.hidden_dim=32", "head.bottleneck_dim=16", "trainer.max_steps=2",
                 "trainer.progress_bar=false", "eval.knn_data=null"]) == 0
    summary = json.loads((tmp_path / "ms" / "summary.json").read_text())
    assert "kept 3 (B02<-B02, B03<-B03, B04<-B04); new 10" in summary["init"]["bands"]
    meta = read_meta(tmp_path / "ms" / "encoder")
    assert meta.in_chans == 13 and meta.bands[0] == "B01" and meta.bands[-1] == "B8A"
    assert meta.timm_kwargs["depth"] == 2 and meta.embed_dim == 48  # the RGB encoder's architecture
    from geossl.probe.run import ProbeOptions, run_probe

    metrics = run_probe(ProbeOptions(encoder=str(tmp_path / "ms" / "encoder"), data=shared_data / "eurosat-ms",
                                     out=tmp_path / "probe", seeds=1, weight_decays=[1e-4], random_baseline=False))
    assert 0.0 < metrics["linear_top1"] <= 1.0 and metrics["counts"]["test"]["total"] > 100
