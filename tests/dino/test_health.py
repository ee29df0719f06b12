"""Label-free health signals (geossl/dino/health.py) against reference formulas written out here, their
wiring into the training step, and a tiny pretraining that is interrupted and resumed."""

import json
import logging
import math

import lightning as L
import numpy as np
import pytest
import torch
from dino_helpers import TINY, SignalAt, make_patch_folder, tiny_config

from geossl.config import load_config
from geossl.dino.callbacks import MetricPrinter
from geossl.dino.checkpoint import load_checkpoint_file
from geossl.dino.health import (
    FROZEN_WEIGHT_CHANGE,
    HealthMonitor,
    diagnose_history,
    linear_cka,
    marginal_entropy,
    rankme,
    relative_weight_change,
    student_teacher_kl,
    teacher_entropy,
)
from geossl.dino.module import DINOModule
from geossl.dino.train import pretrain


# ----------------------------------------------------------------------------------------------- references
def ref_rankme(x, eps=1e-7):
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return math.exp(-sum(pk * math.log(pk) for pk in p))


def ref_entropy(p):
    return -sum(v * math.log(v) for v in p if v > 0)


def ref_softmax(row, temp):
    z = np.asarray(row, dtype=np.float64) / temp
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_cka(x, y):
    """HSIC form with an explicit centring matrix on the Gram matrices (not the feature-space form)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return np.trace(k @ l_) / math.sqrt(np.trace(k @ k) * np.trace(l_ @ l_))


# ----------------------------------------------------------------------------------------------- RankMe
def test_rankme_matches_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)) @ np.diag(np.linspace(0.1, 3, 16))
    assert rankme(torch.from_numpy(x).float()) == pytest.approx(ref_rankme(x.astype(np.float32)), rel=1e-6)


def test_rankme_of_rank_one_is_one_and_of_isotropic_gaussian_is_d():
    rng = np.random.default_rng(1)
    rank_one = np.outer(rng.normal(size=256), rng.normal(size=32))
    assert rankme(torch.from_numpy(rank_one)) == pytest.approx(1.0, abs=1e-3)
    gaussian = torch.from_numpy(rng.normal(size=(8192, 32)))
    assert 0.98 * 32 < rankme(gaussian) <= 32


# ----------------------------------------------------------------------------------------------- entropies, KL
def test_entropies_match_reference():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(6, 10) * 2, dim=-1).double()
    rows = probs.numpy()
    assert teacher_entropy(probs).item() == pytest.approx(np.mean([ref_entropy(r) for r in rows]), rel=1e-12)
    mean = [sum(r[k] for r in rows) / len(rows) for k in range(10)]
    assert marginal_entropy(probs).item() == pytest.approx(ref_entropy(mean), rel=1e-12)
    one_prototype = torch.zeros(8, 10)
    one_prototype[:, 3] = 1.0
    assert marginal_entropy(one_prototype).item() == 0.0 and teacher_entropy(one_prototype).item() == 0.0
    uniform = torch.full((8, 10), 0.1)
    assert marginal_entropy(uniform).item() == pytest.approx(math.log(10), rel=1e-6)


def test_kl_matches_reference_over_cross_view_pairs():
    torch.manual_seed(1)
    temp = 0.1
    teacher = [torch.softmax(torch.randn(5, 7) / 0.04, dim=-1) for _ in range(2)]
    teacher[0][0] = torch.nn.functional.one_hot(torch.tensor(2), 7).float()  # exact zeros stay finite
    student = [torch.randn(5, 7) for _ in range(2)]
    expected = []
    for i in range(2):
        for j in range(2):
            if i == j:
                continue
            for b in range(5):
                q, p = teacher[i][b].double().numpy(), ref_softmax(student[j][b].numpy(), temp)
                expected.append(sum(q[k] * math.log(q[k] / p[k]) for k in range(7) if q[k] > 0))
    assert student_teacher_kl(teacher, student, temp).item() == pytest.approx(np.mean(expected), rel=1e-5)


def test_kl_is_zero_for_identical_distributions():
    torch.manual_seed(2)
    logits = torch.randn(4, 9)
    same = torch.softmax(logits / 0.1, dim=-1)
    assert student_teacher_kl([same, same], [logits, logits], 0.1).item() == pytest.approx(0.0, abs=1e-6)


def test_monitors_are_the_losss_own_targets():
    """With global crops only, DINO loss = H(teacher) + KL(teacher || student) exactly, which holds only if
    the monitors use the targets the loss used (the centre before this step's update)."""
    cfg = load_config(None, TINY + ["model.drop_path_rate=0.0"])
    stats = {"bands": ["r", "g", "b"], "mean": [0.0] * 3, "std": [1.0] * 3, "p2": [0.0] * 3, "p98": [1.0] * 3}
    module = DINOModule(cfg.to_dict(), 3, stats["bands"], stats, dataset_size=64)
    torch.manual_seed(0)
    crops = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    module.losses_and_outputs(crops, 0.04)  # moves the centre away from zero
    assert module.dino_loss.center.abs().sum() > 0
    terms, _, seen = module.losses_and_outputs(crops, 0.04, monitor=True)
    probs = torch.cat(seen["targets"])
    kl = student_teacher_kl(seen["targets"], seen["student"], module.dino_loss.student_temp)
    assert terms["dino"].item() == pytest.approx((teacher_entropy(probs) + kl).item(), rel=1e-5)


def test_metric_line_carries_the_cheap_signals(capsys):
    class Module:
        values = {"loss": 4.0, "teacher_std": 0.2, "teacher_entropy": 3.5, "marginal_entropy": 4.1, "kl": 0.25}
        monitors = {k: torch.tensor(v) for k, v in values.items()}
        steps_per_epoch = 10
        cfg = type("C", (), {"data": type("D", (), {"batch_size": 8})()})()

        def check_finite(self):
            pass

        def schedule_value(self, name, step):
            return 1e-3

    trainer = type("T", (), {"global_step": 10, "world_size": 1, "current_epoch": 0, "is_global_zero": True})()
    MetricPrinter(every=10).on_train_batch_end(trainer, Module(), None, None, 0)
    line = capsys.readouterr().out
    assert line.startswith("geossl-metric step=10 epoch=0 loss=4.0")
    assert "kl=0.250000 teacher_entropy=3.500000 marginal_entropy=4.100000" in line


# ----------------------------------------------------------------------------------------------- weights, CKA
def test_relative_weight_change_matches_reference_per_group():
    rng = np.random.default_rng(3)
    shapes = {"patch_embed.proj.weight": (4, 3, 2, 2), "patch_embed.proj.bias": (4,), "cls_token": (1, 1, 4),
              "blocks.0.attn.qkv.weight": (12, 4), "blocks.0.norm1.bias": (4,), "blocks.1.mlp.fc1.weight": (8, 4),
              "blocks.10.mlp.fc2.weight": (4, 8), "norm.weight": (4,)}
    w0 = {k: rng.normal(size=s) for k, s in shapes.items()}
    w0["blocks.0.norm1.bias"] = np.zeros(4)  # zero-initialised: no scale on its own, fine within its group
    w1 = {k: v + rng.normal(scale=0.1 * (i + 1), size=v.shape) for i, (k, v) in enumerate(w0.items())}
    initial = {k: torch.from_numpy(v).float() for k, v in w0.items()} | {"counter": torch.tensor(3)}
    current = {k: torch.from_numpy(v).float() for k, v in w1.items()} | {"counter": torch.tensor(9)}
    groups = {"overall": list(shapes), "patch_embed": ["patch_embed.proj.weight", "patch_embed.proj.bias"],
              "blocks.0": ["blocks.0.attn.qkv.weight", "blocks.0.norm1.bias"], "blocks.1": ["blocks.1.mlp.fc1.weight"],
              "blocks.10": ["blocks.10.mlp.fc2.weight"], "other": ["cls_token", "norm.weight"]}
    got = relative_weight_change(initial, current)
    assert list(got) == list(groups)  # overall, stem, blocks in numeric order, the rest
    for group, names in groups.items():
        moved = sum(float(((w1[k] - w0[k]) ** 2).sum()) for k in names)
        base = sum(float((w0[k] ** 2).sum()) for k in names)
        assert got[group] == pytest.approx(math.sqrt(moved / base), rel=1e-5), group
    assert relative_weight_change(initial, initial)["overall"] == 0.0


def test_linear_cka_reference_and_invariances():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 12))
    y = x @ rng.normal(size=(12, 6)) + 0.5 * rng.normal(size=(100, 6))
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(ref_cka(x, y), rel=1e-10)
    tx = torch.from_numpy(x)
    assert linear_cka(tx, tx) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    transformed = torch.from_numpy(3.7 * x @ q + 5.0)  # orthogonal, isotropic scale, offset
    assert linear_cka(tx, transformed) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y @ np.diag([1, 2, 3, 4, 5, 6]))) != pytest.approx(
        linear_cka(torch.from_numpy(x), torch.from_numpy(y)), abs=1e-3)  # not invariant to anisotropic scale
    assert linear_cka(tx, torch.from_numpy(rng.normal(size=(100, 12)))) < 0.3  # unrelated


