from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import zstandard

from dispatcher.download import decompressor, fetch_image, validate_image
from schemas.errors import InfrastructureError, JobError

PAYLOAD = os.urandom(1 << 16) + b"lavamq image\n" * 50_000

COMPRESS: dict[str | None, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "xz": lzma.compress,
    "bz2": bz2.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
    None: lambda data: data,
}


@pytest.mark.parametrize("compression", ["gz", "xz", "bz2", "zst", None])
def test_file_url_is_decompressed_and_verified(tmp_path: Path, compression: str | None) -> None:
    packed = COMPRESS[compression](PAYLOAD)
    src = tmp_path / "image.bin"
    src.write_bytes(packed)
    progress: list[str] = []
    got = fetch_image(
        src.as_uri(),
        tmp_path / "out" / "image",
        compression=compression,
        md5sum=hashlib.md5(packed).hexdigest(),
        sha256sum=hashlib.sha256(packed).hexdigest(),
        progress=progress.append,
    )
    assert got.path.read_bytes() == PAYLOAD
    assert got.size == len(packed) and got.written == len(PAYLOAD)
    assert any("downloaded" in line for line in progress)


def test_concatenated_gzip_members_are_all_decoded(tmp_path: Path) -> None:
    src = tmp_path / "two.gz"
    src.write_bytes(gzip.compress(b"first\n") + gzip.compress(b"second\n"))
    got = fetch_image(src.as_uri(), tmp_path / "out", compression="gz")
    assert got.path.read_bytes() == b"first\nsecond\n"


def test_wrong_checksum_names_expected_and_actual(tmp_path: Path) -> None:
    src = tmp_path / "image.gz"
    src.write_bytes(gzip.compress(b"data"))
    actual = hashlib.sha256(src.read_bytes()).hexdigest()
    wrong = "0" * 64
    with pytest.raises(JobError) as info:
        fetch_image(
            src.as_uri(), tmp_path / "out", compression="gz", sha256sum=wrong, name="rootfs"
        )
    msg = str(info.value)
    assert f"expected {wrong}" in msg and f"actual {actual}" in msg and "rootfs" in msg
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()


def test_corrupt_and_truncated_data_are_job_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xz"
    bad.write_bytes(b"not xz at all")
    with pytest.raises(JobError, match="not valid xz data"):
        fetch_image(bad.as_uri(), tmp_path / "o1", compression="xz")
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(PAYLOAD)[:5000])
    with pytest.raises(JobError, match="truncated"):
        fetch_image(short.as_uri(), tmp_path / "o2", compression="gz")


def test_missing_file_is_a_job_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"no such file .*nope\.img"):
        fetch_image((tmp_path / "nope.img").as_uri(), tmp_path / "o")


def test_validate_image_collects_every_problem() -> None:
    problems = validate_image(
        "kernel",
        {"url": "ftp://x/y", "compression": "lz4", "md5sum": "abc", "sha256sum": "z" * 64},
    )
    assert problems == [
        "images.kernel.url: unsupported scheme 'ftp' in 'ftp://x/y' (supported: file, http, https)",
        "images.kernel.compression: unknown 'lz4' (known: gz, xz, bz2, zst)",
        "images.kernel.md5sum: not a 32-digit hex digest: 'abc'",
        f"images.kernel.sha256sum: not a 64-digit hex digest: '{'z' * 64}'",
    ]
    assert validate_image("x", {}) == ["images.x.url: missing"]


def test_unknown_compression_is_a_job_error() -> None:
    with pytest.raises(JobError, match="unknown compression 'lz4'"):
        decompressor("lz4")


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    body = gzip.compress(PAYLOAD)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/image.gz":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_download(tmp_path: Path, http_server: str) -> None:
    got = fetch_image(f"{http_server}/image.gz", tmp_path / "img", compression="gz")
    assert got.path.read_bytes() == PAYLOAD
    with pytest.raises(JobError, match="HTTP 404"):
        fetch_image(f"{http_server}/missing", tmp_path / "img2")


def test_unreachable_http_is_an_infrastructure_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InfrastructureError, match="cannot connect"):
        fetch_image(f"http://127.0.0.1:{port}/x", tmp_path / "img")
