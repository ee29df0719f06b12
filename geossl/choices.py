"""The allowed values of geossl's string options, and the defaults a CLI's help prints, each written once.

Config validation (:mod:`geossl.config`, :mod:`geossl.finetune.config`), the CLIs' ``choices=`` and the
modules that act on a value (models, predict, probe) all import these constants, so no value can be
accepted by one and refused by another, nor a default shown in ``--help`` differ from the one used.

Why a module of its own that imports nothing: loading a config and printing ``geossl <command> --help``
must not import torch (seconds, and the job launcher and the probe's GDAL-free host may lack the geo or
torch stack), yet the modules that own these values (:mod:`geossl.models.encoder`, the losses) import
torch at the top. Keep it torch-free (``tests/test_choices.py`` checks it).
"""

from __future__ import annotations

# data.kind: what data.paths holds
DATA_KINDS = ("patches", "scenes", "shards")
# trainer.accelerator, pretraining and fine-tuning (Lightning's names; "gpu" and "cuda" are the same)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# the features a frozen encoder gives a head (geossl.models.encoder.Encoder.features): model.feature_recipe,
# finetune model.features, probe --features, embed --recipe, import-encoder --feature-recipe
FEATURE_RECIPES = ("cls", "cls_last4", "cls_avgpool", "last4_avgpool_cls")
# filters of data bands an encoder never saw (geossl.models.bands): model.init_new_bands, --new-bands
NEW_BAND_POLICIES = ("zero", "mean")
# loss.centering: DINO's EMA centre or SwAV/DINOv2's Sinkhorn-Knopp equipartition
CENTERINGS = ("center", "sinkhorn_knopp")
# loss.ibot_mask_mode: BEiT/DINOv2 block masks or independent patches
IBOT_MASK_MODES = ("block", "random")
# a land-cover model's head (geossl.models.landcover): probe --head
HEAD_TYPES = ("linear", "attentive")
# which network of a DINO checkpoint becomes the encoder: import-encoder --which
CHECKPOINT_WEIGHTS = ("teacher", "student")
# classify/embed --mode: each input a scene (sliding window), a tile (one prediction), or decided per file
INPUT_MODES = ("auto", "scene", "tiles")
# classify/change --blend: how overlapping windows' predictions are averaged (geossl.predict.blend)
BLENDS = ("mean", "hann")
# classify --rescale (geossl.scene.rescale)
RESCALES = ("none", "percentile")
# classify --probs-dtype: the stored class probabilities
PROBS_DTYPES = ("float32", "uint8")

# geossl probe defaults (--help prints them; geossl.probe.linear / dense / attentive use them)
PROBE_WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # L2 strengths swept for the linear head
PROBE_DENSE_TOKENS = 16  # --dense: tokens drawn per train/val patch for the per-patch head's fit
ATTENTIVE_EPOCHS = 10  # --head attentive: training epochs
ATTENTIVE_LRS = (1e-3, 3e-3)  # --head attentive: AdamW rates swept; 3e-4 never led on the demo encoder (EuroSAT RGB)