# ----------------------------------------------------------------------------------------------- warnings
LOG_K = math.log(64)
HEALTHY = {"loss": 3.0, "teacher_entropy": 2.0, "marginal_entropy": 3.5, "kl": 1.0, "rankme": 30.0,
           "weight_change": 0.2}


def test_warnings_on_synthetic_collapsed_and_frozen_histories(caplog):
    history = [{"step": s, **HEALTHY} for s in (0, 10, 20)]
    assert diagnose_history(history, LOG_K, after_step=10) == []
    early = [{"step": 0, **HEALTHY, "rankme": 1.0, "weight_change": 0.0}]  # random init: before warm-up, no alarm
    assert diagnose_history(early, LOG_K, after_step=10) == []

    one_prototype = [*history, {"step": 30, **HEALTHY, "marginal_entropy": 0.01, "rankme": 1.02}]
    (kind, message), = diagnose_history(one_prototype, LOG_K, after_step=10)
    assert kind == "collapse" and "step 30" in message and "COLLAPSED" in message and "RankMe 1.02" in message
    uniform = [{"step": 40, **HEALTHY, "teacher_entropy": 0.99 * LOG_K, "loss": 1.01 * LOG_K, "kl": 0.01}]
    (kind, message), = diagnose_history(uniform, LOG_K, after_step=10)
    assert kind == "collapse" and "uniform" in message
    frozen = [{"step": 50, **HEALTHY, "weight_change": FROZEN_WEIGHT_CHANGE / 2}]
    assert [k for k, _ in diagnose_history(frozen, LOG_K, after_step=10)] == ["frozen"]
    # a partial collapse (the BatchNorm-head run of docs/trials.md): 2.6 nats of ln 2048 = exp(2.6) ~ 13
    # prototypes, below min(32, K / 4); the same entropy is healthy for K = 64, and so is ln 64 itself
    narrow = [{"step": 60, **HEALTHY, "marginal_entropy": 2.6, "teacher_entropy": 0.7}]
    (kind, message), = diagnose_history(narrow, math.log(2048), after_step=10)
    assert kind == "few_prototypes" and "about 13 of 2048" in message
    assert diagnose_history(narrow, LOG_K, after_step=10) == []
    wide = [{"step": 60, **HEALTHY, "marginal_entropy": math.log(40)}]
    assert diagnose_history(wide, math.log(2048), after_step=10) == []

    monitor = HealthMonitor(dataset=None, log_k=LOG_K, every_steps=10, seed=0)
    with caplog.at_level(logging.WARNING, logger="geossl"):
        for record in one_prototype + uniform + frozen:  # as the callback reports record by record
            monitor.report(diagnose_history([record], LOG_K, after_step=10))
    warned = [r.getMessage() for r in caplog.records if r.name == "geossl"]
    assert len(warned) == 2 and "COLLAPSED" in warned[0] and "FROZEN" in warned[1]  # once per kind
    assert monitor.summary()["warnings"] == warned
    restored = HealthMonitor(dataset=None, log_k=LOG_K, every_steps=10, seed=0)
    restored.load_state_dict(monitor.state_dict())  # a resumed run does not warn again
    caplog.clear()
    restored.report(diagnose_history(frozen, LOG_K, after_step=10))
    assert not caplog.records


