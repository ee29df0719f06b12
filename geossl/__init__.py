"""geossl: DINO self-supervised pretraining on satellite imagery, land-cover probes and maps."""

from geossl.models.encoder import Encoder, load_encoder

__all__ = ["Encoder", "load_encoder", "__version__"]
__version__ = "0.1.0"
