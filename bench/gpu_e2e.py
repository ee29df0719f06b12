"""End-to-end GPU speed: real files on disk -> the REAL loader -> GPU multi-crop -> the DINO step.

Sources: EuroSAT JPEGs (``PatchDataset`` via ``geossl.dino.data.build_pretrain_dataset``; resized in the
workers to the preset's input size, e.g. 224 px for the 224/96 recipe) and random tiles cut from a real
scene (``RandomTileDataset``). Batches go through ``PretrainDataModule`` exactly as in training:
DataLoader with N workers, pinned memory, uint8 on the wire, non-blocking copy by Lightning, then
``DINOModule.training_step`` (augmentation on the device). In the same run, the synthetic step of
bench/gpu_step.py measures the model-only figure, so ``fraction_of_step`` = e2e img/s / step img/s.
``loader_img_per_s`` is the loader alone (no model): if it is below the step figure, add workers.

    python bench/gpu_e2e.py --workers 16                       # needs rasterio + the data
    python bench/gpu_e2e.py --prepare-subset .carry/bench_data # copy a subset that travels (~25 MB)
    GEOSSL_DATA=$PWD/.carry/bench_data python bench/gpu_e2e.py ...
    python bench/gpu_e2e.py --quick                            # tiny CPU run (tests)

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C  # noqa: E402
from bench import gpu_step  # noqa: E402
from geossl.dino.data import (  # noqa: E402
    PretrainDataModule,
    build_pretrain_dataset,
    dataset_band_count,
    dataset_dtype,
    steps_per_epoch,
    value_range,
)
from geossl.settings import data_root  # noqa: E402

SCENE = "naip_5m_north_dakota_2019.tif"  # 934x723, 4 bands uint8: large enough for 224 px tiles
COLUMNS = [("source", "source", 0), ("config", "config", 0), ("bands", "C", 0), ("compile", "compile", 0),
           ("batch_size", "batch", 0), ("workers", "workers", 0), ("loader_img_per_s", "loader img/s", 1),
           ("step_img_per_s", "step img/s", 1), ("e2e_img_per_s", "e2e img/s", 1),
           ("fraction_of_step", "e2e/step", 3), ("steps_per_epoch", "steps/epoch", 0), ("status", "status", 0)]


class Resized(Dataset):
    """The dataset's uint8 images resized (bilinear) in the worker, as a dataset stored at that size would arrive."""

    def __init__(self, dataset: Any, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        img = item["image"]
        if img.shape[-1] != self.size:
            x = F.interpolate(img[None].float(), size=(self.size, self.size), mode="bilinear", antialias=True)
            item["image"] = x[0].round().clamp(0, 255).to(img.dtype)
        return item


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", nargs="+", default=["vits16_224", "vits8_64"], choices=sorted(C.PRESETS))
    ap.add_argument("--source", nargs="+", default=["eurosat", "scenes"], choices=["eurosat", "scenes"])
    ap.add_argument("--data", default=None, help="EuroSAT-style folder; default data_root()/eurosat-rgb")
    ap.add_argument("--scene", default=None, help=f"a GeoTIFF; default data_root()/scenes/{SCENE}")
    ap.add_argument("--limit", type=int, default=None, help="use at most this many EuroSAT images")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", choices=["0", "1"], default="1")
    ap.add_argument("--n-local", type=int, default=8)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--prepare-subset", metavar="DIR", default=None,
                    help="copy --subset-size EuroSAT JPEGs + the scene into DIR (for a GPU host) and exit")
    ap.add_argument("--subset-size", type=int, default=6000)
    ap.add_argument("--quick", action="store_true", help="tiny model, CPU, 2 workers, 2 steps (tests)")
    args = ap.parse_args(argv)
    args.probe = 0
    if args.quick:
        args.device, args.config, args.batch_sizes, args.workers = "cpu", ["tiny"], [4], 2
        args.steps, args.warmup, args.compile, args.n_local, args.limit = 2, 1, "0", 2, args.limit or 64
    return args


def prepare_subset(out: Path, n: int) -> None:
    """A class-balanced EuroSAT subset (class folders) and the scene, inside the checkout (e.g. .carry/)."""
    from geossl.data.patches import PatchDataset

    ds = PatchDataset(data_root() / "eurosat-rgb", split="train", limit=n, seed=0)
    for path in ds.paths:
        target = out / "eurosat-rgb" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    # Every copied image is a pretraining image: a splits.csv marking all of them "train".
    rows = [f"{p.parent.name}/{p.name},{p.parent.name},train" for p in ds.paths]
    (out / "eurosat-rgb" / "splits.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_root() / "scenes" / SCENE, out / "scenes" / SCENE)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(ds.paths)} images + {SCENE} to {out} ({size / 2**20:.1f} MiB)")


