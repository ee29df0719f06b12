"""``geossl data``: fetch the default datasets (verified, resumable) and list what is where.

Only the standard library is imported here (help stays instant); the work is in :mod:`geossl.data.fetch`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geossl.data.fetch import (
    DATASETS,
    MIRROR_ENV,
    download_size,
    fetch,
    human,
    mirror_setting,
    verify_dataset,
)
from geossl.settings import data_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    names = ", ".join(DATASETS)
    root_help = "data root (default: $GEOSSL_DATA, else ../shared/data beside the checkout, else ./data)"
    f = sub.add_parser("fetch", help=f"download, verify and unpack datasets ({names})",
                       description="Download (resuming partial files), check the pinned checksums, unpack "
                                   "into a temporary folder and move it into place only when complete. A "
                                   "dataset already present is verified and nothing is downloaded.")
    f.add_argument("names", nargs="+", choices=list(DATASETS), metavar="NAME",
                   help=f"one or more of: {names}")
    f.add_argument("--root", default=None, help=root_help)
    f.add_argument("--offline", action="store_true", help="never download: verify what is present, else fail")
    f.add_argument("--mirror", default=None,
                   help=f"fetch every file as MIRROR/<file name> (default: ${MIRROR_ENV}, "
                        "else the public sources)")
    f.add_argument("--force", action="store_true", help="replace a present dataset that does not verify")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    ls = sub.add_parser("list", help="datasets: size, source, licence and whether present",
                        description="The datasets geossl can fetch, their sources and licences, and what "
                                    "the data root holds.")
    ls.add_argument("--root", default=None, help=root_help)
    ls.add_argument("--verify", action="store_true",
                    help="hash present datasets against the pinned checksums")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else data_root()
    if args.action == "fetch":
        for line in fetch(args.names, root, mirror=args.mirror, offline=args.offline, force=args.force,
                          progress=not args.no_progress):
            print(line)
        return 0
    mirror = mirror_setting()
    print(f"data root: {root}" + (f"; mirror: {mirror}" if mirror else ""))
    for ds in DATASETS.values():
        state = "missing"
        if (root / ds.name).is_dir():
            state = "present"
            if args.verify:
                try:
                    verify_dataset(root / ds.name, ds)
                    state = "present, verified"
                except ValueError as exc:
                    state = f"present, NOT verified: {exc}"
        print(f"{ds.name}: {state}\n  {ds.title}\n  {ds.files:,} files, {human(ds.size)} in place; "
              f"download about {human(download_size(ds))}\n  licence: {ds.license}")
        for src in ds.sources:
            print(f"  source: {src.name} <- {src.url}")
    sys.stdout.flush()
    return 0
