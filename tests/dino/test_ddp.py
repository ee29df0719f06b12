"""Distribution on CPU (gloo): the centre is all-reduced across ranks; ranks see disjoint data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dino_helpers import free_port, make_patch_folder

from geossl.dino.objective.loss import DINOLoss

TESTS = Path(__file__).resolve().parents[1]


def _centre_worker(rank: int, world: int, port: int, outputs: list, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    loss = DINOLoss(out_dim=6, center_momentum=0.9)
    loss.update_center(outputs[rank])
    torch.save(loss.center, Path(result_dir) / f"centre{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_centre_update_is_all_reduced(tmp_path):
    """Each rank sees different teacher outputs (and batch sizes); both end with the centre of ALL of them."""
    torch.manual_seed(0)
    outputs = [torch.randn(4, 6), torch.randn(7, 6) + 3.0]
    mp.spawn(_centre_worker, args=(2, free_port(), outputs, str(tmp_path)), nprocs=2, join=True)
    expected = 0.1 * torch.cat(outputs).mean(dim=0, keepdim=True)  # centre starts at 0, momentum 0.9
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"centre{rank}.pt", weights_only=True), expected)


@pytest.mark.slow
def test_two_process_pretraining_shards_data_and_shares_the_centre(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=16)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(TESTS / "ddp_pretrain_script.py"), str(data), str(stats), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 and r["status"] == "finished" for r in ranks)
    seen0, seen1 = set(ranks[0]["indices"]), set(ranks[1]["indices"])
    assert seen0 and seen1 and not seen0 & seen1, "ranks saw overlapping samples"
    assert len(seen0 | seen1) == 32  # 32 patches, 2 ranks x 4 steps x batch 4: every sample once
    c0, c1 = np.array(ranks[0]["centres"]), np.array(ranks[1]["centres"])
    assert c0.shape == c1.shape and np.abs(c0).max() > 0
    np.testing.assert_array_equal(c0, c1)  # different data on each rank, one centre: it was all-reduced
    assert (tmp_path / "run/encoder/model.safetensors").exists()  # rank 0 exported
