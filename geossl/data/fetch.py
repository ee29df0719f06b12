"""Fetch the default datasets (``geossl data fetch``): verified, resumable, never half in place.

Why this shape:

* **One table** (:data:`DATASETS`) holds every source URL and checksum, so reviewing what geossl
  downloads means reading one screen. Every function takes a :class:`Dataset` entry, so tests (and
  users with their own data) pass small entries of their own.
* **Two checksums, for two different questions.** ``Source.checksum`` pins the file *as published*
  (the md5/sha256 torchvision/torchgeo publish for the EuroSAT zips; the sha256 of each scene file). It
  is checked whenever that exact file can be expected: always for single files, and for archives when
  they come from the original URL. A mirror may rebuild an archive (other compression, other order, a
  subset), so an archive from a mirror is not held to the published archive checksum. What is always
  checked, wherever the bytes came from, is ``Dataset.content_sha256``: the sha256 of the sorted
  manifest ``"<relative path> <sha256 of the file>\\n"`` of every file that ends up in the dataset folder,
  pinned from the team's copy in ``../shared/data``. So a mirror passes exactly when it yields the
  same files, and a corrupted or altered archive fails, whatever its own checksum.
* **Nothing half-done looks usable.** Downloads go to ``ROOT/.geossl-downloads/NAME.part`` and are
  renamed only once complete (a later run resumes them with an HTTP Range request); a dataset is built
  in ``ROOT/.NAME.partial-*``, verified there, and only then renamed to ``ROOT/NAME``. An interrupted or
  failed fetch leaves hidden names only, which the next run removes. A download that fails its checksum
  is deleted, so the next run starts it afresh rather than resuming garbage.
* **Present and verified = no request.** A dataset folder that is already there is hashed and, when it
  matches, nothing is downloaded (``geossl demo`` only checks that the folder exists: a 10-minute
  demo should not re-hash 27,000 files, and a folder is only ever moved in complete).
* The files geossl ships (``geossl/data/resources``): ``splits.csv`` (the exact train/val/test split of
  the shared copy), the EuroSAT MS ``labels.csv`` (which also names the 820 patches kept of the 27,000 in
  the 2 GB MS archive, so fetch reproduces the shared subset that tests and benchmarks use), and the
  licence/readme texts that sit beside the data. Small, and not downloadable from a stable place.
* A mirror (``--mirror URL`` or ``GEOSSL_DATA_MIRROR``) serves every file as ``<mirror>/<Source.name>``
  (``bench/serve_mirror.py`` builds and serves one from a data root). There is no run-config key for it:
  a mirror is a property of the machine, like ``GEOSSL_DATA``, not of a training run.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import secrets
import shutil
import socket
import stat
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources as importlib_resources
from pathlib import Path

from geossl.settings import data_root

MIRROR_ENV = "GEOSSL_DATA_MIRROR"
DOWNLOADS = ".geossl-downloads"
ATTEMPTS = 4  # a body cut short is resumed (Range) this many times within one run
TIMEOUT_S = 60
CHUNK = 1 << 20
USER_AGENT = "geossl-data-fetch/0.1 (python urllib)"
# Archive limits, checked on the zip's directory before a byte is unpacked (a 1 MB zip can declare 1 GB):
# entries in the directory (EuroSAT.zip and EuroSATallBands.zip hold about 27,000 each) and bytes unpacked
# (EuroSAT RGB unpacks to 93 MB; of EuroSATallBands' 2.9 GB only the 820 listed patches, 88 MB, are). An
# install is also held to its dataset's pinned size: more than that could never match the pinned content.
MAX_ARCHIVE_MEMBERS = 200_000
MAX_UNPACKED_BYTES = 10_000_000_000
WHERE = ("the data root is $GEOSSL_DATA, else ../shared/data beside the checkout, else ./data; "
         f"or set {MIRROR_ENV} to a mirror")


class ChecksumError(ValueError):
    """A download or an extracted dataset is not what the table pins (corrupt, truncated, altered)."""


class DataUnavailableError(RuntimeError):
    """The data is missing and cannot be fetched here (offline, no network, source unreachable)."""


@dataclass(frozen=True)
class Source:
    """One file to download. ``dest`` set: a single file placed at ``dest`` in the dataset folder;
    ``dest`` None: a zip archive whose members under ``strip`` become the dataset's files."""

    name: str  # file name on a mirror (<mirror>/<name>) and in the download folder
    url: str  # the public source
    checksum: str  # "sha256:<hex>" or "md5:<hex>" of the file as published at url
    size: int  # bytes (approximate for archives geossl never stored; used for messages and disk checks)
    dest: str | None = None
    strip: str = ""


