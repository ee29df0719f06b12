"""Pretraining that survives bad patch files: skip, substitute deterministically, count, report, and stop
only above ``data.max_bad_fraction``.

A bad file is one :class:`~geossl.data.patches.PatchDataset` refuses (unreadable, truncated, another band
count, dtype or image mode: :class:`~geossl.data.patches.BadPatchError`) or whose size is not
``data.tile_size``. One such file among thousands must not end a long run inside a DataLoader worker.

How a skip reaches the main process: workers are separate processes, so anything they record in memory is
lost. Each sample therefore carries ``skipped``, a fixed-size int64 tensor of the dataset indices it passed
over (-1 padded), collated into the batch like any other field. The data module takes it out of the batch
on the CPU, before the batch moves to the GPU (reading it there would sync the device every step), and hands
it to :class:`BadFileMonitor`, a callback in the main process that names each new file (reading it once
more there for the reason), checks the fraction, and writes the report.

Determinism: a bad index ``i`` is served by the next good index ``i+1, i+2, ...`` (wrapping), a pure
function of the index and the files, so a resumed run sees exactly the samples an uninterrupted one sees.
The monitor's findings travel in checkpoints, so a resumed run still reports files found before.
"""

from __future__ import annotations

import bisect
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, Dataset

from geossl.data.patches import BadPatchError, bad_files_message

SKIP_SLOTS = 8  # indices one sample can report; longer runs of bad files are reported when drawn themselves
MAX_BAD_IN_A_ROW = 64  # consecutive bad files one sample may pass over before the run stops
LISTED = 20  # files named in summary.json


class BadFilesError(ValueError):
    """More bad files than ``data.max_bad_fraction`` allows (or a long run of them): the data needs fixing."""


class SkippingDataset(Dataset):
    """Patches where a bad file is replaced by the next good one; each item says what it skipped."""

    def __init__(self, dataset: Dataset, tile_size: int) -> None:
        self.dataset, self.tile_size = dataset, tile_size

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def path_of(self, index: int) -> Path:
        """The file behind a dataset index (a :class:`ConcatDataset` of several folders included)."""
        if isinstance(self.dataset, ConcatDataset):
            part = bisect.bisect_right(self.dataset.cumulative_sizes, index)
            offset = self.dataset.cumulative_sizes[part - 1] if part else 0
            return Path(self.dataset.datasets[part].paths[index - offset])  # type: ignore[attr-defined]
        return Path(self.dataset.paths[index])  # type: ignore[attr-defined]

    def check(self, index: int) -> tuple[dict[str, Any] | None, BadPatchError | None]:
        """(the item, None) for a good file; (None, the error) for a bad one."""
        try:
            item = self.dataset[index]
        except BadPatchError as exc:
            return None, exc
        height, width = item["image"].shape[-2:]
        if (height, width) != (self.tile_size, self.tile_size):
            return None, BadPatchError(self.path_of(index), "size",
                                       f"is {width}x{height} px but data.tile_size is {self.tile_size}")
        return item, None

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        skipped = torch.full((SKIP_SLOTS,), -1, dtype=torch.int64)
        for attempt in range(min(n, MAX_BAD_IN_A_ROW)):
            item, _ = self.check((index + attempt) % n)
            if item is not None:
                item["skipped"] = skipped
                return item
            if attempt < SKIP_SLOTS:
                skipped[attempt] = (index + attempt) % n
        raise BadFilesError(f"{self.path_of(index)} and the {min(n, MAX_BAD_IN_A_ROW) - 1} files after it are "
                            "all unreadable or do not match the dataset: check the data (data.paths)")


class BadFileMonitor(L.Callback):
    """Collects the skipped files (main process), stops the run above ``max_fraction``, reports at the end.

    With several processes (DDP) each rank sees its own shard: the ranks merge their findings every
    ``sync_every`` steps and at the end, and decide to stop together, so no rank waits on one that stopped.
    """

    def __init__(self, dataset: SkippingDataset, max_fraction: float, sync_every: int = 10) -> None:
        self.dataset, self.max_fraction, self.sync_every = dataset, max_fraction, max(1, sync_every)
        self.found: dict[int, tuple[str, str]] = {}  # dataset index -> (kind, problem)

    def record(self, skipped: torch.Tensor) -> None:
        """Note the indices a batch skipped (its ``skipped`` field, on the CPU); new files are named now."""
        for index in skipped[skipped >= 0].unique().tolist():
            if index not in self.found:
                _, error = self.dataset.check(index)
                self.found[index] = ((error.kind, error.problem) if error is not None else
                                     ("unreadable", "failed in a DataLoader worker, readable on a second try"))

    @property
    def exceeded(self) -> bool:
        return len(self.found) > self.max_fraction * len(self.dataset)

    def listing(self, limit: int | None = LISTED) -> dict[str, str]:
        """path -> "kind: problem", in dataset order (the first ``limit``)."""
        indices = sorted(self.found)[:limit]
        return {str(self.dataset.path_of(i)): f"{self.found[i][0]}: {self.found[i][1]}" for i in indices}

    def report(self) -> dict[str, Any]:
        """The ``skipped_files`` entry of summary.json."""
        listing = self.listing()
        return {"count": len(self.found), "fraction": round(len(self.found) / max(len(self.dataset), 1), 6),
                "max_fraction": self.max_fraction, "files": list(listing), "reasons": listing,
                "kinds": dict(Counter(kind for kind, _ in self.found.values()))}

    def print_report(self) -> None:
        """One line on stderr when files were skipped, so a finished run cannot hide them."""
        if not self.found:
            return
        shown = ", ".join(f"{path} ({reason.split(':', 1)[0]})" for path, reason in self.listing(3).items())
        more = ", ..." if len(self.found) > 3 else ""
        print(f"geossl: skipped {len(self.found)} bad patch file(s) of {len(self.dataset)} "
              f"({len(self.found) / max(len(self.dataset), 1):.2%}, data.max_bad_fraction={self.max_fraction:g}): "
              f"{shown}{more}; the first {LISTED} are in summary.json (skipped_files)", file=sys.stderr, flush=True)

    def _merge_ranks(self, trainer: L.Trainer) -> None:
        if trainer.world_size < 2 or not torch.distributed.is_initialized():
            return
        gathered: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, self.found)
        for part in gathered:
            self.found.update(part)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.world_size > 1:
            if trainer.global_step % self.sync_every:
                return
            self._merge_ranks(trainer)
        if self.exceeded:
            raise BadFilesError(bad_files_message(self.listing(None), len(self.dataset), self.max_fraction,
                                                  "data.max_bad_fraction", "patch files"))

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._merge_ranks(trainer)

    def state_dict(self) -> dict[str, Any]:
        """Findings travel in checkpoints: a resumed run reports the files found before the interruption."""
        return {"found": [[i, kind, problem] for i, (kind, problem) in sorted(self.found.items())]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.found = {int(i): (str(kind), str(problem)) for i, kind, problem in state_dict.get("found", [])}
