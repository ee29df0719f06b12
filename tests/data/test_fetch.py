"""geossl.data.fetch on small synthetic datasets served by a local HTTP server (127.0.0.1 only).

Clean fetch, resume (a cut-short body; a .part left by an earlier run; a server without Range), a
corrupted archive (nothing left in place), already complete (no request), offline and unreachable
sources (one line saying where to put the data). Any connection to another address fails the test.
The real scenes, the CLI, the demo and bench/serve_mirror.py are in test_fetch_mirror.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.serve_mirror import MirrorHandler, MirrorServer
from geossl.data import fetch as F

LICENSE = ("eurosat_LICENSE.txt", "LICENSE.txt")


@pytest.fixture(autouse=True)
def local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly (AssertionError, which no fetch code catches) on any address but 127.0.0.1."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":  # type: ignore[index]
            raise AssertionError(f"a test tried to connect to {address}; only 127.0.0.1 is allowed")
        return real_connect(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a test tried to resolve {host!r}; only 127.0.0.1 is allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.delenv(F.MIRROR_ENV, raising=False)


@contextlib.contextmanager
def servers(folder: Path) -> Iterator[Callable[..., MirrorServer]]:
    """``start(handler=MirrorHandler)`` -> a started server on 127.0.0.1 for ``folder``; all stopped after."""
    started: list[MirrorServer] = []

    def start(handler: type[MirrorHandler] = MirrorHandler) -> MirrorServer:
        folder.mkdir(exist_ok=True)
        started.append(MirrorServer(folder, handler=handler).start())
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Callable[..., MirrorServer]]:
    with servers(tmp_path / "mirror") as start:
        yield start


def tiny_files(seed: int = 0) -> dict[str, bytes]:
    """A few class folders of incompressible bytes (~300 KB, so a cut-short body is cut mid-file)."""
    return {f"{c}/{c}_{i}.jpg": hashlib.shake_256(f"{seed}{c}{i}".encode()).digest(40_000 + 1000 * i)
            for c in ("Forest", "River") for i in range(1, 5)}


def make_dataset(server: MirrorServer, files: dict[str, bytes] | None = None, archive: bytes | None = None,
                 checksum: str | None = None, name: str = "tiny") -> F.Dataset:
    """Write ``tiny.zip`` (``2750/<Class>/...``) to the server's folder; return its pinned table entry.

    ``archive`` replaces the zip served (a corrupt one) while the pins stay those of ``files``."""
    files = files or tiny_files()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel, data in files.items():
            zf.writestr("2750/" + rel, data)
    good = buf.getvalue()
    (server.folder / "tiny.zip").write_bytes(archive if archive is not None else good)
    expected = server.folder.parent / "expected" / name  # the folder a fetch must produce
    for rel, data in {**files, LICENSE[1]: F.resource_bytes(LICENSE[0])}.items():
        (expected / rel).parent.mkdir(parents=True, exist_ok=True)
        (expected / rel).write_bytes(data)
    n, size, digest = F.content_digest(expected)
    checksum = checksum or f"sha256:{hashlib.sha256(good).hexdigest()}"
    source = F.Source("tiny.zip", f"{server.url}/tiny.zip", checksum, len(good), strip="2750/")
    return F.Dataset(name, "tiny test set", "MIT", (source,), n, size, digest, resources=(LICENSE,))


def leftovers(root: Path) -> list[str]:
    """Hidden work files a failed or finished fetch must not leave behind (downloads aside)."""
    return sorted(p.name for p in root.glob(".*partial*"))


def assert_same_tree(got: Path, expected: Path) -> None:
    assert F.content_digest(got) == F.content_digest(expected)


def test_clean_fetch_through_the_mirror_setting(serve, tmp_path, monkeypatch):
    server = serve()
    ds = make_dataset(server)
    monkeypatch.setenv(F.MIRROR_ENV, server.url)  # every file as <mirror>/<name>
    root = tmp_path / "data"
    line = F.fetch_dataset(ds, root, progress=False)
    assert line.startswith(f"tiny: fetched and verified -> {root / 'tiny'}")
    assert_same_tree(root / "tiny", tmp_path / "expected" / "tiny")
    assert (root / "tiny" / "LICENSE.txt").read_bytes() == F.resource_bytes("eurosat_LICENSE.txt")
    assert [(m, p) for m, p, _ in server.requests] == [("GET", "/tiny.zip")]
    assert leftovers(root) == [] and not (root / F.DOWNLOADS).exists()  # download removed once in place


def test_clean_fetch_from_the_original_url_checks_the_archive_checksum(serve, tmp_path):
    server = serve()
    ds = make_dataset(server)
    F.fetch_dataset(ds, tmp_path / "data", progress=False)  # no mirror: Source.url, checksum verified
    assert_same_tree(tmp_path / "data" / "tiny", tmp_path / "expected" / "tiny")
    bad = make_dataset(server, checksum="md5:" + "0" * 32, name="tiny2")
    with pytest.raises(F.ChecksumError, match=r"tiny\.zip: checksum mismatch \(expected md5:0+\)"):
        F.fetch_dataset(bad, tmp_path / "data2", progress=False)
    assert not (tmp_path / "data2" / "tiny2").exists() and leftovers(tmp_path / "data2") == []
    assert not (tmp_path / "data2" / F.DOWNLOADS).exists()  # the bad download was deleted


class CutFirstBody(MirrorHandler):
    """The first response promises the whole file but sends a third of it, then drops the connection."""

    def send_body(self, fh, length):
        if not getattr(self.server, "cut_done", False):
            self.server.cut_done = True
            self.wfile.write(fh.read(length // 3))
            self.close_connection = True
            return
        super().send_body(fh, length)


def test_a_body_cut_short_is_resumed_with_a_range_request(serve, tmp_path):
    server = serve(CutFirstBody)
    ds = make_dataset(server)
    F.fetch_dataset(ds, tmp_path / "data", mirror=server.url, progress=False)
    assert_same_tree(tmp_path / "data" / "tiny", tmp_path / "expected" / "tiny")
    (first, second) = server.requests
    size = ds.sources[0].size
    assert first[2] is None and second[2] == f"bytes={size // 3}-"  # asked for the rest only


def test_a_partial_file_from_an_earlier_run_is_resumed(serve, tmp_path):
    server = serve()
    ds = make_dataset(server)
    part = tmp_path / "data" / F.DOWNLOADS / "tiny.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes((server.folder / "tiny.zip").read_bytes()[:100_000])  # an interrupted download
    F.fetch_dataset(ds, tmp_path / "data", progress=False)  # from the original URL: archive checksum holds
    assert server.requests == [("GET", "/tiny.zip", "bytes=100000-")]
    assert_same_tree(tmp_path / "data" / "tiny", tmp_path / "expected" / "tiny")


class NoRanges(MirrorHandler):
    def _serve(self, body):
        del self.headers["Range"]
        super()._serve(body)


def test_a_server_without_range_support_restarts_the_file(serve, tmp_path):
    server = serve(NoRanges)
    ds = make_dataset(server)
    part = tmp_path / "data" / F.DOWNLOADS / "tiny.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 5000)  # not even a prefix of the file: a 200 answer must overwrite it
    F.fetch_dataset(ds, tmp_path / "data", progress=False)
    assert len(server.requests) == 1
    assert_same_tree(tmp_path / "data" / "tiny", tmp_path / "expected" / "tiny")


@pytest.mark.parametrize("damage", ["altered file", "flipped bytes", "truncated"])
def test_a_corrupted_archive_fails_and_leaves_nothing_in_place(serve, tmp_path, damage):
    server = serve()
    files = tiny_files()
    if damage == "altered file":  # a valid zip whose content is not the pinned one
        altered = {**files, "River/River_2.jpg": files["River/River_2.jpg"][:-1] + b"!"}
        make_dataset(server, altered, name="altered")
        archive = (server.folder / "tiny.zip").read_bytes()
    else:
        make_dataset(server, files, name="good")
        good = (server.folder / "tiny.zip").read_bytes()
        archive = good[:30_000] + bytes(b ^ 0xFF for b in good[30_000:30_100]) + good[30_100:]
        archive = archive if damage == "flipped bytes" else good[: len(good) // 2]
    ds = make_dataset(server, files, archive=archive)
    root = tmp_path / "data"
    expected = "content does not match" if damage == "altered file" else "not a valid zip archive"
    with pytest.raises(F.ChecksumError, match=expected):  # from a mirror: no archive checksum to catch it
        F.fetch_dataset(ds, root, mirror=server.url, progress=False)
    assert not (root / "tiny").exists() and leftovers(root) == []
    assert not (root / F.DOWNLOADS / "tiny.zip").exists()  # deleted: the next run fetches afresh


def test_already_complete_makes_no_request_and_a_modified_copy_is_refused(serve, tmp_path):
    server = serve()
    ds = make_dataset(server)
    root = tmp_path / "data"
    F.fetch_dataset(ds, root, mirror=server.url, progress=False)
    n = len(server.requests)
    line = F.fetch_dataset(ds, root, mirror=server.url, progress=False)
    assert line == f"tiny: present and verified in {root / 'tiny'} ({ds.files:,} files)"
    assert len(server.requests) == n  # no request made
    (root / "tiny" / "Forest" / "Forest_1.jpg").write_bytes(b"edited")
    with pytest.raises(F.ChecksumError, match=r"tiny: content does not match .* pass --force"):
        F.fetch_dataset(ds, root, mirror=server.url, progress=False)
    assert len(server.requests) == n
    F.fetch_dataset(ds, root, mirror=server.url, force=True, progress=False)  # a fresh copy replaces it
    assert_same_tree(root / "tiny", tmp_path / "expected" / "tiny")
    assert leftovers(root) == []


def test_offline_gives_one_line_saying_where_to_put_the_data(serve, tmp_path):
    server = serve()
    ds = make_dataset(server)
    with pytest.raises(F.DataUnavailableError) as exc:
        F.fetch_dataset(ds, tmp_path / "data", mirror=server.url, offline=True)
    message = str(exc.value)
    assert "\n" not in message and server.requests == []
    assert f"tiny is missing from {tmp_path / 'data'} and fetching is off (--offline)" in message
    assert f"put the tiny folder at {tmp_path / 'data' / 'tiny'}" in message
    assert "$GEOSSL_DATA" in message and F.MIRROR_ENV in message


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_gives_the_same_one_line(serve, tmp_path, monkeypatch):
    server = serve()
    ds = make_dataset(server)
    url = f"http://127.0.0.1:{closed_port()}"
    expected = rf"{url}/tiny\.zip cannot be reached \(connection refused\): put the tiny .*{F.MIRROR_ENV}"
    with pytest.raises(F.DataUnavailableError, match=expected) as exc:
        F.fetch_dataset(ds, tmp_path / "data", mirror=url, progress=False)
    assert "\n" not in str(exc.value) and not (tmp_path / "data" / "tiny").exists()

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(F.DataUnavailableError, match=r"reached \(DNS lookup failed: no network\?\)"):
        F.fetch_dataset(ds, tmp_path / "data", mirror="http://mirror.invalid", progress=False)


def test_http_errors_name_the_url(serve, tmp_path):
    server = serve()
    ds = make_dataset(server)
    (server.folder / "tiny.zip").unlink()
    with pytest.raises(RuntimeError, match=rf"{server.url}/tiny\.zip: HTTP 404"):
        F.fetch_dataset(ds, tmp_path / "data", mirror=server.url + "/", progress=False)


def test_fetch_missing_says_what_and_how_large_then_only_fetches_what_is_absent(serve, tmp_path, monkeypatch):
    server = serve()
    ds = make_dataset(server)
    monkeypatch.setitem(F.DATASETS, "tiny", ds)
    monkeypatch.setenv(F.MIRROR_ENV, server.url)
    said: list[str] = []
    F.fetch_missing(["tiny"], tmp_path / "data", say=said.append)
    size = F.human(ds.sources[0].size)
    assert said[0] == f"fetching tiny (tiny test set; download about {size}) into {tmp_path / 'data'}"
    assert said[1].startswith("tiny: fetched and verified")
    F.fetch_missing(["tiny"], tmp_path / "data", say=said.append)
    assert len(said) == 2 and len(server.requests) == 1  # present: nothing said, nothing requested


def test_extract_keeps_the_listed_subset_and_refuses_unsafe_paths(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for rel in ("A/A_1.tif", "A/A_2.tif", "B/B_1.tif"):
            zf.writestr("ds/tif/" + rel, rel)
        zf.writestr("other/ignored.txt", "outside the prefix")
    src = F.Source("a.zip", "http://127.0.0.1/a.zip", "sha256:0", 0, strip="ds/tif/")
    F.extract(archive, src, tmp_path / "out", {"A/A_2.tif", "B/B_1.tif"}, progress=False)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.tif")) == [
        "A/A_2.tif", "B/B_1.tif"]
    with pytest.raises(F.ChecksumError, match=r"1 of the 2 listed files are not in the archive .*C/C_1\.tif"):
        F.extract(archive, src, tmp_path / "out2", {"A/A_1.tif", "C/C_1.tif"}, progress=False)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("ds/tif/../../evil.txt", "escape")
    with pytest.raises(F.ChecksumError, match="unsafe member path"):
        F.extract(archive, src, tmp_path / "out3", None, progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_a_zip_bomb_from_a_mirror_is_refused_before_anything_is_unpacked(serve, tmp_path, monkeypatch):
    """A mirror's archive is verified by its content, so it used to be unpacked first: a small zip of
    zeros unpacked in full before the content check refused it (#23). Its directory already says how
    much it would unpack: more than the whole pinned dataset is refused, nothing is opened."""
    server = serve()
    files = tiny_files()
    make_dataset(server, files, name="good")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, data in files.items():
            zf.writestr("2750/" + rel, data)
        zf.writestr("2750/Forest/Forest_99.jpg", bytes(20_000_000))  # 20 MB of zeros, about 20 KB zipped
    bomb = buf.getvalue()
    assert len(bomb) < 400_000
    ds = make_dataset(server, files, archive=bomb)

    def no_unpacking(*args, **kwargs):
        raise AssertionError("a member was opened for unpacking")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_unpacking)
    root = tmp_path / "data"
    with pytest.raises(F.ChecksumError, match=rf"would unpack 20,[0-9,]+ bytes, more than the {ds.size:,} allowed "
                                              rf"\(the whole dataset is {ds.size:,} bytes\); nothing was unpacked"):
        F.fetch_dataset(ds, root, mirror=server.url, progress=False)
    assert not (root / "tiny").exists() and leftovers(root) == []
    assert not (root / F.DOWNLOADS / "tiny.zip").exists()  # deleted: the next run fetches afresh


def test_extract_caps_entries_and_bytes_and_refuses_links_and_escapes(tmp_path, monkeypatch):
    import stat

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for rel in ("A/A_1.tif", "A/A_2.tif", "B/B_1.tif"):
            zf.writestr("ds/" + rel, "0123456789")
    src = F.Source("a.zip", "http://127.0.0.1/a.zip", "sha256:0", 0, strip="ds/")
    F.extract(archive, src, tmp_path / "ok", None, progress=False)  # 3 entries, 30 bytes: within the caps
    monkeypatch.setattr(F, "MAX_ARCHIVE_MEMBERS", 2)
    with pytest.raises(F.ChecksumError, match=r"a.zip: 3 entries, more than the 2 allowed .*MAX_ARCHIVE_MEMBERS"):
        F.extract(archive, src, tmp_path / "out1", None, progress=False)
    monkeypatch.setattr(F, "MAX_ARCHIVE_MEMBERS", 100)
    monkeypatch.setattr(F, "MAX_UNPACKED_BYTES", 25)
    with pytest.raises(F.ChecksumError, match=r"would unpack 30 bytes, more than the 25 allowed .*MAX_UNPACKED_BYTES"):
        F.extract(archive, src, tmp_path / "out2", None, progress=False)
    F.extract(archive, src, tmp_path / "out3", {"A/A_1.tif", "B/B_1.tif"}, progress=False)  # 20 bytes kept
    with pytest.raises(F.ChecksumError, match=r"more than the 15 allowed \(the whole dataset is 15 bytes\)"):
        F.extract(archive, src, tmp_path / "out4", {"A/A_1.tif", "B/B_1.tif"}, progress=False, max_bytes=15)
    assert not any((tmp_path / f"out{i}").exists() for i in (1, 2, 4))  # refused before anything was written

    link = zipfile.ZipInfo("ds/A/link.tif")
    link.create_system = 3  # Unix: the mode is in the high 16 bits
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(F.ChecksumError, match=r"member 'ds/A/link.tif' is a symbolic link"):
        F.extract(archive, src, tmp_path / "out5", None, progress=False)

    escape = tmp_path / "a2.zip"
    with zipfile.ZipFile(escape, "w") as zf:
        zf.writestr("ds/sub/evil.txt", "through a link in the target")
    dest, outside = tmp_path / "out6", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "sub").symlink_to(outside)  # a path that resolves outside the target
    with pytest.raises(F.ChecksumError, match="unsafe member path 'ds/sub/evil.txt'"):
        F.extract(escape, src, dest, None, progress=False)
    assert not (outside / "evil.txt").exists()
