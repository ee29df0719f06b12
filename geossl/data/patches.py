"""Labelled image patches (EuroSAT-style class folders or a CSV) as a map-style torch Dataset.

Images come back in the file's raw units (no scaling), so the same band statistics serve training and
inference. Sources are validated up front (missing files, unknown labels, empty splits) because a typo
found after an hour of pretraining costs an hour; a bad file surfaces at ``__getitem__`` as a
:class:`BadPatchError` naming it, which pretraining and ``geossl stats`` skip and count instead of dying.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from geossl.data.splits import balanced_subset, read_label_csv, stratified_split
from geossl.settings import resolve_data_path

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
RASTERIO_EXTS = (".tif", ".tiff")
SPLITS_FILE = "splits.csv"
LABELS_FILE = "labels.csv"
PROBE_FILES = 5  # readable file headers that vote on a dataset's band count and dtype
MAX_UNREADABLE_IN_A_ROW = 20  # ... and how many unreadable ones in a row end the search

# torch has only "shell" support for uint16/uint32 (no max, interpolate, ...): widen to the next signed type.
_TORCH_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "uint16": torch.int32,
    "int32": torch.int32,
    "uint32": torch.int64,
    "int64": torch.int64,
    "float16": torch.float32,
    "float32": torch.float32,
    "float64": torch.float32,  # imagery never needs 53-bit mantissas; halves memory and transfer
}


class BadPatchError(ValueError):
    """One file that cannot serve as a patch of its dataset. ``kind``: unreadable (also truncated, empty, not
    an image), mode (an image mode geossl does not read), bands, dtype, or size (set by callers that expect a
    size). A ValueError, so code that stops on bad input still stops; pretraining and stats skip it instead."""

    def __init__(self, path: str | Path, kind: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.kind, self.problem = Path(path), kind, problem

    def __reduce__(self) -> tuple[type, tuple[Path, str, str]]:  # picklable across DataLoader workers
        return type(self), (self.path, self.kind, self.problem)


def bad_files_message(found: dict[str, str], total: int, max_fraction: float, setting: str, what: str) -> str:
    """One line for a run stopped by too many bad files (``found``: path -> "kind: problem", those seen so
    far, hence "at least"): how many, the first 20 with their kinds, and the setting that allows more."""
    shown = ", ".join(f"{path} ({reason.split(':', 1)[0]})" for path, reason in list(found.items())[:20])
    more = f" and {len(found) - 20} more" if len(found) > 20 else ""
    return (f"at least {len(found)} of {total} {what} ({len(found) / max(total, 1):.1%}) are unreadable or do not "
            f"match the dataset, more than {setting}={max_fraction:g} allows: {shown}{more}; fix or remove them, "
            f"or raise {setting}")


def _rasterio(path: Path) -> ModuleType:
    """rasterio, imported on the first GeoTIFF only: JPEG/PNG datasets (EuroSAT RGB) must train and probe
    on hosts without GDAL (the GPU benchmark host has none); a GeoTIFF there fails naming the file."""
    try:
        import rasterio
    except ImportError as exc:
        raise RuntimeError(f"{path}: reading GeoTIFF patches needs rasterio, which is not installed ({exc})") from None
    return rasterio


def _decode_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "this file is not a readable image"; RasterioError only once rasterio is loaded."""
    errors: tuple[type[BaseException], ...] = (UnidentifiedImageError, OSError, SyntaxError,
                                               Image.DecompressionBombError)
    rio_errors = sys.modules.get("rasterio.errors")
    return (*errors, rio_errors.RasterioError) if rio_errors is not None else errors


def compact_torch_dtype(numpy_dtype: str | np.dtype) -> torch.dtype:
    """The torch dtype that holds every value of ``numpy_dtype`` with the fewest bytes and full op support."""
    name = np.dtype(numpy_dtype).name
    if name not in _TORCH_DTYPES:
        raise ValueError(f"unsupported pixel dtype {name!r} (supported: {', '.join(_TORCH_DTYPES)})")
    return _TORCH_DTYPES[name]


