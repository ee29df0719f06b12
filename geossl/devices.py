"""Which torch device a command runs on: one rule for every command's ``--device`` (probe, classify, embed,
change, attention). Its own module because the probe runs on hosts without the geo stack (no GDAL), so
the rule cannot live in the inference package, which imports it."""

from __future__ import annotations

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def pick_device(name: str | None = None) -> torch.device:
    """``auto`` (or None) -> the GPU when there is one, else the CPU; anything else must exist here.

    torch accepts ``cpu:99`` and ``cuda:7`` on a one-GPU machine without complaint; the run would then fail
    (or, for the CPU, silently ignore the index) only once a tensor is moved, after the model is loaded
    and the outputs are planned. So the string is checked now, in one line naming ``--device``: a device
    type geossl runs on, a CPU index of 0 at most, a CUDA index below the GPU count, MPS only where present.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError:
        raise ValueError(f"--device {name!r}: expected {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise ValueError(f"--device {name!r}: there is one CPU device (cpu or cpu:0)")
    elif device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name}: no CUDA GPU available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise RuntimeError(f"--device {name}: no Apple MPS device available")
    else:
        raise ValueError(f"--device {name!r}: expected {DEVICE_CHOICES}")
    return device
