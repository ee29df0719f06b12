"""A bounded pool of open scene handles per process: least recently used closed first.

Random tiles from an archive touch thousands of scenes. Keeping one open GDAL dataset per scene per
DataLoader worker (what a per-scene handle does) holds thousands of file descriptors per worker:
past the common limit of 1,024 open files training stops, and on S3 every handle also holds GDAL's
per-dataset caches. An LRU bound keeps the open set small while a scene drawn again soon stays open.
GDAL's own dataset pool (``GDAL_MAX_DATASET_POOL_SIZE``) only bounds handles GDAL opens internally
(VRT sources), not the datasets rasterio opens for us; hence this small class.

Forked DataLoader workers must not share the parent's handles (a GDAL handle's file offset is
shared across fork), so the pool keys its contents by process id and pickles empty.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

DEFAULT_MAX_OPEN = 64  # well under the common 1,024-descriptor limit, times a few DataLoader workers


class HandlePool:
    """At most ``max_open`` open handles in this process; ``get`` opens on a miss, evicting the LRU one."""

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open = int(max_open)
        self._pid = os.getpid()
        self._open: OrderedDict[Hashable, Any] = OrderedDict()
        self.opens = 0  # handles opened by this process (a miss rate, for benchmarks)
        self.peak = 0  # most handles open at once in this process

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def __len__(self) -> int:
        self._own_process()
        return len(self._open)

    def _own_process(self) -> None:
        """After a fork the inherited handles belong to the parent: forget them (never close them here)."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid, self._open, self.opens, self.peak = pid, OrderedDict(), 0, 0

    def get(self, key: Hashable, opener: Callable[[], Any]) -> Any:
        """The open handle for ``key``; ``opener()`` makes one (an object with ``close()``) on a miss."""
        self._own_process()
        handle = self._open.get(key)
        if handle is not None:
            self._open.move_to_end(key)
            return handle
        while len(self._open) >= self.max_open:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        handle = opener()
        self._open[key] = handle
        self.opens += 1
        self.peak = max(self.peak, len(self._open))
        return handle

    def close(self) -> None:
        self._own_process()
        while self._open:
            self._open.popitem(last=False)[1].close()
