"""Continued pretraining: start DINO's student and teacher from a pretrained encoder (``model.init``).

The encoder decides the architecture (the config's ``model.arch``, ``patch_size`` and ``extra`` are
replaced by the encoder's, so a checkpoint and its run always agree); its bands are matched by name to
the data's (``data.band_names``) and its patch and position embeddings resampled to the crop size, by
:func:`geossl.models.importer.adapt_encoder`. Student and teacher start equal. The DINO head is new,
unless the source is a geossl run folder whose newest checkpoint has a head of the same shape.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from geossl.config import Config
from geossl.data.stats import BandStats
from geossl.models.checkpoints import load_exactly
from geossl.models.encoder import META_FILE, load_encoder, read_meta
from geossl.models.importer import Normalization, adapt_encoder, architecture_of

if TYPE_CHECKING:
    from geossl.dino.meta_arch import StudentTeacher

log = logging.getLogger("geossl")


def init_source(path: str) -> tuple[Path, Path | None]:
    """(encoder folder, geossl run folder or None) for ``model.init``: an encoder folder, or a run folder
    holding ``encoder/`` (an encoder exported by ``pretrain`` also finds its run one level up)."""
    source = Path(path).expanduser()
    if (source / "encoder" / META_FILE).is_file():
        return source / "encoder", source
    if (source / META_FILE).is_file():
        parent = source.parent
        return source, parent if (parent / "checkpoints").is_dir() and (parent / "config.yaml").is_file() else None
    raise FileNotFoundError(f"{source}: model.init must be an encoder folder ({META_FILE}) or a geossl run folder")


def with_init_architecture(cfg: Config) -> Config:
    """``cfg`` with the model architecture of ``model.init``'s encoder (unchanged without init)."""
    if not cfg.model.init:
        return cfg
    encoder_dir, _ = init_source(cfg.model.init)
    arch = architecture_of(read_meta(encoder_dir))
    current = {k: getattr(cfg.model, k) for k in arch}
    if current != arch:
        log.info("model.init: architecture from %s: %s (config had %s)", encoder_dir, arch, current)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **arch))


def initialize_from_encoder(model: StudentTeacher, cfg: Config, stats: BandStats) -> dict[str, Any]:
    """Load ``model.init`` into a :class:`~geossl.dino.meta_arch.StudentTeacher`; returns what was done."""
    assert cfg.model.init
    encoder_dir, run_dir = init_source(cfg.model.init)
    encoder = load_encoder(encoder_dir)
    norm = Normalization(list(stats.mean), list(stats.std), list(stats.p2), list(stats.p98))
    adapted, mapping = adapt_encoder(encoder, bands=list(stats.bands), norm=norm,
                                     img_size=cfg.augment.global_size, new_bands=cfg.model.init_new_bands)
    state = adapted.backbone.state_dict()
    for network in (model.student, model.teacher):
        load_exactly(network.backbone, state, f"{encoder_dir} (model.init)")
    report: dict[str, Any] = {
        "encoder": str(encoder_dir.resolve()),
        "bands": mapping.describe(cfg.model.init_new_bands) if mapping else "bands: same as the encoder",
        "band_mapping": mapping.to_json() if mapping else None,
        "head": _load_run_head(model, run_dir),
    }
    log.info("model.init: %s; %s; head %s", encoder_dir, report["bands"], report["head"])
    return report


def _load_run_head(model: nn.Module, run_dir: Path | None) -> str:
    """The DINO heads of the source run's newest checkpoint, where they fit; else the new random head."""
    if run_dir is None:
        return "new"
    from geossl.dino.checkpoint import find_resume_checkpoint, load_checkpoint_file

    ckpt = find_resume_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        return "new (the source run has no checkpoint)"
    state = load_checkpoint_file(ckpt)["state_dict"]
    heads = {f"{net}.{name}": getattr(getattr(model, net), name)
             for net in ("student", "teacher") for name in ("head", "ibot_head")
             if getattr(getattr(model, net), name) is not None}
    saved = {prefix: {k[len(f"model.{prefix}."):]: v for k, v in state.items() if k.startswith(f"model.{prefix}.")}
             for prefix in heads}
    for prefix, head in heads.items():
        own = head.state_dict()
        if set(saved[prefix]) != set(own) or any(saved[prefix][k].shape != own[k].shape for k in own):
            return f"new (the head in {ckpt} has another shape)"
    for prefix, head in heads.items():
        head.load_state_dict(saved[prefix])
    return f"from {ckpt}"
