"""Run under torchrun (2 CPU processes): pretrain a tiny model and record, per rank, the sample indices
seen and the DINO centre after every step, so the test can check sharding and the all-reduce."""

import json
import sys
from pathlib import Path

import lightning as L
import torch
from dino_helpers import tiny_config

from geossl.dino.train import pretrain


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.indices: list[int] = []
        self.centres: list[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.indices.extend(int(i) for i in batch["index"])
        self.centres.append(pl_module.dino_loss.center.flatten().tolist())


def main() -> None:
    data, stats, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    cfg = tiny_config(data, stats, ["trainer.devices=2", "optim.epochs=1", "data.batch_size=4"])
    recorder = Recorder()
    summary = pretrain(cfg, out / "run", callbacks=[recorder])
    rank = torch.distributed.get_rank()
    (out / f"rank{rank}.json").write_text(json.dumps({
        "indices": recorder.indices, "centres": recorder.centres, "status": summary["status"],
        "world_size": torch.distributed.get_world_size(),
    }))


if __name__ == "__main__":
    main()
