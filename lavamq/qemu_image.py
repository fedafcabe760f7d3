"""The images a job file names, checked before ``lavamq run`` starts a lab.

A local image (``file://``) that does not exist fails every node's deploy
later; ``lavamq run`` says so at once instead. When the missing file is
this project's QEMU test image (``<checkout>/images/vmlinuz`` or
``initramfs.cpio.gz``, built by ``scripts/build-test-image.sh``, which is
``make test-image``), it builds it first, showing the script's progress;
it also rebuilds it when ``scripts/initramfs/init`` changed since.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from schemas.errors import InfrastructureError, JobError
from schemas.jobmodel import JobPlan

BUILD_SCRIPT = Path("scripts") / "build-test-image.sh"
INIT_SCRIPT = Path("scripts") / "initramfs" / "init"
TEST_IMAGE_FILES = ("vmlinuz", "initramfs.cpio.gz")


def local_images(plan: JobPlan) -> dict[Path, str]:
    """Every ``file://`` image of the plan → where the job names it."""
    found: dict[Path, str] = {}
    for action in plan.actions:
        images = action.parameters.get("images")
        if not isinstance(images, dict):
            continue
        for name, entry in images.items():
            url = entry.get("url") if isinstance(entry, dict) else None
            if isinstance(url, str) and urlsplit(url).scheme == "file":
                path = Path(unquote(urlsplit(url).path))
                found.setdefault(path, f"actions[{action.index}].{action.kind}.images.{name}")
    return found


def image_checkout(path: Path) -> Path | None:
    """The checkout whose test image ``path`` is (``<checkout>/images/<file>``), if it is one."""
    if path.name not in TEST_IMAGE_FILES or path.parent.name != "images":
        return None
    root = path.parent.parent
    return root if (root / BUILD_SCRIPT).is_file() else None


def stale(root: Path) -> bool:
    """The built image predates the checkout's init script (its stamp names another)."""
    try:
        stamp = (root / "images" / ".stamp").read_text()
        init = hashlib.sha256((root / INIT_SCRIPT).read_bytes()).hexdigest()
    except OSError:
        return False
    return f"init={init}" not in stamp.split()


def build_test_image(root: Path, emit: Callable[[str], None]) -> None:
    """Run the checkout's build script, each line of its progress to ``emit``."""
    script = root / BUILD_SCRIPT
    emit(f"building the QEMU test image ({script}, as `make test-image` does) ...")
    try:
        proc = subprocess.Popen(
            [str(script)],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    except OSError as exc:
        raise InfrastructureError(f"cannot run {script}: {exc}") from None
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        emit("  " + line.rstrip())
        tail = [*tail[-9:], line.rstrip()]
    if proc.wait() != 0:
        raise InfrastructureError(
            f"{script} failed (exit {proc.returncode}): " + " / ".join(tail[-3:])
        )


def ensure_images(plan: JobPlan, emit: Callable[[str], None]) -> None:
    """Every local image of ``plan`` exists (the test image built when needed);
    JobError naming the missing ones otherwise."""
    images = local_images(plan)
    roots = {root for path in images if (root := image_checkout(path)) is not None}
    for root in sorted(roots):
        wanted = [p for p in images if image_checkout(p) == root]
        if any(not p.is_file() for p in wanted) or stale(root):
            build_test_image(root, emit)
    missing = [
        f"{where}: {path} does not exist" for path, where in images.items() if not path.is_file()
    ]
    if missing:
        raise JobError("the job's images are missing: " + "; ".join(missing))