@dataclass(frozen=True)
class Dataset:
    name: str  # folder name under the data root
    title: str
    license: str
    sources: tuple[Source, ...]
    files: int  # files in the complete folder
    size: int  # bytes in the complete folder
    content_sha256: str  # sha256 of the sorted "<path> <sha256>\n" manifest (module docstring)
    # (file in geossl/data/resources, its path in the dataset folder); a .gz file is unpacked
    resources: tuple[tuple[str, str], ...] = ()
    subset: str | None = None  # resource CSV whose 'path' column lists the archive members kept; None = all


_EUROSAT_LICENSE = ("eurosat_LICENSE.txt", "LICENSE.txt")
_OPENGEOS = "https://raw.githubusercontent.com/opengeos/data/main/"
# The time series of opengeos/data (naip/m_4709963_se_14_1_<date>.tif, landsat/<year>.tif): (date, sha256,
# bytes) pinned from the team's copy in ../shared/data/timeseries, which holds byte-identical copies.
_NAIP_DATES = (
    ("20090818", "568f0d3dc3118d6df63510361db6c627b81541ad4c65122caf54e18030fc7100", 2_641_535),
    ("20120731", "695ff3bef666f84b9d8bee8292c21be1edf5fbd52b0db839a40a949403799dc4", 2_746_404),
    ("20140720", "cbb65d34c3f8ad566800677d1f0ba15b221305e46b9873ddb20b5fc922ab6104", 2_566_645),
    ("20150926", "e2f4898eaada52f53a0cf7920836a4ff42e41a05357c0f082cfbfcb048b21b9d", 2_383_135),
    ("20160816", "6e60094af5a5b605178277831a0bb5e28650ef4729cb5eb91ac94ec5643462b4", 2_580_135),
    ("20170827", "d1138bef2d496ed4ff731f48def08e0695e326aeb55dc291ebb9b415e7bda2f8", 2_621_014),
    ("20180716", "599bb9bb7f78e9a1f3e0e712290e6423e2f513c69afc00a18ff586a6fcd4aba7", 2_397_090),
    ("20190904", "bfa915b54ad6e4e4fe60ad6afdd9115ff5d00c363d4d1ccfaaa33ebb3cad2df2", 2_526_050),  # = scenes' NAIP
    ("20200831", "e8eb18475678d16a98a44f28b1c777fd0b2c56e9c8afed302a5e071e2e237f90", 2_487_763),
)
_LANDSAT_YEARS = (
    ("1985", "32676315c2a365776fac49e549377ea3f36345b645dacfab074ca51c4bdce13a", 828_125),
    ("1990", "7d09817f9124affc7ab3d6ba0bb2d28761f324dd8308e660f89608a5e2b184c0", 848_612),
    ("1995", "f7f4cdf6148f721eefc8075b8061974833c309292b20cc23700a61adf90e827d", 896_780),
    ("2000", "63a35f6f01c37b01831b9cf01c919ce03b1410bdce7526aabdfbfd26be960a8d", 849_316),
    ("2005", "8f001015fa89aa3da952e293234e9f6cd6042799425ddb8980a69489b86ead16", 887_023),
    ("2010", "987f401ab4708cb3ed2c70d6e39ec0a859df112a35f9df04663a80106f74cebc", 898_511),
    ("2015", "974f1865cc07b9012bc9dfbde3ba9282aa4f9611ee8c683269e2c5066f655c2a", 856_811),
)
# Mirror names stay flat and unique: NAIP files keep their own names, Landsat years get a prefix.
_TIMESERIES_SOURCES = tuple(
    Source(f"m_4709963_se_14_1_{d}.tif", f"{_OPENGEOS}naip/m_4709963_se_14_1_{d}.tif", f"sha256:{h}", n,
           dest=f"naip_north_dakota/m_4709963_se_14_1_{d}.tif") for d, h, n in _NAIP_DATES
) + tuple(
    Source(f"landsat_pucallpa_{y}.tif", f"{_OPENGEOS}landsat/{y}.tif", f"sha256:{h}", n,
           dest=f"landsat_pucallpa/{y}.tif") for y, h, n in _LANDSAT_YEARS
)
DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset(
        "eurosat-rgb", "EuroSAT RGB: 27,000 Sentinel-2 JPEG patches, 64x64, 10 classes, splits.csv",
        "MIT (Helber et al., github.com/phelber/EuroSAT)",
        # URL and md5: torchvision/datasets/eurosat.py (EuroSAT.download); the zip holds 2750/<Class>/*.jpg.
        (Source("EuroSAT.zip", "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                "md5:c8fa014336c82ac7804f0398fcb19387", 94_000_000, strip="2750/"),),
        files=27_002, size=93_128_159,
        content_sha256="2275ec489263a3aeeb4f8be54f9e2c8d05696a8042ffe5b9a6b75dc9b5bf11b3",
        resources=(("eurosat_rgb_splits.csv.gz", "splits.csv"), _EUROSAT_LICENSE),
    ),
    Dataset(
        "eurosat-ms", "EuroSAT MS subset: 820 13-band GeoTIFF patches (B8A last), labels.csv",
        "MIT (Helber et al., github.com/phelber/EuroSAT)",
        # URL and sha256: torchgeo/datasets/eurosat.py (EuroSAT.url + filename, sha256, base_dir). The
        # archive holds all 27,000 patches (about 2 GB); the 820 listed in labels.csv are kept.
        (Source("EuroSATallBands.zip", "https://hf.co/datasets/torchgeo/eurosat/resolve/"
                "1ce6f1bfb56db63fd91b6ecc466ea67f2509774c/EuroSATallBands.zip",
                "sha256:751f070f9bffa2eed48b24ca2dd0b02959280c08837e8c9a5532a67ba611df59", 2_070_000_000,
                strip="ds/images/remote_sensing/otherDatasets/sentinel_2/tif/"),),
        files=822, size=87_975_473,
        content_sha256="1a725e365cfc2aa50cddff1091bd27ad85840f25044a80946d1527ac610fe37d",
        resources=(("eurosat_ms_labels.csv.gz", "labels.csv"), _EUROSAT_LICENSE),
        subset="eurosat_ms_labels.csv.gz",
    ),
    Dataset(
        "scenes", "3 sample scenes: NAIP 4-band uint8, Sentinel-2-like 4-band float64 COG, Landsat 7 RGB",
        "MIT (opengeos data; NAIP public domain, Copernicus data); CC0 (rasterio test data)",
        (
            # opengeos/data on GitHub, naip/ (North Dakota quarter quad 4709963 SE, 2019, EPSG:26914).
            Source("naip_5m_north_dakota_2019.tif", "https://raw.githubusercontent.com/opengeos/data/main/"
                   "naip/m_4709963_se_14_1_20190904.tif",
                   "sha256:bfa915b54ad6e4e4fe60ad6afdd9115ff5d00c363d4d1ccfaaa33ebb3cad2df2", 2_526_050,
                   dest="naip_5m_north_dakota_2019.tif"),
            # opengeos (data raster/cog.tif, the 4-band sample COG of the opengeos tutorials; it moved there
            # from leafmap examples/data/cog.tif, byte-identical: the same sha256 pin).
            # Reported byte-identical to the shared copy (#23); the sha256 pin checks it on every fetch.
            Source("s2_like_10m_netherlands_cog.tif", "https://raw.githubusercontent.com/opengeos/data/"
                   "main/raster/cog.tif",
                   "sha256:bfee1e6483fd3fa8754102d3022c253cfdc88bf72ee725e5cffc09c8d4061adb", 610_612,
                   dest="s2_like_10m_netherlands_cog.tif"),
            # rasterio's test data: tests/data/RGB.byte.tif (Landsat 7 ETM+, CC0).
            Source("landsat7_300m_RGB.byte.tif", "https://raw.githubusercontent.com/rasterio/rasterio/main/"
                   "tests/data/RGB.byte.tif",
                   "sha256:d7cbe932c7ed74a627706a9e9df99f706df3e5abc7d45a49e9d00677a6b09eb4", 1_745_956,
                   dest="landsat7_300m_RGB.byte.tif"),
        ),
        files=6, size=4_885_669,
        content_sha256="07804472849f29c9ae8540179b5f90744356c0aafcd570d7462973ff08c6c489",
        resources=tuple((f"scenes_{n}", n) for n in (
            "LICENSE_opengeos_data_MIT.txt", "LICENSE_rasterio_BSD.txt", "README_rasterio_testdata.rst")),
    ),
    Dataset(
        "timeseries", "2 time series for change maps: NAIP North Dakota (9 dates 2009-2020, 4-band uint8, 5 m), "
        "Landsat Pucallpa (7 dates 1985-2015, 4-band uint8, ~90 m)",
        "MIT (opengeos data; NAIP public domain, Landsat USGS public domain)",
        _TIMESERIES_SOURCES,
        files=18, size=29_016_199,
        content_sha256="8f5bc693522399ccdfe963de7b6107417a46e8e1631ee2d79bae0731c02334ef",
        resources=(("scenes_LICENSE_opengeos_data_MIT.txt", "LICENSE_opengeos_data_MIT.txt"),
                   ("timeseries_landsat_README_source.md", "landsat_pucallpa/README_source.md")),
    ),
)}


