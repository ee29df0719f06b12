"""What a labels-as-geodata probe depends on (``geossl probe --labels/--label-raster --scenes`` maps onto it)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

SPLIT_MODES = ("auto", "random", "column", "spatial")
SPLIT_COLUMN = "split"  # a column of the labels with train/val/test values, used by "auto" when present


@dataclass
class LabelOptions:
    """Where the labels and scenes are and how chips are cut and split.

    Exactly one of ``labels`` (a vector layer of points or polygons) and ``label_raster`` is set.
    """

    scenes: list[str]  # files, folders, globs, s3:// prefixes (geossl.data.uris.expand_inputs)
    labels: Path | None = None
    label_raster: Path | None = None
    label_field: str | None = None  # None: "label", else "class", if the layer has one of them
    layer: str | None = None  # a layer of a multi-layer file (GeoPackage)
    bands: list[int] | None = None  # 1-based scene bands in the encoder's order (None: by name / count)
    resample: bool | None = None  # to the encoder's GSD: None = automatic (as geossl classify)
    split: str = "auto"  # auto | random | column | spatial
    block_size: float | None = None  # metres, spatial split; None = 10 chip footprints
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    chips_per_polygon: int = 10
    min_overlap: float = 1.0  # fraction of a chip's footprint inside its polygon
    min_purity: float = 0.8  # label raster: share of the majority class among labelled pixels
    min_valid: float = 0.9  # share of valid scene pixels (and labelled pixels, for rasters) in a chip
    class_names: dict[int, str] = field(default_factory=dict)  # label raster values -> class names
    check_stats: bool = True  # refuse scenes in other units than the encoder's training data

    def check(self) -> None:
        """One-line errors naming the option, before any file is opened."""
        if (self.labels is None) == (self.label_raster is None):
            raise ValueError("give either --labels (points or polygons) or --label-raster, not both and not neither")
        if not self.scenes:
            raise ValueError("--scenes: give the scenes the labels lie on (files, folders, globs or s3://)")
        if self.split not in SPLIT_MODES:
            raise ValueError(f"--split: expected one of {list(SPLIT_MODES)}, got {self.split!r}")
        if self.block_size is not None and not self.block_size > 0:
            raise ValueError(f"--block-size: must be a positive number of metres, got {self.block_size}")
        if self.chips_per_polygon < 1:
            raise ValueError(f"--chips-per-polygon: must be >= 1, got {self.chips_per_polygon}")
        for name in ("min_overlap", "min_purity", "min_valid"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')}: must be in (0, 1], got {value}")


def parse_class_names(text: str | None) -> dict[int, str]:
    """``"1=Water,2=Trees"`` or a ``value,name`` CSV file -> {1: "Water", 2: "Trees"}.

    A value given twice is refused rather than resolved last-wins: ``1=Water,1=Trees`` is a typo for some
    other value, and whichever name won, one class would be silently mislabelled. A name given to two
    values is refused too: it would merge them under one label while ``--min-purity`` still counts them
    as different classes, so the merged class would lose chips as "impure" without saying why.
    """
    if not text:
        return {}
    path = Path(text)
    if path.is_file():
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
        if rows and not rows[0][0].strip().lstrip("-").isdigit():
            rows = rows[1:]  # a header row
        pairs = [(r[0], r[1] if len(r) > 1 else "") for r in rows]
        source = str(path)
    else:
        pairs = [(value, name) for value, _, name in (p.partition("=") for p in text.split(",") if p.strip())]
        source = "--class-names"
    out: dict[int, str] = {}
    for value, name in pairs:
        try:
            key = int(str(value).strip())
        except ValueError:
            raise ValueError(f"{source}: expected VALUE=NAME pairs with integer values, got {value!r}") from None
        label = str(name).strip()
        if not label:
            raise ValueError(f"{source}: value {key} has no class name")
        if key in out:
            raise ValueError(f"{source}: value {key} is named twice ({out[key]!r} and {label!r}); "
                             "give each value once")
        same = [k for k, v in out.items() if v == label]
        if same:
            raise ValueError(f"{source}: values {same[0]} and {key} are both named {label!r}; give each value "
                             "its own name (merging classes is not supported: purity counts values)")
        out[key] = label
    return out