# ----------------------------------------------------------------------------------------------- tiny pretraining
class CaptureInitial(L.Callback):
    """The student backbone before the first step, captured independently of HealthMonitor."""

    def on_train_start(self, trainer, pl_module):
        if trainer.global_step == 0:
            self.state = {k: v.detach().clone() for k, v in pl_module.model.student.backbone.state_dict().items()}


def health_state(ckpt):
    callbacks = load_checkpoint_file(ckpt)["callbacks"]
    return next(v for k, v in callbacks.items() if "HealthMonitor" in k)


def test_tiny_pretraining_records_health_and_resume_measures_against_step_0(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=16)  # 4 steps per epoch
    cfg = tiny_config(data, stats, ["optim.epochs=3", "trainer.checkpoint_every_steps=5"])
    capture = CaptureInitial()
    first = pretrain(cfg, tmp_path / "run", callbacks=[capture, SignalAt(7)])
    assert first["status"] == "interrupted" and first["steps"] == 7
    saved = health_state(tmp_path / "run/checkpoints/last.ckpt")
    assert [h["step"] for h in saved["history"]] == [0, 4, 5]  # step 0, epoch 1's end, the checkpoint cadence
    assert saved["initial"].keys() == capture.state.keys()
    assert all(torch.equal(saved["initial"][k], capture.state[k]) for k in capture.state)

    second = pretrain(cfg, tmp_path / "run")
    assert second["status"] == "finished" and second["steps"] == 12
    history = health_state(tmp_path / "run/checkpoints/last.ckpt")["history"]
    assert [h["step"] for h in history] == [0, 4, 5, 10, 12]  # the first segment's records survive
    blocks = [f"weight_change/blocks.{i}" for i in range(2)]
    for record in history[1:]:
        for key in ("rankme", "cka_init", "weight_change", "weight_change/patch_embed", "weight_change/other",
                    *blocks, "teacher_entropy", "marginal_entropy", "kl", "loss"):
            assert math.isfinite(record[key]), (record["step"], key)
    assert history[0]["cka_init"] == pytest.approx(1.0) and history[0]["weight_change"] == 0.0
    assert 1.0 <= history[-1]["rankme"] <= 32  # at most min(probe tiles, width 48)
    printer = next(v for k, v in load_checkpoint_file(tmp_path / "run/checkpoints/last.ckpt")["callbacks"].items()
                   if "MetricPrinter" in k)["history"]
    assert all(math.isfinite(h[k]) for h in printer for k in ("kl", "teacher_entropy", "marginal_entropy"))

    # The resumed run's last record against the independently captured step-0 weights (not step 7's).
    final = load_checkpoint_file(tmp_path / "run/checkpoints/last.ckpt")["state_dict"]
    prefix = "model.student.backbone."
    now = {k[len(prefix):]: v for k, v in final.items() if k.startswith(prefix)}
    for group, names in {"blocks.0": [k for k in now if k.startswith("blocks.0.")],
                         "weight_change": list(capture.state)}.items():
        moved = sum(float(((now[k].double() - capture.state[k].double()) ** 2).sum()) for k in names)
        base = sum(float((capture.state[k].double() ** 2).sum()) for k in names)
        key = group if group == "weight_change" else f"weight_change/{group}"
        assert history[-1][key] == pytest.approx(math.sqrt(moved / base), rel=1e-4)
    assert history[-1]["weight_change"] > history[2]["weight_change"] > 0

    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["health"]["last"]["step"] == 12 and summary["health"]["ln_k"] == pytest.approx(math.log(64))
    # The tiny config's peak lr is 1.6e-5: the backbone really barely moves, and the run says so.
    assert any("FROZEN" in w for w in summary["health"]["warnings"])
    assert (tmp_path / "run/health.png").stat().st_size > 10_000


