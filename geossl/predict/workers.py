"""Scenes spread over worker processes: ``geossl classify --workers N``.

Each worker is a spawned process (not forked: forking a process whose torch and GDAL threads are running
can deadlock) that loads the model once, limits torch to its share of the cores, and maps whole scenes
with :func:`geossl.predict.scene.classify_scene`, exactly as the one-process path does, so the maps are
byte-identical. The parent alone writes the manifest (one writer, the folder's lock held) and draws one
progress bar over scenes.

Stops: a Ctrl-C or a SIGTERM sent to the whole process group (a terminal, ``timeout``, Slurm) reaches every
worker, which abandons its scene by raising :class:`KeyboardInterrupt`: the scene's outputs are written
beside their final names and removed on the way out (:class:`geossl.predict.maps.COGStripWriter`,
:func:`geossl.io.atomic_path`), so no half-written map is ever left under a final name, and the manifest
keeps the scene as ``started`` (redone by the next run). A Ctrl-C that reaches the parent alone cancels the
scenes not yet begun and lets the running ones finish and be recorded.

Why not a library: the pool is the standard library's :class:`concurrent.futures.ProcessPoolExecutor`;
what is written here is only the per-worker set-up and the outcome passed back.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geossl.models.landcover import load_landcover_model
from geossl.predict.scene import classify_scene

_MODEL: Any = None  # the worker's model, loaded once by _start_worker


@dataclass(frozen=True)
class SceneOutcome:
    """What became of one scene: ``done`` with its summary, windows and seconds, or ``failed`` with the
    one-line reason."""

    status: str
    summary: str = ""
    windows: int = 0
    seconds: float = 0.0
    reason: str = ""


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """An equal share of the cores for each worker, at least one."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, workers))


_FROZEN = False  # whether this process froze its start-up objects (_freeze_start_up_objects)
_BUSY = False  # whether this worker is mapping a scene (a stop then abandons it cleanly)


def _stop_worker(signum: int, frame: Any) -> None:
    """A worker's SIGTERM/SIGINT: abandon the scene being mapped through an exception (so every ``finally``
    on the way removes its temporary outputs), or, when idle, leave at once."""
    if _BUSY:
        raise KeyboardInterrupt(f"signal {signum}")
    os._exit(128 + signum)


def _start_worker(model_path: str, device: str, threads: int) -> None:
    """Per-worker set-up: torch's threads, stops as above, and the model, loaded once."""
    global _MODEL
    signal.signal(signal.SIGTERM, _stop_worker)
    signal.signal(signal.SIGINT, _stop_worker)
    torch.set_num_threads(threads)
    _MODEL = load_landcover_model(Path(model_path), device=device)


def _freeze_start_up_objects() -> None:
    """Move everything alive now (torch, the model, imports: hundreds of thousands of objects) out of the cycle
    collector's reach, once per process, so the full collection after each scene's preview
    (:func:`geossl.predict.maps.write_preview`) costs microseconds instead of 150 ms."""
    global _FROZEN
    if not _FROZEN:
        gc.collect()
        gc.freeze()
        _FROZEN = True


def classify_one(model: Any, uri: str, out_dir: Path, stem: str, replace: bool,
                 options: dict[str, Any]) -> SceneOutcome:
    """Map one scene; an expected failure (unreadable, truncated, wrong bands) becomes a ``failed``
    outcome with its one-line reason, anything else (a bug, an interrupt) propagates."""
    from geossl.predict.manifest import SCENE_ERRORS, one_line_reason

    _freeze_start_up_objects()

    try:
        res = classify_scene(model, uri, out_dir, overwrite=replace, stem=stem, **options)
    except SCENE_ERRORS as exc:
        return SceneOutcome("failed", reason=one_line_reason(exc, uri))
    return SceneOutcome("done", res.summary(), res.windows, res.seconds)


def _classify_in_worker(uri: str, out_dir: Path, stem: str, replace: bool, options: dict[str, Any]) -> SceneOutcome:
    global _BUSY
    _BUSY = True
    try:
        return classify_one(_MODEL, uri, out_dir, stem, replace, {**options, "progress": False})
    except KeyboardInterrupt:
        # stopped: the temporary outputs are gone (the exception passed every finally); take no new scene
        os._exit(128 + signal.SIGTERM)
    finally:
        _BUSY = False


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, a SIGTERM raises :class:`KeyboardInterrupt` like a Ctrl-C (main thread only), so every
    ``finally`` on the way out removes what it was writing instead of the process dying mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def classify_in_workers(jobs: Sequence[tuple[Any, str, str, bool]], out_dir: Path, options: dict[str, Any],
                        model_path: str, device: str, workers: int,
                        on_start: Callable[[Any], None], threads: int | None = None
                        ) -> Iterator[tuple[Any, SceneOutcome]]:
    """Map ``jobs`` (key, uri, stem, may replace) on ``workers`` processes; yields (key, outcome) as scenes
    finish, in the order they finish. ``on_start(key)`` is called for each job before it is handed out.

    A SIGTERM to this process alone is taken as a Ctrl-C (scenes not begun are cancelled, running ones
    finish); a worker that dies (stopped, killed, out of memory) ends the run with one line, its scene left
    ``started`` in the manifest for the next run to redo. ``threads``: torch threads per worker (default an
    equal share of the cores)."""
    context = multiprocessing.get_context("spawn")
    threads = threads or threads_per_worker(workers)
    try:
        with sigterm_as_interrupt(), ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                                         initargs=(model_path, device, threads)) as pool:
            futures: dict[Future[SceneOutcome], Any] = {}
            for key, uri, stem, replace in jobs:
                on_start(key)
                futures[pool.submit(_classify_in_worker, uri, out_dir, stem, replace, options)] = key
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            except BaseException:
                for future in futures:
                    future.cancel()  # scenes not begun; the running ones finish (or were stopped themselves)
                raise
    except BrokenProcessPool:
        raise RuntimeError("a worker process stopped or died (a signal, or out of memory?); scenes it had begun "
                           "are left 'started' in manifest.jsonl and the same command redoes them") from None
