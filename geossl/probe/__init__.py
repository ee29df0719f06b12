"""Land-cover probes on frozen encoder features: weighted k-NN and a linear head (DINO protocol)."""