def test_checkpoint_without_step_0_weights_measures_what_it_can(tmp_path, caplog):
    """A run resumed from a checkpoint written before geossl stored the step-0 weights: it says so once,
    and still records RankMe and the cheap signals (no weight change or CKA: no true reference)."""
    from geossl.dino.data import build_pretrain_dataset

    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=4)
    cfg = tiny_config(data, stats, ["model.drop_path_rate=0.0"])
    band_stats = json.loads(stats.read_text())
    module = DINOModule(cfg.to_dict(), 3, band_stats["bands"], band_stats, dataset_size=8)
    module.build_schedules(1)
    module.monitors = {"loss": torch.tensor(4.0), "kl": torch.tensor(0.5)}
    trainer = type("T", (), {"global_step": 7, "is_global_zero": True, "loggers": []})()
    monitor = HealthMonitor(build_pretrain_dataset(cfg), LOG_K, every_steps=5, seed=0)
    monitor.load_state_dict({"history": []})
    with caplog.at_level(logging.WARNING, logger="geossl"):
        monitor.on_train_start(trainer, module)
    assert any("holds no step-0 weights" in r.getMessage() for r in caplog.records)
    assert monitor.history == []  # nothing measured at a resume point
    record = monitor.measure(trainer, module)
    assert record["step"] == 7 and 1.0 <= record["rankme"] <= 8 and record["kl"] == 0.5
    assert "weight_change" not in record and "cka_init" not in record
