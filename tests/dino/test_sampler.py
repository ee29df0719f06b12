"""The resumable sampler: disjoint rank shards, exact mid-epoch start, epoch visible to persistent workers."""

import torch
from torch.utils.data import DataLoader, Dataset

from geossl.dino.data import ResumableSampler, _EpochAwareDataset


def test_ranks_get_disjoint_equal_shards_and_a_new_order_each_epoch():
    shards = [ResumableSampler(103, seed=1, rank=r, world_size=2) for r in range(2)]
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == len(shards[0]) == 51
    assert not set(a) & set(b)
    shards[0].set_epoch(1)
    assert list(shards[0]) != a  # reshuffled each epoch


def test_start_at_skips_exactly_the_samples_already_seen():
    full = ResumableSampler(40, seed=3)
    full.set_epoch(2)
    order = list(full)
    resumed = ResumableSampler(40, seed=3)
    resumed.start_at(epoch=2, index=16)
    resumed.set_epoch(2)
    assert list(resumed) == order[16:]
    assert len(resumed) == 40  # Lightning counts the restored batches against the full epoch
    resumed.set_epoch(3)
    assert len(list(resumed)) == 40  # only the resumed epoch is shortened


class _EpochEcho(Dataset):
    epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"epoch": torch.tensor(self.epoch)}


def test_epoch_reaches_persistent_workers():
    sampler = ResumableSampler(8, seed=0)
    loader = DataLoader(_EpochAwareDataset(_EpochEcho(), sampler), batch_size=4, sampler=sampler,
                        num_workers=2, persistent_workers=True)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = {int(e) for batch in loader for e in batch["epoch"]}
        assert seen == {epoch}
