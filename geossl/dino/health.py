"""Label-free health signals for DINO pretraining: does it learn, has it collapsed, is it frozen?

Without a labelled k-NN set a user still needs to see whether pretraining learns. Cheap signals come
every ``trainer.log_every_steps`` steps from tensors the training step already holds (the loss's teacher
targets, the student's global-crop logits): :func:`student_teacher_kl`, :func:`teacher_entropy`,
:func:`marginal_entropy`. Expensive ones need a forward pass or a walk over the weights, so
:class:`HealthMonitor` computes them a few times per run on a fixed probe set of training tiles:
:func:`rankme` of the teacher's CLS embeddings, :func:`linear_cka` of those against the initial
network's, and :func:`relative_weight_change` of the student backbone since step 0.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from geossl.dino.callbacks import HistoryCallback, metric_line
from geossl.dino.data import stop_safe_worker_init

log = logging.getLogger("geossl")

RANKME_COLLAPSED = 1.5
"""RankMe below this = the probe tiles' embeddings span about one direction (complete collapse gives 1).
A random-init ViT also starts low (its CLS barely depends on the input), hence no warning before warm-up."""
MARGINAL_ENTROPY_COLLAPSED = math.log(1.5)
"""Entropy (nats) of the batch-mean teacher distribution below ln 1.5: the batch's targets use fewer than
~1.5 prototypes, i.e. every tile gets the same one (collapse onto one dimension). ln K is the ceiling."""
FEW_PROTOTYPES = 32
"""Partial collapse: the batch-mean teacher distribution's effective size exp(H) below min(32, K / 4). A
healthy run keeps it near K (the centring's job) or at least near the batch's sample count; a run whose
targets fall on a dozen prototypes has stopped telling most tiles apart although no complete-collapse
threshold fires (seen with a BatchNorm head and mean centring: 2.6 nats of ln 2048, RankMe 19 -> 11)."""
UNIFORM_FRACTION = 0.95
"""Uniform collapse (DINO paper, sec. 5.3): teacher entropy >= 95 % of ln K while the DINO loss is within
5 % of ln K: the teacher gives every tile ~uniform targets and the student only has to copy them."""
FROZEN_WEIGHT_CHANGE = 0.01
"""||W - W0|| / ||W0|| of the whole student backbone below 1 % after warm-up = it barely moved. Adam moves
each weight by about lr per step, so hundreds of warm-up steps at lr 1e-4..1e-3 move 0.02-scale ViT weights
far more; less points at lr ~ 0, frozen parameters or gradients that never arrive."""
PROBE_TILES = 512
"""Probe size: RankMe is capped by min(N, D), and N = 512 >= the CLS width of ViT-Ti/S (192/384)."""
PROBE_MAX_BYTES = 256 * 2**20
"""Host-memory cap for the cached probe tiles (fewer tiles when tiles are large, e.g. 13 x 224 x 224)."""
CHEAP_KEYS = ("loss", "loss_dino", "teacher_entropy", "marginal_entropy", "kl")


# ----------------------------------------------------------------------------------------------- signals
def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of (N, D).

    Between 1 (rows on one line: collapse) and min(N, D) (isotropic); uncentred as in the paper; NaN if non-finite."""
    x = embeddings.detach().double().cpu()
    if not torch.isfinite(x).all():
        return math.nan
    s = torch.linalg.svdvals(x)
    p = s / s.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def teacher_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean per-sample entropy of (N, K) teacher targets: ln K = uniform targets, 0 = one-hot."""
    return -torch.xlogy(probs, probs).sum(dim=-1).mean()


def marginal_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the batch-mean teacher distribution: ln K = prototypes used evenly, ~0 = all tiles on one.

    With Sinkhorn-Knopp centring it is ~ln K by construction (it equipartitions the batch); RankMe and the
    per-sample entropy still show a collapse there."""
    mean = probs.mean(dim=0)
    return -torch.xlogy(mean, mean).sum()


def student_teacher_kl(
    teacher_probs: list[torch.Tensor], student_logits: list[torch.Tensor], student_temp: float,
) -> torch.Tensor:
    """Mean KL(teacher || student) over the loss's cross-view pairs (teacher view i, student view j != i).

    ``teacher_probs``: the loss's centred, sharpened targets per global view; ``student_logits``: the
    student's raw head outputs of the same global views (softmax at ``student_temp``, as in the loss).
    The DINO loss is H(teacher) + KL, so KL ~ 0 with a high teacher entropy is uniform collapse."""
    pairs = [(i, j) for i in range(len(teacher_probs)) for j in range(len(student_logits)) if i != j] or [(0, 0)]
    total = teacher_probs[0].new_zeros((), dtype=torch.float32)
    for i, j in pairs:
        q = teacher_probs[i].float()
        log_p = F.log_softmax(student_logits[j].float() / student_temp, dim=-1)
        terms = torch.where(q > 0, q * (torch.log(q) - log_p), torch.zeros_like(q))
        total = total + terms.sum(dim=-1).mean()
    return total / len(pairs)


def weight_group(name: str) -> str:
    """``blocks.<i>`` for a transformer block's tensors, ``patch_embed`` for the stem, else ``other``."""
    match = re.match(r"blocks\.(\d+)\.", name)
    if match:
        return f"blocks.{match.group(1)}"
    return "patch_embed" if name.startswith("patch_embed.") else "other"


def relative_weight_change(
    initial_state: dict[str, torch.Tensor], current_state: dict[str, torch.Tensor],
) -> dict[str, float]:
    """||W - W0|| / ||W0|| over the float tensors of each group (:func:`weight_group`) and ``overall``.

    Norms are Frobenius norms over all of a group's tensors together (a zero-initialised bias alone has
    no scale). Computed on the current weights' device; ``initial_state`` may live on the CPU."""
    moved: dict[str, Any] = {}
    base: dict[str, Any] = {}
    for name, w0 in initial_state.items():
        w = current_state.get(name)
        if w is None or not w0.is_floating_point() or w.shape != w0.shape:
            continue
        w = w.detach().float()
        w0 = w0.to(w.device, torch.float32)
        for group in ("overall", weight_group(name)):
            moved[group] = moved.get(group, 0.0) + (w - w0).pow(2).sum().double()
            base[group] = base.get(group, 0.0) + w0.pow(2).sum().double()
    order = {"overall": -2, "patch_embed": -1, "other": 1 << 30}
    out = {}
    for group in sorted(moved, key=lambda g: order.get(g) or int(g.split(".")[1])):
        d, b = float(moved[group]), float(base[group])
        out[group] = math.sqrt(d / b) if b > 0 else (0.0 if d == 0 else math.inf)
    return out


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of (N, Dx) and (N, Dy): 1 = same representation up to an
    orthogonal transform and isotropic scale, 0 = unrelated. Columns are centred first."""
    x = x.detach().double().cpu()
    y = y.detach().double().cpu()
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    denominator = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float((y.T @ x).pow(2).sum() / denominator) if denominator > 0 else float("nan")


# ----------------------------------------------------------------------------------------------- warnings
def diagnose_history(history: list[dict[str, float]], log_k: float, after_step: int = 0) -> list[tuple[str, str]]:
    """(kind, message) for the first record from ``after_step`` on showing each problem: ``collapse`` (one
    prototype, one direction or a uniform teacher; see the thresholds above), ``few_prototypes`` (a partial
    collapse) or ``frozen``."""
    found: dict[str, str] = {}
    for record in history:
        if (step := int(record.get("step", 0))) < after_step:
            continue
        reasons = []
        if record.get("marginal_entropy", math.inf) < MARGINAL_ENTROPY_COLLAPSED:
            reasons.append(f"marginal teacher entropy {record['marginal_entropy']:.3f} nats (ln K = {log_k:.2f}): "
                           "every tile is assigned the same prototype")
        if record.get("rankme", math.inf) < RANKME_COLLAPSED:
            reasons.append(f"RankMe {record['rankme']:.2f}: the probe tiles' embeddings lie on about one line")
        loss = record.get("loss_dino", record.get("loss", math.nan))
        if (record.get("teacher_entropy", 0.0) >= UNIFORM_FRACTION * log_k
                and abs(loss - log_k) <= (1 - UNIFORM_FRACTION) * log_k):
            reasons.append(f"teacher entropy {record['teacher_entropy']:.3f} and loss {loss:.3f} both at ln K = "
                           f"{log_k:.2f}: the teacher's targets are uniform")
        if reasons and "collapse" not in found:
            found["collapse"] = (f"HEALTH WARNING at step {step}: pretraining looks COLLAPSED ({'; '.join(reasons)}). "
                                 "Try a lower teacher temperature, more augmentation or a lower learning rate.")
        marginal, k = record.get("marginal_entropy", math.inf), math.exp(log_k)
        if (not reasons and k >= 4 * 16 and math.exp(marginal) < min(FEW_PROTOTYPES, k / 4)
                and "few_prototypes" not in found):
            found["few_prototypes"] = (
                f"HEALTH WARNING at step {step}: the teacher's targets use FEW PROTOTYPES (batch-mean entropy "
                f"{marginal:.2f} nats of ln K = {log_k:.2f}: about {math.exp(marginal):.0f} of {k:.0f}), a partial "
                "collapse. Try Sinkhorn-Knopp centring (loss.centering=sinkhorn_knopp), a higher teacher "
                "temperature or a lower learning rate.")
        change = record.get("weight_change", math.inf)
        if change < FROZEN_WEIGHT_CHANGE and "frozen" not in found:
            found["frozen"] = (f"HEALTH WARNING at step {step}: the backbone looks FROZEN (weights moved "
                               f"{100 * change:.2f} % since step 0, < {100 * FROZEN_WEIGHT_CHANGE:.0f} %). "
                               "Check the learning rate (optim.base_lr, schedules) and that parameters train.")
    return list(found.items())


# ----------------------------------------------------------------------------------------------- callback
class HealthMonitor(HistoryCallback):
    """The expensive signals on a fixed probe set, on rank 0, at step 0, every ``every_steps`` steps (the
    checkpoint cadence: each checkpoint carries a fresh record), at the end of an epoch without one yet, and
    at the end; warnings once per kind. The step-0 student backbone travels in ``state_dict`` (CPU, float32),
    so a resumed run, from any checkpoint, measures against the true initial weights."""

    def __init__(self, dataset: Any, log_k: float, every_steps: int, seed: int, num_workers: int = 0,
                 n_probe: int = PROBE_TILES) -> None:
        self.dataset, self.log_k, self.every, self.seed = dataset, log_k, max(1, every_steps), seed
        self.num_workers, self.n_probe, self.after_step, self._last_step = num_workers, n_probe, 0, -1
        self.history: list[dict[str, float]] = []
        self.warnings: list[dict[str, Any]] = []
        self.initial: dict[str, torch.Tensor] | None = None
        self._probe: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._initial_features: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "warnings": list(self.warnings), "initial": self.initial or {}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.warnings = list(state_dict.get("warnings", []))
        self.initial = dict(state_dict["initial"]) if state_dict.get("initial") else None

    def summary(self) -> dict[str, Any]:
        """For summary.json: the warnings and the last record."""
        return {"warnings": [w["message"] for w in self.warnings], "ln_k": self.log_k,
                "last": self.history[-1] if self.history else None}

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        per_epoch = pl_module.steps_per_epoch  # no warning before the lr warm-up (and one epoch) is over
        self.after_step = max(int(pl_module.cfg.optim.warmup_epochs * per_epoch), per_epoch)
        if not trainer.is_global_zero or self.n_probe <= 0:
            return
        if self.initial is None and trainer.global_step == 0:
            self.initial = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype, copy=True)
                            for k, v in pl_module.model.student.backbone.state_dict().items()}
        elif self.initial is None:
            log.warning("health: the checkpoint holds no step-0 weights (written before geossl measured them); "
                        "weight change and CKA against the initial network are not measured in this run")
        with torch.random.fork_rng(devices=[]):  # a new network and a DataLoader draw from the global RNG
            self._probe = self._read_probe()
            if self.initial is not None:  # the step-0 network's features on this probe, for CKA
                from geossl.models.backbone import create_backbone

                network = create_backbone(pl_module.cfg.model.arch, pl_module.model.backbone_kwargs, drop_path_rate=0)
                network.load_state_dict(self.initial)
                self._initial_features = self._embed(network.to(pl_module.device), pl_module)
        self._last_step = int(self.history[-1]["step"]) if self.history else -1
        if trainer.global_step == 0 and self._last_step < 0:
            self.measure(trainer, pl_module)

    def _read_probe(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to ``n_probe`` training tiles, raw, cached on the CPU within :data:`PROBE_MAX_BYTES`: a seeded
        choice, the same after a resume (random scene tiles are redrawn, same distribution); for chips the
        start of epoch 0's chunk-local order, so a few chunks are read, not one per tile."""
        n, order = len(self.dataset), getattr(self.dataset, "epoch_order", None)
        first = self.dataset[0]["image"]
        count = min(self.n_probe, n, max(1, PROBE_MAX_BYTES // (first.numel() * first.element_size())))
        chosen = order(self.seed, 0)[:count] if order else np.random.default_rng(self.seed).choice(n, count, False)
        indices = sorted(int(i) for i in chosen)
        # its workers ignore a stop sent to the whole process group, as the training loader's do
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(self.dataset, indices), batch_size=64,
                                             num_workers=self.num_workers, worker_init_fn=stop_safe_worker_init())
        batches = list(loader)
        masks = [b.get("mask") for b in batches]
        return torch.cat([b["image"] for b in batches]), (None if any(m is None for m in masks) else torch.cat(masks))

    @torch.no_grad()
    def _embed(self, backbone: torch.nn.Module, pl_module: Any) -> torch.Tensor:
        """CLS embeddings (N, D) of the probe tiles, normalised as the exported encoder does, in float32.
        ``forward`` is called directly, so a ``torch.compile``-d backbone is run eagerly (no recompiles)."""
        from geossl.models.backbone import effective_patch_size

        assert self._probe is not None
        images, masks = self._probe
        p = effective_patch_size(backbone)
        h, w = images.shape[-2] // p * p, images.shape[-1] // p * p
        mean, std = pl_module.band_mean, pl_module.band_std.clamp_min(1e-6)
        was_training, out = backbone.training, []
        backbone.eval()
        for start in range(0, len(images), 64):
            x = images[start:start + 64].to(pl_module.device).float()
            if masks is not None:  # nodata pixels become the band mean, as in training
                x = torch.where(masks[start:start + 64].to(pl_module.device).unsqueeze(1), x, mean)
            out.append(backbone.forward(((x - mean) / std)[..., :h, :w]).float().cpu())
        backbone.train(was_training)
        return torch.cat(out)

    def measure(self, trainer: L.Trainer, pl_module: Any) -> dict[str, float]:
        """One record: RankMe, CKA vs step 0, weight change per group, plus the latest cheap scalars."""
        # NaN weights give NaN values here, not an error: the run's own check (all ranks) stops it clearly.
        step = int(trainer.global_step)
        features = self._embed(pl_module.model.teacher.backbone, pl_module)
        record: dict[str, float] = {"step": step, "epoch": step / pl_module.steps_per_epoch, "rankme": rankme(features)}
        if self._initial_features is not None:
            record["cka_init"] = linear_cka(self._initial_features, features)
        if self.initial is not None:
            changes = relative_weight_change(self.initial, pl_module.model.student.backbone.state_dict())
            record["weight_change"] = changes.pop("overall")
            record.update({f"weight_change/{k}": v for k, v in changes.items()})
        record.update({k: float(v) for k, v in pl_module.monitors.items() if k in CHEAP_KEYS})
        self.history.append(record)
        self._last_step = step
        shown = {k: record[k] for k in ("rankme", "cka_init", "weight_change") if k in record}
        print(metric_line(epoch=round(record["epoch"], 3), at_step=step, **shown), flush=True)
        for logger in trainer.loggers:
            logger.log_metrics({f"health/{k}": v for k, v in record.items() if k not in ("step", "epoch")}, step=step)
        self.report(diagnose_history([record], self.log_k, self.after_step))
        return record

    def report(self, found: list[tuple[str, str]]) -> None:
        """Log each kind of warning once per run (resumes included) and keep it for summary.json."""
        for kind, message in found:
            if kind not in {w["kind"] for w in self.warnings}:
                log.warning(message)
                self.warnings.append({"kind": kind, "message": message})

    def _due(self, trainer: L.Trainer) -> bool:  # rank 0, and not measured at this step yet
        return self._probe is not None and trainer.global_step != self._last_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._due(trainer) and trainer.global_step % self.every == 0:
            self.measure(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self._due(trainer) and self._last_step <= trainer.current_epoch * pl_module.steps_per_epoch:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self._due(trainer):
            self.measure(trainer, pl_module)
