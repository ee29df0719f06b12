"""Moving a model from one set of input bands to another, by band name.

A checkpoint reads some bands (e.g. RGB = B04, B03, B02 of Sentinel-2); the data may hold others (all 13
Sentinel-2 bands). Only the first convolution sees bands, so adapting a model means rebuilding that
layer's weight (out, bands, kh, kw): a band of the data that the checkpoint also reads keeps its filter;
a band the checkpoint never saw is initialised by a documented policy; a checkpoint band the data lacks
is dropped. No library does this by name (timm's ``adapt_input_conv`` only repeats RGB cyclically), so it
is written here, small and tested against the source model's outputs.

Policies for bands the checkpoint never saw:

- ``zero`` (default): a zero filter. The adapted model's output equals the source model's for ANY values
  of the new bands (after normalisation both see z-scores of the shared bands), so frozen features are
  exactly the source's, and continued pretraining learns the new filters from that starting point.
- ``mean``: a new band starts as the mean filter of the shared bands, and every filter is scaled by
  ``n_source / n_target`` (timm's ``adapt_input_conv`` rule, generalised to named bands): when every
  source band is kept, an input that is the same z-score image in every band gives the source's output.

Weight-standardised convolutions (timm's ``StdConv2d``, in conv-stem hybrids) are standardised first,
so zero filters leave the standardised shared filters a pure rescaling, which the stem's GroupNorm removes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from geossl.choices import NEW_BAND_POLICIES


def canonical_band(name: str) -> str:
    """A band name for matching: case-insensitive, ``B01`` == ``B1``, ``B8A`` == ``B8a``."""
    text = name.strip().upper()
    match = re.fullmatch(r"B0*(\d+)(A?)", text)
    return f"B{int(match.group(1))}{match.group(2)}" if match else text


def parse_band_list(text: str, option: str = "--bands") -> list[str]:
    """``"B04,B03,B02"`` -> ``["B04", "B03", "B02"]``; duplicates (after canonicalisation) are refused.

    Band *names*; 1-based band numbers (``--bands 4,3,2`` of the data commands) are
    :func:`geossl.data.raster.parse_band_indices`."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"{option}: expected comma-separated band names (e.g. B04,B03,B02), got {text!r}")
    check_unique(names, option)
    return names


def check_unique(names: list[str], what: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        key = canonical_band(name)
        if key in seen:
            raise ValueError(f"{what}: band {name!r} named twice (as {seen[key]!r})")
        seen[key] = name


@dataclass
class BandMapping:
    """For each target band, the index of the source band it takes its filter from (None = new band)."""

    source: list[str]
    target: list[str]
    index: list[int | None]

    @property
    def identity(self) -> bool:
        return self.index == list(range(len(self.source))) and len(self.source) == len(self.target)

    @property
    def new_bands(self) -> list[str]:
        return [t for t, i in zip(self.target, self.index, strict=True) if i is None]

    @property
    def dropped_bands(self) -> list[str]:
        used = {i for i in self.index if i is not None}
        return [s for i, s in enumerate(self.source) if i not in used]

    def describe(self, policy: str = "zero") -> str:
        kept = [f"{t}<-{self.source[i]}" for t, i in zip(self.target, self.index, strict=True) if i is not None]
        parts = [f"kept {len(kept)} ({', '.join(kept)})"]
        if self.new_bands:
            parts.append(f"new {len(self.new_bands)} ({', '.join(self.new_bands)}; {policy} init)")
        if self.dropped_bands:
            parts.append(f"dropped {len(self.dropped_bands)} ({', '.join(self.dropped_bands)})")
        return "bands: " + "; ".join(parts)

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "target": self.target, "index": self.index,
                "new": self.new_bands, "dropped": self.dropped_bands}


def map_bands(source: list[str], target: list[str]) -> BandMapping:
    """Match target bands to source bands by canonical name; at least one must match."""
    check_unique(source, "source bands")
    check_unique(target, "target bands")
    lookup = {canonical_band(name): i for i, name in enumerate(source)}
    index = [lookup.get(canonical_band(name)) for name in target]
    if all(i is None for i in index):
        raise ValueError(
            f"no band of the model ({', '.join(source)}) matches a band of the data ({', '.join(target)}); "
            "name the model's bands with `geossl import-encoder --from ENCODER --bands ... --out DIR` "
            "or the data's with data.band_names"
        )
    return BandMapping(list(source), list(target), index)


def input_conv(model: nn.Module, in_chans: int) -> tuple[str, nn.Conv2d]:
    """The first convolution that reads the image bands (a ViT's patch embedding or a hybrid's stem)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == in_chans:
            return name, module
    raise ValueError(f"{type(model).__name__}: no convolution reads {in_chans} input bands")


def standardized_weight(weight: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The weight ``conv`` really applies: for timm's weight-standardised convs their own rule (per output
    filter, zero mean and unit biased variance plus eps); a plain conv's weight unchanged."""
    weight = weight.detach()
    if not type(conv).__name__.startswith("StdConv2d"):
        return weight.clone()
    flat = weight.reshape(weight.shape[0], -1)
    return F.batch_norm(flat.unsqueeze(0), None, None, training=True, momentum=0.0,
                        eps=float(cast(Any, conv).eps)).reshape_as(weight)


def adapt_input_weight(weight: torch.Tensor, mapping: BandMapping, policy: str = "zero") -> torch.Tensor:
    """Rebuild a first-conv weight (out, n_source, kh, kw) for the target bands (out, n_target, kh, kw)."""
    if policy not in NEW_BAND_POLICIES:
        raise ValueError(f"--new-bands: expected one of {list(NEW_BAND_POLICIES)}, got {policy!r}")
    if weight.shape[1] != len(mapping.source):
        raise ValueError(f"the input convolution reads {weight.shape[1]} bands, the model names {len(mapping.source)}")
    kept = [i for i in mapping.index if i is not None]
    mean_filter = weight[:, kept].mean(dim=1)
    columns = []
    for i in mapping.index:
        if i is not None:
            columns.append(weight[:, i])
        else:
            columns.append(mean_filter if policy == "mean" else torch.zeros_like(mean_filter))
    out = torch.stack(columns, dim=1)
    if policy == "mean":
        out = out * (len(mapping.source) / len(mapping.target))
    return out
