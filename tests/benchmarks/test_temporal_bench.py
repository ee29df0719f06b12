"""The metrics of bench/temporal.py against brute-force references, and the bench end to end on the shared
series with a tiny encoder (its figures are not claims: the test checks the bench runs and reports them)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.temporal import retrieval_top1, roc_auc
from geossl.settings import REPO_ROOT


def test_retrieval_top1_against_a_loop() -> None:
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(30, 8))
    query = gallery + rng.normal(scale=1.2, size=gallery.shape)
    hits = 0
    for i, q in enumerate(query):  # reference: cosine by hand, one query at a time
        sims = [float(q @ g / (np.linalg.norm(q) * np.linalg.norm(g))) for g in gallery]
        hits += int(np.argmax(sims) == i)
    assert retrieval_top1(query, gallery) == pytest.approx(hits / len(query))
    assert retrieval_top1(gallery, gallery) == 1.0


def test_roc_auc_against_counting_pairs() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, size=60).astype(float)  # many ties
    positive = rng.random(60) < 0.3
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0)
             for p, n in itertools.product(scores[positive], scores[~positive])]
    assert roc_auc(scores, positive) == pytest.approx(np.mean(pairs))
    assert roc_auc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    with pytest.raises(ValueError, match="needs both classes"):
        roc_auc(np.zeros(3), np.zeros(3, bool))


@pytest.mark.slow  # nine NAIP dates and two Landsat dates through three feature extractors: about 30 s
def test_the_bench_runs_on_the_shared_series(tmp_path: Path) -> None:
    from bench.synthetic import make_tiny_encoder

    encoder = make_tiny_encoder(tmp_path / "enc", img_size=32)
    out = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "temporal.py"), "--encoder", f"tiny={encoder}",
                          "--held-out", "2020-08-31", "--max-windows", "60", "--out", str(tmp_path / "bench")],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(line["retrieval_top1"]) == {"tiny", "random init", "band statistics"}
    assert set(line["change_auc"]) == {"tiny", "random init", "band difference"}
    assert all(0.0 <= v <= 1.0 for v in [*line["retrieval_top1"].values(), *line["change_auc"].values()])
    saved = json.loads((tmp_path / "bench" / "temporal_bench.json").read_text())
    assert saved["retrieval"]["results"]["tiny"]["held_out"] is not None
    assert len(saved["retrieval"]["results"]["tiny"]["per_date"]) == 8 and saved["change"]["loss_cells"] > 0
