"""The overlay as one more newc cpio archive appended to the job's initramfs.

The kernel unpacks every archive of a concatenated ``-initrd``, so the
``lava-*`` helpers and test definitions reach the VM without typing them
through the console.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

#: where the overlay lands inside the VM when it travels in the initramfs
OVERLAY_TARGET = "/lava-overlay"


def _cpio_entry(out: IO[bytes], name: str, mode: int, data: bytes, ino: int, mtime: int) -> None:
    encoded = name.encode() + b"\0"
    header = "070701" + "".join(
        f"{value:08X}"
        for value in (
            ino,
            mode,
            0,  # uid: root
            0,  # gid
            2 if stat.S_ISDIR(mode) else 1,
            mtime,
            len(data),
            0,
            0,
            0,
            0,
            len(encoded),
            0,
        )
    )
    out.write(header.encode("ascii") + encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def write_cpio(out: IO[bytes], tree: Path, target: str) -> None:
    """Write ``tree`` as a newc cpio archive whose files land under ``target``."""
    target = "/" + target.strip("/")
    ino = 1
    mtime = int(time.time())
    # the parents of target first, so the kernel can create the files
    parts = [p for p in target.strip("/").split("/") if p]
    for depth in range(1, len(parts) + 1):
        _cpio_entry(out, "/".join(parts[:depth]), stat.S_IFDIR | 0o755, b"", ino, mtime)
        ino += 1
    prefix = "/".join(parts)
    for path in sorted(tree.rglob("*")):
        rel = path.relative_to(tree).as_posix()
        name = f"{prefix}/{rel}" if prefix else rel
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            _cpio_entry(out, name, st.st_mode, os.readlink(path).encode(), ino, mtime)
        elif stat.S_ISDIR(st.st_mode):
            _cpio_entry(out, name, st.st_mode, b"", ino, mtime)
        elif stat.S_ISREG(st.st_mode):
            _cpio_entry(out, name, st.st_mode, path.read_bytes(), ino, mtime)
        else:
            continue
        ino += 1
    _cpio_entry(out, "TRAILER!!!", 0, b"", 0, 0)


def build_initrd(
    parts: Sequence[Path], out: Path, overlay: Path | None = None, target: str = OVERLAY_TARGET
) -> Path:
    """Concatenate initramfs archives (+ the overlay as one more cpio) into ``out``.

    Each part is padded to 4 bytes: the kernel looks for the next archive's
    header on a 4-byte boundary.
    """
    with open(out, "wb") as fh:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)
            fh.write(b"\0" * (-fh.tell() % 4))
        if overlay is not None:
            write_cpio(fh, overlay, target)
    return out
