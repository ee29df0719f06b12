"""Pretraining data: the dataset a config names, its band statistics, and a resumable, rank-sharded order."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from geossl.config import Config
from geossl.data.stats import BandStats
from geossl.dino.bad_files import BadFileMonitor, SkippingDataset
from geossl.settings import resolve_data_path


def resolved_paths(cfg: Config) -> list[str]:
    paths = [resolve_data_path(p, cfg.data.root) for p in cfg.data.paths]
    if not paths:
        raise ValueError("data.paths is empty: name patch folders, CSV files or scenes to pretrain on")
    return paths


def build_pretrain_dataset(cfg: Config) -> Dataset:
    """Patches (class folders / CSV, labels unused) or random tiles of scenes, as the config says.

    Patches come wrapped in a :class:`SkippingDataset`: a bad file is replaced by the next good one and
    reported (geossl/dino/bad_files.py). A whole folder of the wrong size is still refused here, at once.
    """
    paths = resolved_paths(cfg)
    if cfg.data.kind == "patches":
        from geossl.data.patches import PatchDataset

        parts = [
            PatchDataset(p, split=cfg.data.split, bands=cfg.data.bands, limit=cfg.data.limit, seed=cfg.seed)
            for p in paths
        ]
        counts = {part.band_count for part in parts}
        if len(counts) > 1:
            raise ValueError(f"data.paths mix band counts {sorted(counts)}: {paths}")
        for part, path in zip(parts, paths, strict=True):
            height, width = part.patch_shape
            if (height, width) != (cfg.data.tile_size, cfg.data.tile_size):
                size = f"{width}" if height == width else f"{width}x{height}"
                raise ValueError(f"{path}: patches are {size} px but data.tile_size is {cfg.data.tile_size}")
        return SkippingDataset(parts[0] if len(parts) == 1 else ConcatDataset(parts), cfg.data.tile_size)
    if cfg.data.kind == "shards":  # chips cut by geossl chips: a local folder or an s3:// prefix
        from geossl.data.shards import ShardDataset

        if len(paths) != 1 or cfg.data.bands is not None:
            raise ValueError("data.kind shards: give one chips folder or s3:// prefix in data.paths, and no "
                             "data.bands (the chips hold the bands they were cut with)")
        dataset = ShardDataset(paths[0])
        if dataset.meta["tile_size"] != cfg.data.tile_size:
            raise ValueError(f"{paths[0]}: chips are {dataset.meta['tile_size']} px but data.tile_size is "
                             f"{cfg.data.tile_size}")
        return dataset
    from geossl.data.scenes import RandomTileDataset
    from geossl.data.uris import expand_inputs

    if cfg.augment.temporal:
        from geossl.data.temporal import TemporalTileDataset

        return TemporalTileDataset(
            expand_inputs(paths), tile_size=cfg.data.tile_size, length=cfg.data.tiles_per_epoch, bands=cfg.data.bands,
            min_valid_fraction=cfg.data.min_valid_fraction, seed=cfg.seed, max_open=cfg.data.max_open_files,
            index=resolve_data_path(cfg.data.scene_index, cfg.data.root) if cfg.data.scene_index else None,
            dates_csv=resolve_data_path(cfg.data.dates, cfg.data.root) if cfg.data.dates else None,
            min_overlap=cfg.data.stack_min_overlap)
    return RandomTileDataset(
        expand_inputs(paths),
        tile_size=cfg.data.tile_size,
        length=cfg.data.tiles_per_epoch,
        bands=cfg.data.bands,
        min_valid_fraction=cfg.data.min_valid_fraction,
        seed=cfg.seed,
        max_open=cfg.data.max_open_files,
        index=resolve_data_path(cfg.data.scene_index, cfg.data.root) if cfg.data.scene_index else None,
    )


def _first_part(dataset: Dataset) -> Any:
    dataset = dataset.dataset if isinstance(dataset, SkippingDataset) else dataset
    return dataset.datasets[0] if isinstance(dataset, ConcatDataset) else dataset


def dataset_band_count(dataset: Dataset) -> int:
    return int(_first_part(dataset).band_count)


def dataset_dtype(dataset: Dataset) -> str:
    return str(_first_part(dataset).dtype)


def bad_file_monitor(cfg: Config, dataset: Dataset) -> BadFileMonitor | None:
    """The callback that counts and reports skipped patch files; None for scenes (nothing is skipped)."""
    if not isinstance(dataset, SkippingDataset):
        return None
    return BadFileMonitor(dataset, cfg.data.max_bad_fraction, sync_every=cfg.trainer.log_every_steps)


def resolve_stats(cfg: Config, band_count: int) -> BandStats:
    """Band statistics from ``data.stats`` or computed now from a sample of the training data."""
    if cfg.data.stats:
        stats = BandStats.load(resolve_data_path(cfg.data.stats, cfg.data.root))
    else:
        from geossl.data.stats import compute_stats

        stats = compute_stats(resolved_paths(cfg), kind=cfg.data.kind, bands=cfg.data.bands,
                              tile_size=cfg.data.tile_size, seed=cfg.seed,
                              max_bad_fraction=cfg.data.max_bad_fraction, bad_fraction_setting="data.max_bad_fraction")
    if stats.count != band_count:
        raise ValueError(
            f"band statistics have {stats.count} bands ({cfg.data.stats or 'computed'}) but the data has {band_count}"
        )
    if cfg.data.band_names is not None:
        if len(cfg.data.band_names) != band_count:
            raise ValueError(f"key 'data.band_names': {len(cfg.data.band_names)} names for {band_count} bands")
        stats.bands = list(cfg.data.band_names)
    return stats


def value_range(cfg: Config, dtype: str) -> tuple[float, float] | None:
    """Raw values that map to [0, 1] for photometric augmentation (solarisation needs it)."""
    if cfg.data.value_range is not None:
        low, high = cfg.data.value_range
        return float(low), float(high)
    return (0.0, 255.0) if dtype == "uint8" else None


class ResumableSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded across ranks, that can start part-way into an epoch.

    Lightning's DistributedSampler restarts an interrupted epoch from its first batch; resuming must
    instead replay exactly the samples not yet seen, so that an interrupted run equals an uninterrupted one.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 order: Callable[[int, int], list[int]] | None = None) -> None:
        if n < world_size:
            raise ValueError(f"{n} training samples cannot be shared by {world_size} processes")
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, seed, rank, world_size, shuffle
        self.order = order  # (seed, epoch) -> a permutation of range(n) (shards: chunk-local, see shards.py)
        # Shared memory: persistent DataLoader workers read the current epoch from here.
        self.shared_epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._start_epoch = -1
        self._start_index = 0
        self.per_rank = n // world_size  # equal shards (drop the remainder) keep ranks in lockstep

    @property
    def epoch(self) -> int:
        return int(self.shared_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.shared_epoch.fill_(epoch)

    def start_at(self, epoch: int, index: int) -> None:
        """Skip the first ``index`` samples of this rank's shard in ``epoch`` (resume mid-epoch)."""
        self._start_epoch, self._start_index = epoch, index

    def epoch_indices(self, epoch: int) -> list[int]:
        if self.order is not None:  # contiguous slices: each rank reads mostly its own chunks
            return self.order(self.seed, epoch)[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        return order[self.rank : self.per_rank * self.world_size : self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices(self.epoch)
        if self.epoch == self._start_epoch:
            indices = indices[self._start_index :]
        return iter(indices)

    def __len__(self) -> int:
        # The full epoch: on a mid-epoch resume Lightning restores the batches already done and
        # counts them against this length, while iteration yields only the remaining samples.
        return self.per_rank


class _EpochAwareDataset(Dataset):
    """Forwards the sampler's epoch to datasets that draw per epoch (RandomTileDataset.set_epoch)."""

    def __init__(self, dataset: Dataset, sampler: ResumableSampler) -> None:
        self.dataset, self.sampler = dataset, sampler

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.sampler.epoch)
        return self.dataset[index]


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    steps = (n // world_size) // batch_size
    if steps < 1:
        raise ValueError(
            f"{n} training samples are fewer than one batch ({batch_size} x {world_size} processes): "
            "lower data.batch_size or add data"
        )
    return steps


def start_sampler_at_step(sampler: ResumableSampler, trainer: L.Trainer, batch_size: int, per_epoch: int) -> None:
    """Point the sampler at the trainer's restored step (0 for a fresh run), and on a resume say so in one line.

    Lightning's own resume messages ("restoring states", "dataloader is not resumable") are silenced in
    :func:`geossl.dino.train.fit_resumable`: they describe Lightning's loaders, not this sampler, whose order
    is a function of (seed, epoch) alone, so starting it at the sample reached continues the run bitwise."""
    step = trainer.global_step  # restored from the checkpoint before the loader is built
    epoch, batch_in_epoch = divmod(step, per_epoch)
    sampler.start_at(epoch, batch_in_epoch * batch_size)
    sampler.set_epoch(epoch)
    if step and trainer.is_global_zero:
        seen = step * batch_size * trainer.world_size
        print(f"geossl: resumed {trainer.ckpt_path or 'the checkpoint'} at step {step} (epoch {epoch}, batch "
              f"{batch_in_epoch} of {per_epoch}, {seen} samples seen); weights, optimiser, schedules, random "
              "state and data order restored, so the run continues as if it had not stopped",
              file=sys.stderr, flush=True)


class PretrainDataModule(L.LightningDataModule):
    """Builds the loader once the trainer knows the rank, world size and the restored step."""

    def __init__(self, cfg: Config, dataset: Dataset, bad_files: BadFileMonitor | None = None) -> None:
        super().__init__()
        self.cfg, self.dataset, self.bad_files = cfg, dataset, bad_files
        self.sampler: ResumableSampler | None = None

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Takes the samples' skip records out of the batch while it is still on the CPU (reading them on
        the GPU would sync the device every step) and hands them to the monitor, in the main process."""
        if isinstance(batch, dict) and "skipped" in batch:
            skipped = batch.pop("skipped")
            if self.bad_files is not None:
                self.bad_files.record(skipped)
        return batch

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None
        cfg = self.cfg
        n = len(self.dataset)  # type: ignore[arg-type]
        self.sampler = ResumableSampler(n, cfg.seed, trainer.global_rank, trainer.world_size,
                                        order=getattr(self.dataset, "epoch_order", None))
        per_epoch = steps_per_epoch(n, cfg.data.batch_size, trainer.world_size)
        start_sampler_at_step(self.sampler, trainer, cfg.data.batch_size, per_epoch)
        workers = cfg.data.num_workers
        return DataLoader(
            _EpochAwareDataset(self.dataset, self.sampler),
            batch_size=cfg.data.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
            persistent_workers=workers > 0,  # the epoch reaches them through shared memory
            prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=functools.partial(init_worker, rank=trainer.global_rank),
        )


def ignore_stop_signals(worker_id: int = 0) -> None:
    """The one rule for DataLoader worker processes of both ``geossl pretrain`` and ``geossl finetune``:
    ignore SIGTERM and SIGINT, so that only the main process handles a stop.

    A stop often reaches every process of the job, not just the main one: Ctrl-C in a terminal, ``timeout``,
    Slurm's scancel and systemd's stop signal the whole process group. Workers that died of it made the main
    process fail (``DataLoader worker (pid ...) is killed by signal: Terminated.``) before
    :class:`~geossl.dino.callbacks.SigtermCheckpoint` could save ``last.ckpt``, losing every step since the
    last periodic checkpoint; it needs its workers for the one batch it finishes before saving. Ignoring the
    signals replaces torch's own worker SIGTERM handler too. Workers still end: the DataLoader shuts them
    down when training stops (its done event and a ``None`` on each index queue, after the item a worker is
    reading), and they exit by themselves when the main process is gone (torch's parent watchdog).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _ignore_stop_signals_then(worker_init_fn: Callable[[int], None] | None, worker_id: int) -> None:
    ignore_stop_signals(worker_id)
    if worker_init_fn is not None:
        worker_init_fn(worker_id)


def stop_safe_worker_init(worker_init_fn: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A ``worker_init_fn`` that applies :func:`ignore_stop_signals` and then ``worker_init_fn`` (if any): for
    loaders that Lightning does not build or seed (the health probe's). A partial of module-level
    functions, so it pickles for the ``spawn`` and ``forkserver`` start methods too."""
    return functools.partial(_ignore_stop_signals_then, worker_init_fn)


def init_worker(worker_id: int, rank: int) -> None:
    """The training loaders' ``worker_init_fn`` (pretraining and fine-tuning): :func:`ignore_stop_signals`,
    then Lightning's own worker seeding, exactly as Lightning would add it without a worker_init_fn (it only
    adds its own when there is none, so ours has to call it)."""
    ignore_stop_signals(worker_id)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)
