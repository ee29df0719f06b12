"""The seam statistic of bench/seams.py on synthetic maps whose seams are known."""

from __future__ import annotations

import numpy as np
import pytest

from bench.seams import lattice_borders, seam_stats


def test_lattice_borders() -> None:
    assert lattice_borders(8, 8, 32).tolist() == [False, False, False, True, False, False, False]
    assert lattice_borders(3, 32, 32).all()


def test_seams_exactly_on_window_borders() -> None:
    # 8 x 8 cells, windows of 4 cells: a block map that changes class only at the window borders.
    blocks = np.kron(np.array([[0, 1], [2, 3]]), np.ones((4, 4), dtype=np.uint8))
    borders = lattice_borders(8, 8, 32)
    s = seam_stats(blocks, borders, borders)
    assert s["border_pairs"] == 2 * 8 and s["inside_pairs"] == 2 * 8 * 7 - 16
    assert s["border_rate"] == 1.0 and s["inside_rate"] == 0.0 and s["seam_ratio"] is None
    assert s["change_rate"] == pytest.approx(16 / 112)


def test_seams_inside_windows_and_nodata() -> None:
    stripes = np.tile(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.uint8), (8, 1))  # changes at cols 1|2, 3|4, 5|6
    borders = lattice_borders(8, 8, 32)  # border only after column 3
    s = seam_stats(stripes, borders, borders)
    # vertical pairs never change; horizontal: border pairs = 8 (all change), inside: 8 x 6 + 56 vertical
    assert s["border_rate"] == pytest.approx((8 + 0) / (8 + 8))  # row border pairs do not change
    assert s["inside_rate"] == pytest.approx(16 / (8 * 6 + 8 * 6))
    assert s["seam_ratio"] == pytest.approx(0.5 / (16 / 96))
    stripes[:, 4] = 255  # nodata cells take no part
    t = seam_stats(stripes, borders, borders)
    assert t["border_pairs"] == 7 and t["border_rate"] == 0.0  # col 3|4 pairs gone, row pairs in col 4 too
    with pytest.raises(ValueError, match="do not fit"):
        seam_stats(stripes, borders[:-1], borders)
