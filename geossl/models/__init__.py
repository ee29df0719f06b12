"""Backbones (timm ViTs), the DINO projection head, and the exported-encoder format."""
