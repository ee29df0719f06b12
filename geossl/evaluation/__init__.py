"""Evaluating frozen features, shared by pretraining (the online k-NN monitor) and ``geossl probe``:
batched feature extraction and the weighted k-NN classifier. Below both, so ``dino/`` never imports
``probe/``."""