def mirror_setting(mirror: str | None = None) -> str | None:
    """``--mirror`` wins over ``GEOSSL_DATA_MIRROR``; empty means none."""
    return (mirror or os.environ.get(MIRROR_ENV) or "").strip() or None


def human(n: float) -> str:
    """Decimal units, as tqdm shows them: ``94000000`` -> ``"94.0 MB"``."""
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def download_size(ds: Dataset) -> int:
    return sum(s.size for s in ds.sources)


def content_digest(folder: Path) -> tuple[int, int, str]:
    """(files, bytes, sha256 of the sorted ``"<relative path> <sha256>\\n"`` manifest) of ``folder``."""
    lines, total = [], 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            total += path.stat().st_size
            lines.append(f"{path.relative_to(folder).as_posix()} {file_hash(path, 'sha256')}\n")
    return len(lines), total, hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify_dataset(folder: Path, ds: Dataset) -> None:
    """Raise :class:`ChecksumError` unless ``folder`` holds exactly the pinned content of ``ds``."""
    files, size, digest = content_digest(folder)
    if digest != ds.content_sha256:
        raise ChecksumError(f"{folder}: content does not match the pinned checksum of {ds.name} ({files:,} "
                            f"files, {size:,} bytes; expected {ds.files:,} files, {ds.size:,} bytes)")


