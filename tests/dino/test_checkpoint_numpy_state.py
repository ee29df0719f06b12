"""A user callback whose state holds numpy values must not make resume silently restart at step 0.

Checkpoints load with ``weights_only=True``; numpy scalars and arrays are allowed there, anything else
is still refused with a one-line error naming the file.
"""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from dino_helpers import make_patch_folder, tiny_config

from geossl.dino.checkpoint import find_resume_checkpoint, load_checkpoint_file
from geossl.dino.train import pretrain


class NumpyStateCallback(L.Callback):
    """Keeps its state in numpy types (as user code often does); optionally SIGTERMs so that the run
    stops after ``stop_after`` steps (the signal is handled at the end of the step in progress)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.steps = np.int64(0)
        self.total = np.float64(0.0)
        self.history = np.zeros(4, dtype=np.float32)
        self.saved: dict[str, Any] | None = None  # what the last checkpoint got from state_dict()
        self.loaded: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.steps += 1
        self.total += 0.5
        self.history[int(self.steps) % 4] = float(self.steps)
        if self.stop_after is not None and trainer.global_step == self.stop_after - 1:
            os.kill(os.getpid(), signal.SIGTERM)

    def state_dict(self) -> dict[str, Any]:
        self.saved = {"steps": self.steps, "total": self.total, "history": self.history.copy(),
                      "flag": np.bool_(True), "half": np.float16(1.5), "empty": np.zeros((0, 3))}
        return dict(self.saved)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = dict(state_dict)
        self.steps, self.total = state_dict["steps"], state_dict["total"]
        self.history = state_dict["history"].copy()


def test_resume_with_numpy_callback_state_continues_from_the_saved_step(tmp_path: Path) -> None:
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=8)  # 16 patches / batch 8 = 2 steps/epoch
    cfg = tiny_config(data, stats, ["optim.epochs=2"])  # 4 steps in all

    first_callback = NumpyStateCallback(stop_after=2)
    first = pretrain(cfg, tmp_path / "run", callbacks=[first_callback])
    assert first["status"] == "interrupted" and first["steps"] == 2
    saved = first_callback.saved
    assert saved is not None and saved["steps"] == 2
    last = tmp_path / "run/checkpoints/last.ckpt"
    assert find_resume_checkpoint(tmp_path / "run/checkpoints") == last  # readable, not skipped

    callback = NumpyStateCallback()
    resumed = pretrain(cfg, tmp_path / "run", callbacks=[callback])
    assert resumed["resumed_from"] == str(last)
    assert resumed["status"] == "finished" and resumed["steps"] == 4
    assert callback.loaded is not None, "the callback's state was not restored"
    assert callback.loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert type(callback.loaded[key]) is type(value), key
        np.testing.assert_array_equal(callback.loaded[key], value)
        assert np.asarray(callback.loaded[key]).dtype == np.asarray(value).dtype, key
    assert callback.steps == 4  # counted on from the restored state: 2 restored + 2 resumed steps


def _save(path: Path, obj: Any) -> Path:
    torch.save({"global_step": 3, "payload": obj}, path)
    return path


def test_numpy_values_of_all_plain_dtypes_load(tmp_path: Path) -> None:
    values = {
        "ints": [np.int8(-1), np.uint16(7), np.int32(5), np.uint64(9)],
        "floats": [np.float32(0.25), np.float64(1e300), np.longdouble(2.0)],
        "complex": np.complex128(1 + 2j),
        "arrays": [np.arange(6, dtype=np.int64).reshape(2, 3), np.ones(3, dtype=np.float16),
                   np.array(["a", "bc"]), np.array([b"x"]), np.array([True, False]),
                   np.array(["2024-01-02"], dtype="datetime64[D]"), np.zeros((0, 2), dtype=np.uint8)],
        "dtype": np.dtype("float32"),
    }
    loaded = load_checkpoint_file(_save(tmp_path / "np.ckpt", values))["payload"]
    for got, want in zip(loaded["ints"] + loaded["floats"], values["ints"] + values["floats"], strict=True):
        assert type(got) is type(want) and got == want
    assert loaded["complex"] == values["complex"] and loaded["dtype"] == np.dtype("float32")
    for got, want in zip(loaded["arrays"], values["arrays"], strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


class Foreign:
    """Not a numpy type: a checkpoint holding it must still be refused."""

    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize("payload", [
    Foreign(),
    collections.defaultdict(int),
    np.array([Foreign()], dtype=object),  # object arrays would unpickle arbitrary objects
    np.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),  # an ndarray subclass
], ids=["class", "defaultdict", "object-array", "recarray"])
def test_other_globals_are_still_refused_with_a_one_line_error(tmp_path: Path, payload: Any) -> None:
    path = _save(tmp_path / "foreign.ckpt", payload)
    with pytest.raises(ValueError) as info:
        load_checkpoint_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable checkpoint")
    assert "\n" not in message and "\x1b" not in message
    assert find_resume_checkpoint(tmp_path) is None  # skipped for resume, with a warning


def test_loading_leaves_no_globals_allowed_afterwards(tmp_path: Path) -> None:
    before = set(torch.serialization.get_safe_globals())
    load_checkpoint_file(_save(tmp_path / "np.ckpt", np.arange(3)))
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(Exception, match="numpy"):  # plain torch.load is as strict as before
        torch.load(tmp_path / "np.ckpt", weights_only=True)
