"""A helper waiting on a real tty (a local board's console): the reply the dispatcher
types reaches the helper and is not echoed back (no second copy, no literal ``^J``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from device_agent.devices import create_device
from device_agent.devices.local import LocalDevice
from device_agent.overlay import (
    MultinodeContext,
    overlay_environment,
    setup_commands,
    write_overlay,
)

pytestmark = pytest.mark.timeout(60)


def shell_path(shell: str, tmp_path: Path) -> str:
    if shell == "busybox":
        busybox = shutil.which("busybox")
        if busybox is None:
            pytest.skip("busybox is not installed")
        link = tmp_path / "bb" / "sh"
        link.parent.mkdir()
        link.symlink_to(busybox)
        return str(link)
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed")
    return path


# bash is not used as a board shell here: Debian's /etc/bash.bashrc replaces the board's PS1
@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_typed_replies_are_read_and_not_echoed(shell: str, tmp_path: Path) -> None:
    board = create_device(
        {
            "name": "tty-1",
            "device_type": "local",
            "settings": {"network": "none", "shell": shell_path(shell, tmp_path)},
        },
        tmp_path / "tty-1",
    )
    assert isinstance(board, LocalDevice)
    overlay = write_overlay(tmp_path / "overlay", MultinodeContext("tty-1", "r", {"tty-1": "r"}))
    target = board.install_overlay(overlay.parent, 10)
    env = overlay_environment(target, cache_dir=board.cache_dir())
    console = board.boot(timeout=20, setup=setup_commands(env))
    output: list[bytes] = []
    console.add_listener(output.append)
    long_value = "v" * 5000  # over a canonical tty line (4095 bytes)
    try:
        for reply, expected in [
            ("<LAVA_WAIT_COMPLETE tty-2:k=v w>", "tty-2:k=v w"),
            (f"<LAVA_WAIT_COMPLETE tty-2:big={long_value}>", f"tty-2:big={long_value}"),
        ]:
            console.sendline('lava-wait hello; echo "rc=$?"')
            console.expect(["<LAVA_MULTI_NODE> <LAVA_WAIT hello>"], 10)
            console.sendline(reply)
            console.expect([r"rc=(\d+)"], 20)
            console.read_until_prompt(10)
            out, rc = console.run('cat "$LAVA_MULTI_NODE_CACHE"', 10)
            assert (out.strip(), rc) == (expected, 0)
        console.sendline('lava-sync s; echo "rc=$?"')
        console.expect(["<LAVA_MULTI_NODE> <LAVA_SYNC s>"], 10)
        console.sendline("# lavamq: a comment the helper skips")
        console.sendline("<LAVA_SYNC_COMPLETE nack>")
        _, match = console.expect([r"rc=(\d+)"], 10)
        assert match.group(1) == "1"
        console.read_until_prompt(10)
        # the terminal is back to normal after the helpers: what is typed is echoed again
        console.sendline("echo echoed-$((40 + 2))")
        console.expect([r"echoed-\$\(\(40 \+ 2\)\)"], 10)
        console.expect(["echoed-42"], 10)
    finally:
        board.shutdown()
    text = b"".join(output).decode("utf-8", "replace")
    assert "^J" not in text
    assert "_COMPLETE" not in text, "a typed reply was echoed"
    assert "a comment the helper skips" not in text