def resource_bytes(name: str) -> bytes:
    data = importlib_resources.files("geossl.data").joinpath("resources", name).read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


def fetch(names: Iterable[str], root: str | os.PathLike[str] | None = None, *, mirror: str | None = None,
          offline: bool = False, force: bool = False, progress: bool = True) -> list[str]:
    """Fetch the named datasets of :data:`DATASETS` into ``root`` (default: the data root); one line each."""
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset {', '.join(unknown)} (known: {', '.join(DATASETS)})")
    base = Path(root) if root else data_root()
    return [fetch_dataset(DATASETS[n], base, mirror=mirror, offline=offline, force=force, progress=progress)
            for n in names]


def fetch_missing(names: Iterable[str], root: Path, *, offline: bool = False, mirror: str | None = None,
                  say: Callable[[str], None] = print) -> None:
    """Fetch the datasets whose folder is absent (``geossl demo``): say what and how large first."""
    todo = [DATASETS[n] for n in names if not (root / n).is_dir()]
    if not todo:
        return
    if not offline:
        what = ", ".join(f"{d.name} ({d.title}; download about {human(download_size(d))})" for d in todo)
        say(f"fetching {what} into {root}")
    for ds in todo:
        say(fetch_dataset(ds, root, mirror=mirror, offline=offline))


