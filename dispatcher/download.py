"""Fetch deploy images: ``file://`` and ``http(s)://``, streaming decompression, checksums.

Checksums (``md5sum``/``sha256sum`` in the job file) are of the file *as
downloaded* — the compressed bytes — as in LAVA. Decompression streams: the
image is never held in memory as a whole, and hashing, decompression and
writing happen chunk by chunk.
"""

from __future__ import annotations

import bz2
import hashlib
import logging
import lzma
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from schemas.errors import InfrastructureError, JobError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
COMPRESSIONS = ("gz", "xz", "bz2", "zst")
SCHEMES = ("file", "http", "https")


class Decompressor(Protocol):
    """A streaming decompressor: bytes in, bytes out, so an image is never held whole."""

    def feed(self, data: bytes) -> bytes:
        """Decompress one chunk."""

    def finish(self) -> bytes:
        """What is left once the input ended."""


class _Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class _MultiMember:
    """gz/xz/bz2 files may hold several concatenated members: decode them all."""

    def __init__(self, factory: Callable[[], Any], what: str) -> None:
        self._factory = factory
        self._what = what
        self._obj = factory()
        self._started = False

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            self._started = True
            out.append(self._obj.decompress(data))
            if not self._obj.eof:
                break
            data = self._obj.unused_data
            self._obj = self._factory()
            self._started = False
        return b"".join(out)

    def finish(self) -> bytes:
        if self._started and not self._obj.eof:
            raise JobError(
                f"{self._what} data is truncated (the stream ended before its end marker)"
            )
        return b""


class _Zstd:
    def __init__(self) -> None:
        try:
            import zstandard
        except ImportError as exc:  # pragma: no cover - install_requires has it
            raise InfrastructureError(
                "zst images need the Python package 'zstandard' on this dispatcher host"
            ) from exc
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self._obj.decompress(data))
            if not self._obj.eof:
                break
            data = self._obj.unused_data
            self._obj = self._dctx.decompressobj()
        return b"".join(out)

    def finish(self) -> bytes:
        return b""


def decompressor(compression: str | None) -> Decompressor:
    """A streaming decompressor for ``gz``/``xz``/``bz2``/``zst`` or None (no compression)."""
    if compression in (None, "", "none"):
        return _Identity()
    if compression == "gz":
        return _MultiMember(lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), "gzip")
    if compression == "xz":
        return _MultiMember(lzma.LZMADecompressor, "xz")
    if compression == "bz2":
        return _MultiMember(bz2.BZ2Decompressor, "bzip2")
    if compression == "zst":
        return _Zstd()
    raise JobError(
        f"unknown compression {compression!r} (known: {', '.join(COMPRESSIONS)} or none)"
    )


def validate_image(name: str, image: dict[str, Any]) -> list[str]:
    """Every problem of one image entry of a deploy action (no I/O)."""
    problems: list[str] = []
    url = image.get("url")
    if not isinstance(url, str) or not url:
        return [f"images.{name}.url: missing"]
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in SCHEMES:
        problems.append(
            f"images.{name}.url: unsupported scheme {scheme or '(none)'!r} in {url!r} "
            f"(supported: {', '.join(SCHEMES)})"
        )
    comp = image.get("compression")
    if comp not in (None, "", "none", *COMPRESSIONS):
        problems.append(
            f"images.{name}.compression: unknown {comp!r} (known: {', '.join(COMPRESSIONS)})"
        )
    for key, length in (("md5sum", 32), ("sha256sum", 64)):
        value = image.get(key)
        if value is None:
            continue
        if (
            not isinstance(value, str)
            or len(value) != length
            or any(c not in "0123456789abcdefABCDEF" for c in value)
        ):
            problems.append(f"images.{name}.{key}: not a {length}-digit hex digest: {value!r}")
    return problems


