"""A local data mirror: build the download files of ``geossl data fetch`` from a data root, serve them.

So ``make demo`` can be tried end to end on a fresh clone without the internet::

    .venv/bin/python bench/serve_mirror.py --data ../shared/data --out /tmp/geossl-mirror --port 8765
    # in another shell, from a fresh clone:
    GEOSSL_DATA_MIRROR=http://127.0.0.1:8765 GEOSSL_DATA=/tmp/empty make demo

For each dataset of ``geossl.data.fetch.DATASETS`` it writes what a mirror serves, named as the table
names it (``<mirror>/<Source.name>``): a single-file source is copied; an archive is rebuilt in the
public layout (``EuroSAT.zip`` holds ``2750/<Class>/<file>.jpg``, as torchvision's archive does;
``EuroSATallBands.zip`` holds ``ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<file>.tif``,
as torchgeo's does, here only the files the data root has). The files geossl ships itself (splits.csv,
labels.csv, licences) are left out, as they are of the public archives. A rebuilt archive is not
byte-identical to the public one, which is why fetch checks a mirror's archives by their extracted
content (see geossl/data/fetch.py). Archives are stored (not deflated): JPEG/TIFF gain little, and the
27,000-file zip builds in seconds. Every file is written under a temporary name, then renamed
(geossl.io.atomic_path), and an existing one is kept. The server binds 127.0.0.1 only and honours
HTTP Range requests (so resuming is exercised too).
"""

from __future__ import annotations

import argparse
import http.server
import re
import shutil
import sys
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geossl.data.fetch import DATASETS, Dataset, Source  # noqa: E402
from geossl.io import atomic_path  # noqa: E402


def build_mirror(data: Path, out: Path, names: Iterable[str] = tuple(DATASETS),
                 datasets: dict[str, Dataset] | None = None) -> list[Path]:
    """Write the mirror files of ``names`` (from ``data/<name>``) into ``out``; return their paths."""
    table = datasets or DATASETS
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        ds = table[name]
        folder = data / ds.name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder (the data root must hold {ds.name})")
        shipped = {dest for _, dest in ds.resources}
        for src in ds.sources:
            final = out / src.name
            if not final.exists():
                with atomic_path(final) as tmp:  # a build cut short never leaves a file that looks complete
                    if src.dest:
                        shutil.copyfile(folder / src.dest, tmp)
                    else:
                        _write_zip(folder, src, shipped, tmp)
            written.append(final)
    return written


def _write_zip(folder: Path, src: Source, shipped: set[str], path: Path) -> None:
    """The dataset's files except those geossl ships, under ``src.strip``, in sorted order."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for rel in files:
            if rel not in shipped:
                zf.write(folder / rel, src.strip + rel)


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of the files in ``server.folder``; ``Range: bytes=N-[M]`` answered with 206."""

    server: MirrorServer

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("Range")))
        name = unquote(urlsplit(self.path).path).lstrip("/")
        path = (self.server.folder / name).resolve()
        if not name or path.parent != self.server.folder.resolve() or not path.is_file():
            self.send_error(404, f"{name}: not on this mirror")
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if match:
            start = int(match[1])
            end = min(int(match[2]), size - 1) if match[2] else size - 1
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(206 if match else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if body:
            with open(path, "rb") as fh:
                fh.seek(start)
                self.send_body(fh, end - start + 1)

    def send_body(self, fh: object, length: int) -> None:
        """Write ``length`` bytes of ``fh`` (a hook: tests cut it short to simulate a dropped connection)."""
        remaining = length
        while remaining > 0:
            block = fh.read(min(1 << 20, remaining))  # type: ignore[attr-defined]
            if not block:
                break
            self.wfile.write(block)
            remaining -= len(block)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)


class MirrorServer(http.server.ThreadingHTTPServer):
    """Serves ``folder`` on 127.0.0.1; ``requests`` records (method, path, Range) of every request."""

    daemon_threads = True

    def __init__(self, folder: Path, port: int = 0, handler: type[MirrorHandler] = MirrorHandler,
                 verbose: bool = False) -> None:
        self.folder, self.verbose = Path(folder), verbose
        self.requests: list[tuple[str, str, str | None]] = []
        super().__init__(("127.0.0.1", port), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> MirrorServer:
        threading.Thread(target=self.serve_forever, args=(0.05,), name="mirror", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data root holding the datasets (e.g. ../shared/data)")
    parser.add_argument("--out", required=True, help="folder for the mirror files (kept between runs)")
    parser.add_argument("--names", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--build-only", action="store_true", help="write the files, do not serve")
    args = parser.parse_args(argv)
    for path in build_mirror(Path(args.data), Path(args.out), args.names):
        print(f"{path} ({path.stat().st_size:,} bytes)")
    if args.build_only:
        return 0
    server = MirrorServer(Path(args.out), args.port, verbose=True)
    print(f"serving {args.out} at {server.url} (Ctrl-C stops); try:\n"
          f"  GEOSSL_DATA_MIRROR={server.url} GEOSSL_DATA=/tmp/empty make demo", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
