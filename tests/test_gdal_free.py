"""Pretraining and probing on JPEG patches need no GDAL: the GPU benchmark host has no rasterio/torchgeo.

A fresh interpreter refuses every import of rasterio and the other geo packages (as a host without them
would), then imports the ``geossl pretrain``/``geossl probe`` modules, reads EuroSAT JPEGs, runs two real
training steps and a probe. Only a GeoTIFF patch needs rasterio, and then the error names the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a fresh interpreter pretrains and probes (~15 s): in make test, not make check

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import importlib.abc, json, sys
from pathlib import Path

BLOCKED = {"rasterio", "torchgeo", "geopandas", "kornia", "affine", "pyproj", "shapely", "fiona", "osgeo"}

class NoGeo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: a host without GDAL)")
        return None

sys.meta_path.insert(0, NoGeo())
import torch
torch.set_num_threads(1)

import geossl.dino.cli, geossl.dino.train, geossl.probe.cli, geossl.probe.run  # noqa: E401
from geossl.config import load_config
from geossl.data.patches import PatchDataset
from geossl.dino.data import build_pretrain_dataset, resolve_stats
from geossl.dino.train import pretrain
from geossl.probe.run import ProbeOptions, run_probe

data, tmp = Path(sys.argv[1]), Path(sys.argv[2])
out = {}
ds = PatchDataset(data, split="val", limit=20)
item = ds[0]
out["item"] = [list(item["image"].shape), str(item["image"].dtype)]

overrides = [f"data.root={data.parent}", "data.limit=64", "data.batch_size=16", "data.num_workers=0",
             "trainer.accelerator=cpu", "trainer.require_gpu=false", "trainer.precision=32-true",
             "trainer.max_steps=2", "trainer.progress_bar=false", "eval.knn_data=null",
             "model.extra={depth: 1, embed_dim: 48, num_heads: 2}", "head.out_dim=64", "head.hidden_dim=64",
             "head.bottleneck_dim=32", "augment.n_local=2"]
cfg = load_config("configs/gpu_suite.yaml", overrides)
out["pretrain_dataset"] = len(build_pretrain_dataset(cfg))
out["stats_bands"] = resolve_stats(cfg, 3).count
summary = pretrain(cfg, tmp / "run", resume="never")
out["pretrain"] = [summary["status"], summary["steps"]]

rows = ["path,label,split"]
for split, n in (("train", 3), ("val", 2), ("test", 2)):
    part = PatchDataset(data, split=split, limit=10 * n)
    rows += [f"{p.parent.name}/{p.name},{p.parent.name},{split}" for p in part.paths]
(tmp / "splits.csv").write_text("\n".join(rows) + "\n")
metrics = run_probe(ProbeOptions(encoder=summary["encoder_dir"], data=data, out=tmp / "probe",
                                 splits=tmp / "splits.csv", max_iter=10, weight_decays=[1e-3]))
out["probe"] = [metrics["linear_top1"], metrics["counts"]["test"]["total"]]

from PIL import Image
(tmp / "tifs" / "a").mkdir(parents=True)
Image.new("RGB", (8, 8)).save(tmp / "tifs" / "a" / "x.tif")
try:
    PatchDataset(tmp / "tifs")
    out["geotiff_error"] = None
except RuntimeError as exc:
    out["geotiff_error"] = str(exc)
out["geo_modules_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
"""


def test_pretrain_and_probe_on_jpegs_without_rasterio(shared_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(shared_data / "eurosat-rgb"), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["item"] == [[3, 64, 64], "torch.uint8"]
    assert out["pretrain_dataset"] == 64 and out["stats_bands"] == 3
    assert out["pretrain"] == ["finished", 2]
    assert 0.0 <= out["probe"][0] <= 1.0 and out["probe"][1] == 20
    assert out["geotiff_error"] is not None and "rasterio" in out["geotiff_error"] and "x.tif" in out["geotiff_error"]
    assert out["geo_modules_loaded"] == []
