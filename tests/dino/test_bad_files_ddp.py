"""Two processes (gloo, CPU): each rank meets the bad files of its own shard; the ranks merge their findings,
so every rank's summary counts all of them, and nobody hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dino_helpers import free_port, make_patch_folder, salt

TESTS = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from pathlib import Path
import torch
from dino_helpers import tiny_config
from geossl.dino.train import pretrain

data, stats, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cfg = tiny_config(data, stats, ["trainer.devices=2", "optim.epochs=1", "data.batch_size=4",
                                "data.max_bad_fraction=0.3"])
summary = pretrain(cfg, out / "run")
(out / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(summary["skipped_files"]))
"""


@pytest.mark.slow
def test_two_ranks_merge_their_skipped_files(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=12)
    bad = salt(data)  # 32 files, 2 ranks x 4 steps x batch 4: every file drawn once, by one rank
    script = tmp_path / "ddp_bad_files.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(data), str(stats), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["count"] == 8 and set(ranks[0]["files"]) == set(bad)
    assert json.loads((tmp_path / "run/summary.json").read_text())["skipped_files"]["count"] == 8