def to_compact_tensor(array: np.ndarray) -> torch.Tensor:
    """A contiguous tensor of ``array`` in its compact torch dtype (see :func:`compact_torch_dtype`)."""
    if array.dtype == np.uint8:  # the common case, without the dtype lookup
        return torch.from_numpy(np.ascontiguousarray(array))
    target = compact_torch_dtype(array.dtype)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor if tensor.dtype == target else tensor.to(target)


def _scan_class_folders(root: Path) -> tuple[list[str], list[str]]:
    """``<root>/<Class>/<image>`` files, sorted by class then name; hidden entries ignored."""
    paths: list[str] = []
    labels: list[str] = []
    class_dirs = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    for class_dir in sorted(class_dirs, key=lambda e: e.name):
        names = sorted(
            e.name
            for e in os.scandir(class_dir.path)
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTS)
        )
        paths.extend(f"{class_dir.name}/{n}" for n in names)
        labels.extend([class_dir.name] * len(names))
    if not paths:
        raise FileNotFoundError(
            f"{root}: no images found (expected <Class>/<name>{{{','.join(IMAGE_EXTS)}}} sub-folders, "
            f"or a {LABELS_FILE}/{SPLITS_FILE})"
        )
    return paths, labels


class PatchDataset(torch.utils.data.Dataset):
    """Labelled patches from a class-folder tree (EuroSAT layout ``<Class>/<name>.jpg|png|tif``) or a CSV.

    ``source`` is a folder or a ``path,label[,split]`` CSV (paths relative to the CSV's folder). In a
    folder, ``splits.csv`` is used when ``split`` is given, else ``labels.csv``, else the class
    sub-folders. Without a split column, ``split`` selects from :func:`stratified_split` (``seed``).
    ``limit`` keeps a seeded class-balanced subset; ``bands`` are 1-based band indices.
    Items: ``{"image": (C,H,W) raw units in a compact dtype, "label": int, "index": int}``; a file that is
    unreadable or differs from the dataset's band count/dtype raises :class:`BadPatchError` naming it.
    """

    def __init__(
        self,
        source: str | Path,
        split: str | None = None,
        bands: list[int] | None = None,
        limit: int | None = None,
        seed: int = 0,
        classes: list[str] | None = None,
    ) -> None:
        source_path = Path(resolve_data_path(source)).expanduser()
        paths, names, splits, table = self._load_table(source_path, split)
        self.source = source_path
        self.root = source_path if source_path.is_dir() else source_path.parent
        self.classes = list(classes) if classes is not None else sorted(set(names))
        index_of = {c: k for k, c in enumerate(self.classes)}
        unknown = sorted(set(names) - index_of.keys())
        if unknown:
            raise ValueError(f"{table}: label(s) {unknown[:5]} not in the given classes {self.classes}")
        labels = np.fromiter((index_of[n] for n in names), dtype=np.int64, count=len(names))

        if split is not None:
            if splits is None:
                splits = list(stratified_split(labels, seed=seed))
            keep = np.flatnonzero(np.asarray(splits) == split)
            if keep.size == 0:
                available = sorted({str(s) for s in splits})  # plain str, not np.str_('train')
                raise ValueError(f"{table}: split {split!r} is empty (splits present: {available})")
            paths = [paths[k] for k in keep]
            labels = labels[keep]
        if limit is not None:
            if limit < 1:
                raise ValueError(f"{table}: limit must be >= 1, got {limit}")
            keep = balanced_subset(labels, limit, seed=seed)
            paths = [paths[k] for k in keep]
            labels = labels[keep]

        self.paths = [p if p.is_absolute() else self.root / p for p in map(Path, paths)]
        self._masked: bool | None = None
        self.labels = labels
        self._check_exist(table)
        self._probe_layout()
        self.bands = self._check_bands(bands)

    @staticmethod
    def _load_table(
        source: Path, split: str | None
    ) -> tuple[list[str], list[str], list[str] | None, Path]:
        """(paths, label names, splits or None, the file that defined them)."""
        if source.is_file():
            if source.suffix.lower() != ".csv":
                raise ValueError(f"{source}: expected a folder or a .csv file (path,label[,split])")
            return (*read_label_csv(source), source)
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: no such folder or CSV file")
        if split is not None and (source / SPLITS_FILE).is_file():
            return (*read_label_csv(source / SPLITS_FILE), source / SPLITS_FILE)
        if (source / LABELS_FILE).is_file():
            return (*read_label_csv(source / LABELS_FILE), source / LABELS_FILE)
        paths, labels = _scan_class_folders(source)
        return paths, labels, None, source

    def _check_exist(self, table: Path) -> None:
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise FileNotFoundError(f"{table}: {len(missing)} of {len(self.paths)} listed files do not exist: {shown}")

    def _probe_layout(self) -> None:
        """Band count and dtype: the most common among the first :data:`PROBE_FILES` readable headers (ties:
        the earliest), so a bad first file (unreadable, RGBA among RGB) neither stops construction nor makes
        every good file look bad. :data:`MAX_UNREADABLE_IN_A_ROW` unreadable with none readable: wrong folder."""
        votes: dict[tuple[int, str], list[tuple[Path, tuple[int, int]]]] = {}
        errors: list[BadPatchError] = []
        readable = in_a_row = 0
        for path in self.paths:
            try:
                count, dtype, shape = self._probe(path)
            except BadPatchError as exc:
                errors.append(exc)
                in_a_row += 1
                if in_a_row >= MAX_UNREADABLE_IN_A_ROW:
                    break
                continue
            votes.setdefault((count, dtype), []).append((path, shape))
            readable, in_a_row = readable + 1, 0
            if readable == PROBE_FILES:
                break
        if not votes:
            shown = "; ".join(str(e) for e in errors[:3])
            raise ValueError(f"{self.source}: none of the first {len(errors)} files is a readable image "
                             f"({shown}); check the folder or CSV")
        (self._file_bands, self._file_dtype), members = max(votes.items(), key=lambda kv: len(kv[1]))
        self._layout_path = members[0][0]
        # (height, width) most common among those files: a dataset's size, known without decoding a file
        self.patch_shape: tuple[int, int] = Counter(shape for _, shape in members).most_common(1)[0][0]

    @staticmethod
    def _probe(path: Path) -> tuple[int, str, tuple[int, int]]:
        """(band count, numpy dtype name, (height, width)) of one file, from its header only."""
        try:
            if path.suffix.lower() in RASTERIO_EXTS:
                with _rasterio(path).open(path) as src:
                    return src.count, src.dtypes[0], (src.height, src.width)
            with Image.open(path) as img:
                return (*_pil_layout(img, path), (img.height, img.width))
        except _decode_errors() as exc:
            raise BadPatchError(path, "unreadable", f"not a readable image ({exc})") from None

    def _check_bands(self, bands: list[int] | None) -> list[int] | None:
        if bands is None:
            return None
        bands = [int(b) for b in bands]
        bad = [b for b in bands if not 1 <= b <= self._file_bands]
        if not bands or bad:
            raise ValueError(
                f"{self._layout_path}: band index {bad or bands} out of range: the file has {self._file_bands} "
                f"bands (1-based indices 1..{self._file_bands})"
            )
        return bands

    @property
    def band_count(self) -> int:
        """Channels of each returned image (after band selection): a model's ``in_chans``."""
        return len(self.bands) if self.bands is not None else self._file_bands

    @property
    def dtype(self) -> str:
        """Numpy name of the pixel dtype stored in the files (e.g. "uint8", "uint16")."""
        return self._file_dtype

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} patches")
        i = i % len(self)
        array, valid = self.read_with_mask(self.paths[i])
        item = {"image": to_compact_tensor(array), "label": int(self.labels[i]), "index": i}
        if self.masked:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(valid))
        return item

    @property
    def masked(self) -> bool:
        """Items carry a validity ``mask`` when any file is a raster (GeoTIFF): nodata, NaN/inf and GDAL
        masks follow the one rule of :mod:`geossl.data.raster`, as at inference. Images never have
        invalid pixels; in a mixed folder they get an all-valid mask, so every item has the same keys."""
        if self._masked is None:
            self._masked = any(p.suffix.lower() in RASTERIO_EXTS for p in self.paths)
        return self._masked

    def read(self, path: Path) -> np.ndarray:
        """(C,H,W) array of the selected bands of one file, in the file's dtype (NaN/inf replaced by the
        band's fill value); a bad file raises :class:`BadPatchError` naming it."""
        return self.read_with_mask(path)[0]

    def read_with_mask(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(array, (H, W) validity) of one file: rasters through the raster layer's reader and rule."""
        if path.suffix.lower() not in RASTERIO_EXTS:
            array = self._read_image(path)
            return array, np.ones(array.shape[1:], dtype=bool)
        from geossl.data.raster import WindowReader

        try:
            with _rasterio(path).open(path) as src:
                self._check_layout(path, src.count, src.dtypes[0])
                reader = WindowReader(src, self.bands or range(1, src.count + 1), str(path))
                return reader.read(0, 0, src.width, src.height)
        except (_decode_errors() + (ValueError,)) as exc:
            if isinstance(exc, BadPatchError):
                raise
            raise BadPatchError(path, "unreadable", f"not a readable image or truncated ({exc})") from None

    def _read_image(self, path: Path) -> np.ndarray:
        try:
            array = read_pil_array(path, check=lambda img: self._check_layout(path, *_pil_layout(img, path)))
        except _decode_errors() as exc:
            raise BadPatchError(path, "unreadable", f"not a readable image or truncated ({exc})") from None
        return array if self.bands is None else array[[b - 1 for b in self.bands]]

    def _check_layout(self, path: Path, count: int, dtype: str) -> None:
        if count != self._file_bands:
            raise BadPatchError(path, "bands", f"has {count} bands but {self._layout_path} has {self._file_bands}: "
                                "mixed band counts in one dataset")
        if dtype != self._file_dtype:
            raise BadPatchError(path, "dtype", f"pixel dtype {dtype} differs from {self._file_dtype} of "
                                f"{self._layout_path}")


_PIL_MODES: dict[str, tuple[int, str]] = {
    "1": (1, "uint8"),
    "L": (1, "uint8"),
    "LA": (2, "uint8"),
    "P": (3, "uint8"),
    "PA": (4, "uint8"),
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "CMYK": (4, "uint8"),
    "I;16": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I": (1, "int32"),
    "F": (1, "float32"),
}


_PIL_CONVERT = {"1": "L", "P": "RGB", "PA": "RGBA"}  # modes numpy cannot take as they are


def read_pil_array(path: str | Path, check: Callable[[Image.Image], None] | None = None) -> np.ndarray:
    """(C, H, W) pixels of a JPEG/PNG through PIL (no GDAL needed for those), for patches and predicted tiles.

    ``check`` sees the opened image before its pixels are decoded (the dataset's layout check). 1-bit,
    palette and palette+alpha images become L, RGB (RGBA when the palette has transparency) and RGBA.
    Decoding errors are raised as they come (see ``_decode_errors``); callers turn them into their own.
    """
    with Image.open(path) as img:
        if check is not None:
            check(img)
        image: Image.Image = img
        if img.mode in _PIL_CONVERT:
            transparent = img.mode == "P" and "transparency" in img.info
            image = img.convert("RGBA" if transparent else _PIL_CONVERT[img.mode])
        array = np.asarray(image)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _pil_layout(img: Image.Image, path: Path) -> tuple[int, str]:
    """(band count, dtype) of a PIL image as :meth:`PatchDataset.read` returns it."""
    if img.mode not in _PIL_MODES:
        raise BadPatchError(path, "mode", f"unsupported image mode {img.mode!r}")
    count, dtype = _PIL_MODES[img.mode]
    if img.mode == "P" and "transparency" in img.info:
        count = 4
    return count, dtype
