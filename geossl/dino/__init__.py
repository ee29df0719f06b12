"""DINO: the objective (``objective/``: losses, centring, masks, schedules), multi-crop augmentation,
student/teacher, the LightningModule and the training entry point."""
