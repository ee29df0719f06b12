"""``geossl finetune``: a land-cover classifier trained end to end from any encoder (full, last-N blocks, LoRA).

Split of concerns: :mod:`.config` (typed options), :mod:`.augment` (seeded batch augmentation),
:mod:`.network` (encoder + head, freezing, LoRA, layer-wise learning rates), :mod:`.module` (Lightning),
:mod:`.run` (run folder, training, export, test metrics and baselines), :mod:`.cli`.
"""