def _open(url: str, timeout: float) -> tuple[IO[bytes], int | None]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = urllib.request.url2pathname(parts.path)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            raise JobError(f"image {url}: no such file {path}") from None
        except IsADirectoryError:
            raise JobError(f"image {url}: {path} is a directory") from None
        except PermissionError:
            raise InfrastructureError(f"image {url}: permission denied reading {path}") from None
        return fh, os.fstat(fh.fileno()).st_size
    if parts.scheme in ("http", "https"):
        try:
            resp = urllib.request.urlopen(url, timeout=max(timeout, 1.0))
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500:
                raise JobError(f"image {url}: HTTP {exc.code} {exc.reason}") from None
            raise InfrastructureError(f"image {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InfrastructureError(f"image {url}: cannot connect ({reason})") from None
        length = resp.headers.get("Content-Length")
        return resp, int(length) if length and length.isdigit() else None
    raise JobError(f"image {url}: unsupported scheme {parts.scheme!r}")


@dataclass
class Downloaded:
    """Where an image landed and the checksums computed while it streamed."""

    path: Path
    url: str
    size: int  # bytes as downloaded
    written: int  # bytes after decompression
    md5sum: str
    sha256sum: str
    seconds: float


def _chunks(fh: IO[bytes], deadline: float | None, what: str) -> Iterator[bytes]:
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise JobError(f"{what}: timed out while downloading")
        data = fh.read(CHUNK)
        if not data:
            return
        yield data


def fetch_image(
    url: str,
    dest: str | Path,
    *,
    compression: str | None = None,
    md5sum: str | None = None,
    sha256sum: str | None = None,
    deadline: float | None = None,
    progress: Callable[[str], Any] | None = None,
    name: str = "image",
) -> Downloaded:
    """Download ``url`` to ``dest`` decompressing on the fly and verifying checksums.

    A checksum mismatch is a :class:`JobError` naming the image, the URL, the
    expected and the actual digest; ``dest`` is removed then.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    what = f"image {name!r} ({url})"
    start = time.monotonic()
    timeout = (deadline - start) if deadline is not None else 300.0
    fh, total = _open(url, timeout)
    dec = decompressor(compression)
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    size = written = 0
    next_report = 0.0
    tmp = dest.with_name(dest.name + ".part")
    try:
        with fh, tmp.open("wb") as out:
            for data in _chunks(fh, deadline, what):
                size += len(data)
                if md5sum:
                    md5.update(data)
                if sha256sum:
                    sha.update(data)
                try:
                    plain = dec.feed(data)
                except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
                    raise JobError(f"{what}: not valid {compression} data ({exc})") from None
                except Exception as exc:
                    if type(exc).__module__.startswith("zstandard"):
                        raise JobError(f"{what}: not valid {compression} data ({exc})") from None
                    raise
                out.write(plain)
                written += len(plain)
                if progress is not None and total:
                    pct = 100.0 * size / total
                    if pct >= next_report:
                        progress(f"{name}: {pct:5.1f}% {size // 1024} KiB of {total // 1024} KiB")
                        next_report = pct + 25.0
            try:
                tail = dec.finish()
            except JobError as exc:
                raise JobError(f"{what}: {exc.message}") from None
            out.write(tail)
            written += len(tail)
        if total is not None and size != total:
            raise InfrastructureError(f"{what}: short read: got {size} of {total} bytes")
        for key, expected, hasher in (("md5sum", md5sum, md5), ("sha256sum", sha256sum, sha)):
            if expected:
                actual = hasher.hexdigest()
                if actual.lower() != expected.lower():
                    raise JobError(
                        f"{what}: {key} mismatch: expected {expected.lower()}, actual {actual}"
                    )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.monotonic() - start
    if progress is not None:
        rate = size / seconds / 1e6 if seconds > 0 else 0.0
        progress(
            f"{name}: downloaded {size} bytes ({written} after decompression) "
            f"in {seconds:.2f} s, {rate:.1f} MB/s"
        )
    return Downloaded(
        path=dest,
        url=url,
        size=size,
        written=written,
        md5sum=md5.hexdigest() if md5sum else "",
        sha256sum=sha.hexdigest() if sha256sum else "",
        seconds=seconds,
    )