def build_source(source: str, preset: str, batch: int, args: argparse.Namespace) -> tuple[Any, Any, Dataset]:
    """(Config, dataset as the loader sees it, raw dataset) through geossl.dino.data.build_pretrain_dataset."""
    size = C.PRESETS[preset]["image"]
    if source == "eurosat":
        data = {"kind": "patches", "paths": [args.data or str(data_root() / "eurosat-rgb")], "split": "train",
                "limit": args.limit, "tile_size": 64}
    else:
        length = batch * (args.warmup + args.steps) * 2
        data = {"kind": "scenes", "paths": [args.scene or str(data_root() / "scenes" / SCENE)], "tile_size": size,
                "tiles_per_epoch": length, "min_valid_fraction": 0.5}
    cfg = C.bench_config(preset, batch, args.n_local, args.compile == "1", num_workers=args.workers, **data)
    raw = build_pretrain_dataset(cfg)
    return cfg, Resized(raw, size), raw


def band_stats(dataset: Dataset, n: int = 64) -> tuple[list[float], list[float]]:
    """Per-band mean/std of a few samples (their values do not change the speed; this keeps us self-contained)."""
    x = torch.stack([dataset[i]["image"].float() for i in range(min(n, len(dataset)))])
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1.0).tolist()


def loader_speed(dataset: Dataset, cfg: Any, batches: int) -> float:
    """img/s of the same DataLoader settings as PretrainDataModule, without a model (worker start excluded)."""
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                        pin_memory=torch.cuda.is_available(), drop_last=True,
                        prefetch_factor=4 if cfg.data.num_workers > 0 else None)
    it = iter(loader)
    next(it)
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += len(next(it)["image"])
        except StopIteration:
            break
    return n / max(time.perf_counter() - t, 1e-9)


def measure(source: str, preset: str, batch: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cfg, dataset, raw = build_source(source, preset, batch, args)
    bands, dtype = dataset_band_count(raw), dataset_dtype(raw)
    row: dict[str, Any] = {"source": source, "config": preset, "bands": bands, "dtype": dtype,
                           "compile": int(args.compile == "1"), "batch_size": batch, "workers": args.workers,
                           "n_images": len(dataset), "steps_per_epoch": steps_per_epoch(len(dataset), batch, 1)}
    step_args = argparse.Namespace(**{**vars(args), "bands": bands})
    step = gpu_step.measure_step(preset, batch, args.compile == "1", step_args, device)
    row["step_img_per_s"] = step["img_per_s"]
    row["loader_img_per_s"] = loader_speed(dataset, cfg, max(2, args.steps // 2))
    mean, std = band_stats(dataset)
    module = C.build_module(cfg, bands, len(dataset), mean, std, value_range(cfg, dtype))
    timer = C.run_training(module, cfg, device, args.warmup, args.steps, 0, datamodule=PretrainDataModule(cfg, dataset))
    row["e2e_img_per_s"] = batch * args.steps / timer.seconds
    row["fraction_of_step"] = row["e2e_img_per_s"] / step["img_per_s"]
    row["peak_mem_gib"] = timer.peak_bytes / 2**30 if device.type == "cuda" else None
    row["status"] = "ok"
    del module
    C.free(device)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare_subset:
        prepare_subset(Path(args.prepare_subset), args.subset_size)
        return 0
    try:
        import rasterio  # noqa: F401  (geossl.data.patches and .scenes import it at module level)
    except ImportError:
        print("gpu_e2e needs rasterio (the real loaders import it). On a host without a registry: "
              "pip download rasterio --only-binary :all: -d .whl  (here), carry .whl, then "
              "pip install --no-index --find-links .whl rasterio  (there)", file=sys.stderr)
        return 2
    if args.quick:
        torch.set_num_threads(1)  # shared CI cores: avoid OpenMP oversubscription
    C.quiet_lightning()
    device = torch.device(args.device)
    rows: list[dict[str, Any]] = []
    for source in args.source:
        for preset in args.config:
            for batch in args.batch_sizes:
                try:
                    row = measure(source, preset, batch, args, device)
                except torch.OutOfMemoryError:
                    C.free(device)
                    row = {"source": source, "config": preset, "batch_size": batch, "status": "oom"}
                rows.append(row)
                print(f"# {source} {preset} batch={batch}: e2e {C.fmt(row.get('e2e_img_per_s'))} img/s, "
                      f"{C.fmt(row.get('fraction_of_step'), 3)} of step", file=sys.stderr, flush=True)
    C.print_table(rows, COLUMNS)
    C.print_json({"bench": "gpu_e2e", "device": C.device_name(device), "torch": torch.__version__,
                  "steps": args.steps, "warmup": args.warmup, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