def fetch_dataset(ds: Dataset, root: Path, *, mirror: str | None = None, offline: bool = False,
                  force: bool = False, progress: bool = True) -> str:
    """Make ``root/ds.name`` hold exactly ``ds``'s pinned content; return one line saying what was done."""
    target = root / ds.name
    if target.exists() and not force:
        try:
            verify_dataset(target, ds)  # present: verified, and no request made
        except ChecksumError as exc:
            raise ChecksumError(f"{exc}; move it away or pass --force to replace it with a fresh copy") \
                from None
        return f"{ds.name}: present and verified in {target} ({ds.files:,} files)"
    if offline:
        raise DataUnavailableError(f"{ds.name} is missing from {root} and fetching is off (--offline): "
                                   f"put the {ds.name} folder at {target} ({WHERE})")
    mirror = mirror_setting(mirror)
    try:
        _install(ds, root, mirror, progress)
    except DataUnavailableError as exc:
        raise DataUnavailableError(f"{ds.name} is missing from {root} and {exc}: put the {ds.name} folder at "
                                   f"{target} ({WHERE})") from None
    return f"{ds.name}: fetched and verified -> {target} ({ds.files:,} files, {human(ds.size)})"


def _install(ds: Dataset, root: Path, mirror: str | None, progress: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cache = root / DOWNLOADS
    for stale in root.glob(f".{ds.name}.partial-*"):  # left by an interrupted run: never looked usable
        shutil.rmtree(stale, ignore_errors=True)
    need = ds.size + sum(s.size for s in ds.sources if not (cache / s.name).exists())
    free = shutil.disk_usage(root).free
    if free < need:
        raise OSError(f"{root}: {human(free)} free, fetching {ds.name} needs about {human(need)}")
    tmp = root / f".{ds.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # not mkdtemp: its 0700 would become the dataset folder's mode
    try:
        subset = _subset(ds)
        for src in ds.sources:
            path = download(src, cache, mirror, progress)
            try:
                if src.dest:
                    (tmp / src.dest).parent.mkdir(parents=True, exist_ok=True)  # time series: one folder each
                    shutil.copyfile(path, tmp / src.dest)
                else:
                    extract(path, src, tmp, subset, progress, max_bytes=ds.size)
            except ChecksumError:
                path.unlink(missing_ok=True)
                raise
        for resource, dest in ds.resources:
            (tmp / dest).parent.mkdir(parents=True, exist_ok=True)
            (tmp / dest).write_bytes(resource_bytes(resource))
        try:
            verify_dataset(tmp, ds)
        except ChecksumError as exc:  # the downloads made it: delete them so a rerun fetches afresh
            for src in ds.sources:
                (cache / src.name).unlink(missing_ok=True)
            raise ChecksumError(f"{exc} (from {mirror or 'the public sources'}; downloads deleted)") from None
        _move_into_place(tmp, root / ds.name)
        for src in ds.sources:
            (cache / src.name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if cache.is_dir() and not any(cache.iterdir()):
            cache.rmdir()


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the verified folder into place; an old folder (``--force``) is set aside first, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.partial-old-{os.getpid()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _subset(ds: Dataset) -> set[str] | None:
    if ds.subset is None:
        return None
    rows = resource_bytes(ds.subset).decode("utf-8").splitlines()
    column = rows[0].split(",").index("path")
    return {row.split(",")[column] for row in rows[1:] if row.strip()}


def download(src: Source, cache: Path, mirror: str | None, progress: bool = True) -> Path:
    """``cache/src.name``, complete and (when it must match the published file) checksummed.

    Resumes ``NAME.part`` from an earlier run, and within this run when the body is cut short."""
    url = f"{mirror.rstrip('/')}/{src.name}" if mirror else src.url
    check = src.dest is not None or not mirror  # a mirror may rebuild archives: their content is checked
    final, part = cache / src.name, cache / f"{src.name}.part"
    if final.exists():
        if not check or _matches(final, src.checksum):
            return final
        final.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    for _ in range(ATTEMPTS):
        if _get(url, part, src.name, progress):
            break
    else:
        raise RuntimeError(f"{url}: the download kept breaking off ({ATTEMPTS} attempts); run the same "
                           f"command again to resume {part}")
    if check and not _matches(part, src.checksum):
        part.unlink()
        raise ChecksumError(f"{url}: checksum mismatch (expected {src.checksum}); the download was deleted, "
                            "run again to fetch it afresh")
    part.rename(final)
    return final


def _matches(path: Path, checksum: str) -> bool:
    algorithm, _, expected = checksum.partition(":")
    return file_hash(path, algorithm) == expected


def _get(url: str, part: Path, label: str, progress: bool) -> bool:
    """One HTTP GET into ``part`` (Range from its size); True when the file is complete."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is not a prefix of this one: start over
            part.unlink()
            return False
        raise RuntimeError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DataUnavailableError(f"{url} cannot be reached ({_reason(exc.reason)})") from None
    except (TimeoutError, ConnectionError) as exc:
        raise DataUnavailableError(f"{url} cannot be reached ({_reason(exc)})") from None
    total: int | None
    with resp:
        resumed = resp.status == 206
        if resumed:
            content_range = resp.headers.get("Content-Range") or ""
            if not content_range.startswith(f"bytes {have}-"):  # not the part asked for: start over
                part.unlink(missing_ok=True)
                return False
            total = int(content_range.rpartition("/")[2])
        else:  # a full body (a server without Range support, or a fresh start)
            have, length = 0, resp.headers.get("Content-Length")
            total = int(length) if length else None
        with open(part, "ab" if resumed else "wb") as fh, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1000, desc=label,
                disable=not progress, file=sys.stderr, leave=False) as bar:
            try:
                while block := resp.read(CHUNK):
                    fh.write(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
                if isinstance(exc, http.client.IncompleteRead) and exc.partial:
                    fh.write(exc.partial)
            fh.flush()
            os.fsync(fh.fileno())
    size = part.stat().st_size
    if total is not None and size > total:
        part.unlink()
        return False
    return total is None or size == total


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "DNS lookup failed: no network?"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason)


def extract(archive: Path, src: Source, dest: Path, subset: set[str] | None, progress: bool = True,
            max_bytes: int | None = None) -> None:
    """The zip's members under ``src.strip`` (those in ``subset`` when given) -> ``dest``, paths checked.

    Everything is checked on the zip's directory before anything is unpacked, because a mirror's archive
    is only verified by its content, which needs it unpacked: at most :data:`MAX_ARCHIVE_MEMBERS` entries,
    at most :data:`MAX_UNPACKED_BYTES` (and ``max_bytes``, the dataset's size) to unpack, no symlink, no
    path outside ``dest``. The declared sizes are a true bound: zipfile stops a member at its declared
    size and fails its CRC if the data runs on."""
    from tqdm import tqdm

    limit = MAX_UNPACKED_BYTES if max_bytes is None else min(MAX_UNPACKED_BYTES, max_bytes)
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = zf.infolist()
            if len(entries) > MAX_ARCHIVE_MEMBERS:
                raise ChecksumError(f"{archive}: {len(entries):,} entries, more than the {MAX_ARCHIVE_MEMBERS:,} "
                                    "allowed (geossl.data.fetch.MAX_ARCHIVE_MEMBERS); nothing was unpacked")
            members = {}
            for info in entries:
                rel = info.filename[len(src.strip):]
                if info.is_dir() or not info.filename.startswith(src.strip):
                    continue
                if subset is not None and rel not in subset:
                    continue
                if (rel.startswith("/") or "\\" in rel or ".." in rel.split("/")
                        or not (root / rel).resolve().is_relative_to(root)):
                    raise ChecksumError(f"{archive}: unsafe member path {info.filename!r}")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise ChecksumError(f"{archive}: member {info.filename!r} is a symbolic link; datasets hold "
                                        "only regular files")
                members[rel] = info
            if subset is not None and len(members) < len(subset):
                absent = sorted(subset - members.keys())
                raise ChecksumError(f"{archive}: {len(absent)} of the {len(subset)} listed files are not in "
                                    f"the archive under {src.strip!r} (e.g. {absent[0]})")
            total = sum(info.file_size for info in members.values())
            if total > limit:
                why = (f"the whole dataset is {max_bytes:,} bytes" if limit == max_bytes
                       else "geossl.data.fetch.MAX_UNPACKED_BYTES")
                raise ChecksumError(f"{archive}: would unpack {total:,} bytes, more than the {limit:,} allowed "
                                    f"({why}); nothing was unpacked")
            for rel, info in tqdm(members.items(), desc=f"extracting {src.name}", unit=" files",
                                  disable=not progress, file=sys.stderr, leave=False):
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as reader, open(out, "wb") as writer:
                    shutil.copyfileobj(reader, writer, CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ChecksumError(f"{archive}: not a valid zip archive ({exc}); deleted, run again to fetch it "
                            "afresh") from None
