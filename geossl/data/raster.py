"""The one raster layer: the GDAL environment (:func:`raster_env`), band numbers (:func:`parse_band_indices`),
open, read windows (boundless), decide which pixels are valid, plan windows.

Every reader that feeds scene or tile pixels to a model goes through this module: training tiles
(:mod:`geossl.data.scenes`), inference windows (:mod:`geossl.scene.reader`, also through its
resampling ``WarpedVRT``) and tile files (:mod:`geossl.predict.tiles`). Before it existed, training called a pixel invalid when *any*
band held nodata and inference only when *all* bands did, so a model was trained on one set of
pixels and applied to another. Now there is one rule, :func:`valid_mask`, and one reader,
:class:`WindowReader`, that applies it.

Validity rule. A pixel of a window is valid when all of these hold:

1. it lies inside the raster: a window crossing an edge is read boundless, and the pixels outside
   are invalid and hold the fill value (below), so the values and the mask always agree;
2. in every selected band its value is finite (NaN and +-inf are invalid);
3. in every selected band it differs from that band's nodata value (``src.nodatavals[b - 1]``,
   falling back to ``src.nodata``). A NaN or infinite nodata is already covered by 2; a nodata
   value the dtype cannot hold (an integer band with nodata -9999.5 or 300 in uint8) matches
   nothing; without nodata only 2 applies. Floats are compared in the file's dtype, as GDAL does;
4. when the raster carries an explicit GDAL mask (an internal or ``.msk`` per-dataset mask, an alpha
   band, or a per-band mask band), that mask is non-zero there.

Why 4 counts: an explicit mask or alpha band is the producer's own statement that a pixel is not
data, and it is the only one a lossy-compressed COG can make (JPEG/WebP blur a nodata value into
its neighbours, so such files mask instead). Ignoring it would train on, and classify, the collar.
GDAL's *implicit* nodata masks are never read: rule 3 is that test, done per band in numpy
(``dataset_mask`` would call a pixel valid when any single band differs from nodata, the very
disagreement this module removes). Why "every band": a pixel missing one band is not a measurement
of that spot; filling the band with a mean and calling it valid would feed the model made-up values.

Invalid pixels keep their stored value, except that outside and non-finite pixels hold the band's
fill value: its nodata value when the dtype can hold it, else 0 (so arrays never contain NaN).

rasterio is imported lazily: the validity rule and the window planner are plain numpy and work on a
host without GDAL.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EDGES = ("shift", "pad")
COVERS = ("pixels", "cells")
_NO_ENV = contextlib.nullcontext()  # reusable: nullcontext holds no state


def parse_band_indices(text: str | Sequence[int] | None, option: str = "--bands") -> list[int] | None:
    """``"4,3,2"`` -> ``[4, 3, 2]``: 1-based band numbers (GDAL's convention); None or "" -> None (all bands).

    The one parser of every command's band-number option (``--bands``, ``--rgb-bands``); band *names* are
    :func:`geossl.models.bands.parse_band_list`. An empty entry (``1,,2``, ``4,3,2,``), a non-number or a
    band below 1 is refused in one line naming ``option``. A sequence of numbers (the Python API) passes
    through the same checks.
    """
    if text is None or text == "":
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        bands = [int(str(item).strip()) for item in items]
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated 1-based band numbers like 4,3,2, got {text!r}") from None
    if not bands or min(bands) < 1:
        raise ValueError(f"{option}: band numbers start at 1, got {text!r}")
    return bands


def on_s3(uri: str | os.PathLike[str]) -> bool:
    """Whether GDAL reads ``uri`` from S3 (``/vsis3/...``, what :func:`geossl.data.uris.to_gdal_uri` makes of
    ``s3://``), and so needs :func:`raster_env`'s credentials and endpoint."""
    return str(uri).startswith("/vsis3/")


@contextlib.contextmanager
def raster_env(uris: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], **options: Any) -> Iterator[Any]:
    """The GDAL environment (a ``rasterio.Env``) for reading ``uris``; the one helper every reader uses.

    When any of ``uris`` is on S3 (:func:`on_s3`), the environment carries boto3's credentials (an
    ``AWSSession``, one per process and endpoint: :func:`geossl.data.s3.aws_session`) and points GDAL at
    the endpoint of ``AWS_ENDPOINT_URL`` (``AWS_HTTPS``/``AWS_VIRTUAL_HOSTING`` from
    :func:`geossl.data.s3.gdal_s3_options`; explicit environment variables win). GDAL ``options`` (e.g.
    ``GDAL_CACHEMAX`` in bytes, for reading a COG's blocks) are set for the block in either case.
    No process-wide GDAL state changes. Hot paths that read local files skip it altogether
    (``with raster_env(uri) if on_s3(uri) else ...``: a local read needs no environment of its own).
    """
    import rasterio

    items = [uris] if isinstance(uris, (str, os.PathLike)) else list(uris)
    if not any(on_s3(u) for u in items):
        with rasterio.Env(**options) as env:
            yield env
        return
    from geossl.data.s3 import aws_session, gdal_s3_options

    gdal_options = gdal_s3_options()
    session = aws_session(gdal_options.get("AWS_S3_ENDPOINT"))  # the session passes the endpoint to GDAL
    env_options = {k: v for k, v in gdal_options.items() if k != "AWS_S3_ENDPOINT"}
    with rasterio.Env(session=session, **env_options, **options) as env:
        yield env


def open_raster(uri: str) -> Any:
    """Open a raster read-only (a local path or ``/vsis3/...``); errors name the file.

    A file that does not exist raises FileNotFoundError, anything else GDAL refuses ValueError.
    """
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with raster_env(uri) if on_s3(uri) else _NO_ENV:
            return rasterio.open(uri)
    except RasterioError as exc:
        remote = uri.startswith("/vsi") or "://" in uri
        missing = not os.path.exists(uri) if not remote else "does not exist" in str(exc)
        kind = FileNotFoundError if missing else ValueError
        raise kind(f"{uri}: cannot open as a raster ({gdal_reason(exc)})") from None


def gdal_reason(exc: BaseException) -> str:
    """GDAL's own words for a rasterio error: rasterio raises "Read failed. See previous exception for
    details." and chains GDAL's message (e.g. "IReadBlock failed ... TIFFReadEncodedTile() failed") as the
    cause, which a one-line error would otherwise drop."""
    while exc.__cause__ is not None and "See previous exception" in str(exc):
        exc = exc.__cause__
    return str(exc)


def comparable_nodata(nodata: float | None, dtype: np.dtype) -> Any:
    """``nodata`` as a value of ``dtype`` that pixels can equal, or None when no pixel can (rule 3).

    None for no nodata, NaN/inf (rule 2 covers them) and values an integer dtype cannot hold.
    """
    if nodata is None or not math.isfinite(nodata):
        return None
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return int(nodata) if info.min <= nodata <= info.max and float(nodata).is_integer() else None
    with np.errstate(over="ignore"):
        value = dtype.type(nodata)  # a float64 nodata as the file's float32, like GDAL's comparison
    return value if np.isfinite(value) else None


def fill_value(nodata: float | None, dtype: np.dtype) -> Any:
    """What outside and non-finite pixels hold: the nodata value when the dtype can hold it, else 0."""
    value = comparable_nodata(nodata, dtype)
    return 0 if value is None else value


def valid_mask(data: np.ndarray, nodata: Sequence[Any], gdal_mask: np.ndarray | None = None) -> np.ndarray:
    """The validity rule (module docstring, rules 2-4) for ``data`` (C, H, W): a (H, W) bool mask.

    ``nodata`` holds one value per band, already made comparable (:func:`comparable_nodata`, None =
    no nodata test); ``gdal_mask`` is the explicit GDAL mask or alpha (H, W or C, H, W; 0 = invalid).
    """
    return _validity(data, nodata, gdal_mask)[0]


def _validity(
    data: np.ndarray, nodata: Sequence[Any], gdal_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(valid mask, the (C, H, W) non-finite pixels or None when there are none): one finiteness pass
    serves both the rule and the filling of NaN/inf, which matters on the training hot path."""
    valid = np.ones(data.shape[1:], dtype=bool) if gdal_mask is None else _nonzero(gdal_mask)
    non_finite = None
    if data.dtype.kind in "fc":
        finite = np.isfinite(data)
        if not finite.all():
            valid &= finite.all(axis=0)
            non_finite = ~finite
    values = list(nodata)
    if len(values) != data.shape[0]:
        raise ValueError(f"{len(values)} nodata values for {data.shape[0]} bands")
    if values and values[0] is not None and all(v == values[0] for v in values):
        valid &= (data != values[0]).all(axis=0)  # one shared nodata value (the usual case): one vector op
    else:
        for band, value in zip(data, values, strict=True):
            if value is not None:
                valid &= band != value
    return valid, non_finite


def _nonzero(mask: np.ndarray) -> np.ndarray:
    return (mask != 0).all(axis=0) if mask.ndim == 3 else mask != 0


@dataclass(frozen=True)
class ValidityPlan:
    """How to apply the rule to one dataset and band selection, worked out once per open file.

    ``mask_bands``: bands whose explicit GDAL mask is read (a per-dataset mask or alpha needs one
    read, a per-band mask band one per band); ``alpha_band``: a band read as the mask instead (the
    alpha a ``WarpedVRT`` adds, which GDAL does not flag as a mask).
    """

    nodata: tuple[Any, ...]
    fill: tuple[Any, ...]
    mask_bands: tuple[int, ...]
    alpha_band: int | None
    dtype: np.dtype

    @classmethod
    def for_dataset(cls, src: Any, indexes: Sequence[int], alpha_band: int | None = None) -> ValidityPlan:
        from rasterio.enums import MaskFlags

        dtype = np.dtype(src.dtypes[indexes[0] - 1])
        vals = src.nodatavals
        raw = [vals[b - 1] if vals and len(vals) >= b else src.nodata for b in indexes]
        per_dataset = [b for b in indexes if MaskFlags.per_dataset in src.mask_flag_enums[b - 1]]
        per_band = [b for b in indexes if not src.mask_flag_enums[b - 1]]  # no flags: a real mask band
        return cls(
            nodata=tuple(comparable_nodata(v, dtype) for v in raw),
            fill=tuple(fill_value(v, dtype) for v in raw),
            mask_bands=tuple(per_dataset[:1] + per_band),
            alpha_band=alpha_band,
            dtype=dtype,
        )


class WindowReader:
    """Windowed reads of selected bands of one open dataset: (C, h, w) in the file dtype + (h, w) mask.

    ``ds`` is anything rasterio reads windows from (a dataset or a ``WarpedVRT``); ``indexes`` are
    1-based bands. Windows may cross the edges (rule 1). ``own_env`` wraps each read of a ``/vsis3/``
    path in :func:`raster_env` (training readers, which run in DataLoader workers); readers used inside
    a caller's :func:`raster_env` leave it off, so a thread never opens and closes a GDAL environment.
    """

    def __init__(
        self,
        ds: Any,
        indexes: Sequence[int],
        uri: str,
        *,
        alpha_band: int | None = None,
        own_env: bool = False,
    ) -> None:
        self.ds, self.uri = ds, uri
        self.indexes = [int(b) for b in indexes]
        self.width, self.height = int(ds.width), int(ds.height)
        self.plan = ValidityPlan.for_dataset(ds, self.indexes, alpha_band)
        self.own_env = own_env and on_s3(uri)

    @property
    def dtype(self) -> np.dtype:
        return self.plan.dtype

    def close(self) -> None:
        self.ds.close()

    def read(self, col: int, row: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels and validity of a window; the parts outside the raster are fill values, invalid."""
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + width, self.width), min(row + height, self.height)
        if (c0, r0, c1, r1) == (col, row, col + width, row + height):
            return self._read_inside(col, row, width, height)
        data = np.empty((len(self.indexes), height, width), dtype=self.plan.dtype)
        data[:] = np.asarray(self.plan.fill, dtype=self.plan.dtype)[:, None, None]
        valid = np.zeros((height, width), dtype=bool)
        if c1 > c0 and r1 > r0:
            inner, inner_valid = self._read_inside(c0, r0, c1 - c0, r1 - r0)
            data[:, r0 - row : r1 - row, c0 - col : c1 - col] = inner
            valid[r0 - row : r1 - row, c0 - col : c1 - col] = inner_valid
        return data, valid

    def _read_inside(self, col: int, row: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        window = Window(col, row, width, height)
        plan = self.plan
        try:
            with raster_env(self.uri) if self.own_env else _NO_ENV:
                data = self.ds.read(self.indexes, window=window)
                explicit = plan.mask_bands or plan.alpha_band is not None
                gdal_mask = self._explicit_mask(window) if explicit else None
        except RasterioError as exc:
            raise ValueError(f"{self.uri}: cannot read window {(col, row, width, height)} ({gdal_reason(exc)})"
                             ) from None
        valid, non_finite = _validity(data, plan.nodata, gdal_mask)
        if non_finite is not None:  # NaN/inf -> the band's fill value: tensors and statistics never see them
            for band, value, bad in zip(data, plan.fill, non_finite, strict=True):
                band[bad] = value
        return data, valid

    def _explicit_mask(self, window: Any) -> np.ndarray:
        """(k, h, w) bool: the explicit GDAL masks of the plan's mask bands and its alpha band (rule 4)."""
        plan = self.plan
        masks = [self.ds.read_masks(list(plan.mask_bands), window=window)] if plan.mask_bands else []
        if plan.alpha_band is not None:
            masks.append(self.ds.read([plan.alpha_band], window=window))
        return np.concatenate([m != 0 for m in masks])


@dataclass
class AxisPlan:
    """Window starts along one axis and, per window, the cells it feeds: rows of (cell, lo, hi)."""

    starts: list[int]
    cells: list[np.ndarray]
    n_cells: int


def plan_axis(length: int, tile: int, stride: int, *, edge: str = "shift", cover: str = "pixels") -> AxisPlan:
    """THE window planner: windows of ``tile`` px every ``stride`` px along an axis of ``length`` px.

    Regular windows start at multiples of ``stride`` while they fit (and, with ``cover="cells"``,
    while they start in a whole cell). If that leaves something uncovered, one more window:
    ``edge="shift"`` ends flush with the far edge (overlapping its neighbour, no padding);
    ``edge="pad"`` is the next regular window, running past the edge (a boundless read pads it).

    ``cover="pixels"``: every pixel must lie in a window (:class:`geossl.data.scenes.GridTiles`).
    ``cover="cells"``: every whole ``stride`` px cell (``length // stride`` of them, a partial last one
    is not a map cell) must be fed by a window (classified maps and embeddings). A window feeds the
    cells whose centre lies inside it (at least its own first cell, so a stride larger than the tile
    still gives every cell a window); ``lo, hi`` are the cell's pixel range inside the window.

    A ``length`` smaller than ``tile`` is a ValueError with ``edge="shift"`` (no window fits) and one
    padded window at 0 with ``edge="pad"``.
    """
    if min(length, tile, stride) < 1:
        raise ValueError(f"length, tile and stride must be >= 1, got {length}, {tile} and {stride}")
    if edge not in EDGES or cover not in COVERS:
        raise ValueError(f"edge must be one of {EDGES} and cover one of {COVERS}, got {edge!r} and {cover!r}")
    if length < tile and edge == "shift":
        raise ValueError(
            f"{length} px is smaller than one {tile} px window (pad the edge or use a smaller tile)"
        )
    n_cells = length // stride
    if cover == "cells" and n_cells == 0:
        raise ValueError(f"{length} px holds no whole {stride} px cell (use a smaller stride)")
    starts: list[int] = []
    cells: list[np.ndarray] = []
    covered = np.zeros(n_cells, dtype=bool)

    def add(start: int, ks: np.ndarray) -> None:
        ks = ks[(ks >= 0) & (ks < n_cells)]
        lo = np.clip(ks * stride - start, 0, tile)
        hi = np.clip((ks + 1) * stride - start, 0, tile)
        starts.append(start)
        cells.append(np.stack([ks, lo, hi], axis=1))
        covered[ks] = True

    per_window = max(1, math.ceil(tile / stride - 0.5))
    limit = n_cells if cover == "cells" else math.inf
    j = 0
    while j * stride + tile <= length and j < limit:
        add(j * stride, np.arange(j, j + per_window))
        j += 1
    done = bool(covered.all()) if cover == "cells" else bool(starts) and starts[-1] + tile >= length
    if not done:
        start = length - tile if edge == "shift" else j * stride
        centres = (np.arange(n_cells) + 0.5) * stride
        add(start, np.flatnonzero(((centres >= start) & (centres < min(start + tile, length))) | ~covered))
    return AxisPlan(starts, cells, n_cells)


def axis_plan(length: int, tile: int, stride: int) -> AxisPlan:
    """The plan of classified maps and embeddings: whole cells, last window flush with the edge."""
    return plan_axis(length, tile, stride, edge="shift", cover="cells")
