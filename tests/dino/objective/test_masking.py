"""iBOT mask drawing: DINOv2's counts (stratified ratios, masked fraction of crops), block shapes, replay."""

import numpy as np
import pytest
import torch

from geossl.config import ConfigError, load_config
from geossl.dino.objective.masking import draw_masks, mask_counts


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mode", ["block", "random"])
@pytest.mark.parametrize(("n", "grid", "ratio", "prob"), [(16, (4, 4), (0.1, 0.5), 0.5), (10, (14, 14), (0.1, 0.5), 0.5),
                                                          (7, (6, 5), (0.2, 0.2), 1.0), (4, (8, 8), (0.1, 0.5), 0.0)])
def test_counts_follow_dinov2(mode, n, grid, ratio, prob):
    """int(n * p) crops are masked; their ratios are stratified: one draw in each of the int(n * p)
    equal sub-intervals of [low, high], each count int(N * ratio); the other crops are not masked."""
    n_patches = grid[0] * grid[1]
    masks = draw_masks(n, grid, ratio, prob, mode, _gen(0))
    assert masks.shape == (n, n_patches) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    n_masked = int(n * prob)
    assert torch.equal(counts, mask_counts(n, n_patches, ratio, prob, _gen(0)))  # exactly the drawn counts
    assert int((counts == 0).sum()) >= n - n_masked
    bounds = np.linspace(ratio[0], ratio[1], n_masked + 1)
    masked_counts = sorted(counts.tolist())[n - n_masked:]  # the unmasked crops hold the n - n_masked zeros
    for i, c in enumerate(masked_counts):  # sorted counts fall in the sorted strata
        assert int(n_patches * bounds[i]) <= c <= int(n_patches * bounds[i + 1])


def test_same_generator_state_replays_the_masks():
    a = draw_masks(32, (8, 8), (0.1, 0.5), 0.5, "block", _gen(5))
    b = draw_masks(32, (8, 8), (0.1, 0.5), 0.5, "block", _gen(5))
    c = draw_masks(32, (8, 8), (0.1, 0.5), 0.5, "block", _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_block_masks_are_blocky_random_masks_are_not():
    """Block masks (BEiT/DINOv2 rectangles) have far more masked 4-neighbours per masked patch."""
    def neighbour_fraction(masks, h, w):
        grid = masks.view(-1, h, w)
        padded = torch.nn.functional.pad(grid.float(), (1, 1, 1, 1))
        neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
        return float((neighbours[grid] > 0).float().mean())

    block = draw_masks(64, (14, 14), (0.1, 0.5), 1.0, "block", _gen(1))
    random = draw_masks(64, (14, 14), (0.1, 0.5), 1.0, "random", _gen(1))
    assert torch.equal(block.sum(1), random.sum(1))  # same counts, different shapes
    assert neighbour_fraction(block, 14, 14) > 0.95 > neighbour_fraction(random, 14, 14) + 0.2


def test_config_is_validated():
    with pytest.raises(ConfigError, match="key 'loss.ibot_mask_ratio'"):
        load_config(None, ["loss.ibot_mask_ratio=[0.5, 0.1]"])
    with pytest.raises(ConfigError, match="key 'loss.ibot_mask_probability'"):
        load_config(None, ["loss.ibot_mask_probability=1.5"])
    with pytest.raises(ConfigError, match="key 'loss.ibot_mask_mode'"):
        load_config(None, ["loss.ibot_mask_mode=blocks"])
