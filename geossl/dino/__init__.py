"""DINO: loss and centring, schedules, student/teacher, the LightningModule and the training entry point."""
