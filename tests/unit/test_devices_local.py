"""Device type ``local``: a real shell behind a pty, opened by pyserial as its serial line."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.console import ConsoleClosed
from device_agent.devices import create_device
from device_agent.devices.local import LocalDevice, netns_supported, proc_stat, session_processes


def live(pids: set[int]) -> set[int]:
    """Processes that still run (zombies have already died)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


@pytest.fixture
def board(tmp_path: Path) -> Iterator[LocalDevice]:
    device = create_device(
        {"name": "loc-a", "device_type": "local", "settings": {"network": "none"}},
        tmp_path / "loc-a",
    )
    assert isinstance(device, LocalDevice)
    try:
        yield device
    finally:
        device.shutdown()


def test_boot_runs_commands_in_the_boards_own_root(board: LocalDevice) -> None:
    console = board.boot(timeout=15, setup=["export LAVAMQ_X='a b'"])
    output, rc = console.run('pwd; echo "$HOME|$LAVAMQ_X|$TMPDIR"; tty', timeout=10)
    lines = output.splitlines()
    assert rc == 0
    assert lines[0] == str(board.root)
    # TMPDIR is the board's /tmp: LAVA's in a private root, else its own directory here
    assert lines[1] == f"{board.root}|a b|{board.cache_dir()}"
    assert lines[2].startswith("/dev/pts/")
    output, rc = console.run("false", timeout=10)
    assert rc == 1


def test_console_is_pyserial_on_a_pty_slave(board: LocalDevice) -> None:
    console = board.boot(timeout=15)
    assert getattr(console, "url", "").startswith("/dev/pts/")


def running(*argv: str) -> set[int]:
    """Pids of the processes whose command line is exactly ``argv``."""
    want = b"".join(arg.encode() + b"\0" for arg in argv)
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == want:
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def wait_running(*commands: tuple[str, ...], timeout: float = 10) -> set[int]:
    """Wait until each command runs (background jobs start after the prompt returns)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [live(running(*argv)) for argv in commands]
        if all(found):
            return set().union(*found)
        assert time.monotonic() < deadline, f"not all of {commands} started: {found}"
        time.sleep(0.02)


def unique_seconds(n: int) -> list[str]:
    """``n`` sleep durations no other process on this host runs: a process is found by
    its command line, and other tests (or other boards) run ``sleep 300`` too."""
    tag = uuid.uuid4().int % 10**9
    return [f"{300 + i}.{tag:09d}" for i in range(n)]


def test_power_off_leaves_no_process_behind(board: LocalDevice) -> None:
    console = board.boot(timeout=15)
    # background jobs in their own process groups, and one that escapes the session
    a, b, c, d = unique_seconds(4)
    console.run(f"sleep {a} & (sleep {b} | sleep {c}) & setsid sleep {d} & true", timeout=10)
    assert board.proc is not None
    pid = board.proc.pid
    pids = wait_running(*(("sleep", s) for s in (a, b, c, d)), timeout=60)
    pids |= live(session_processes(pid))
    board.power_off()
    assert live(pids | session_processes(pid)) == set()
    assert proc_stat(pid) is None or live({pid}) == set()


def test_power_off_stops_the_pty_relay_process(board: LocalDevice) -> None:
    board.boot(timeout=15)
    relay = board._relay
    assert relay is not None and relay.poll() is None
    board.power_off()
    assert relay.returncode == 0  # it stopped on its own when its lifeline closed
    assert board._relay is None


def test_a_console_flood_reaches_the_line_whole_and_in_order(board: LocalDevice) -> None:
    console = board.boot(timeout=15)
    got: list[bytes] = []
    console.add_listener(got.append)
    # 20 000 numbered lines (about 2 MB); the marker is made by the shell so
    # that the command's echo cannot match it
    console.sendline("seq -f '%099g' 20000; echo FLOOD-$((40 + 2))-DONE")
    console.expect("FLOOD-42-DONE", timeout=60)
    console.remove_listener(got.append)
    lines = b"".join(got).replace(b"\r\n", b"\n").split(b"\n")
    numbered = [line for line in lines if len(line) == 99 and line.isdigit()]
    assert numbered == [b"%099d" % i for i in range(1, 20001)]


def test_exit_of_the_shell_closes_nothing_but_is_seen(board: LocalDevice) -> None:
    console = board.boot(timeout=15)
    console.sendline("exit")
    with pytest.raises(Exception) as info:
        console.expect("never-printed", timeout=1)
    assert "never-printed" in str(info.value)
    board.power_off()
    board.shutdown()
    with pytest.raises(ConsoleClosed):
        console.sendline("echo")


def test_reboot_gives_a_fresh_shell(board: LocalDevice) -> None:
    console = board.boot(timeout=15)
    console.run("export MARK=1", timeout=10)
    console = board.boot(timeout=15)
    output, _ = console.run('echo "mark=$MARK"', timeout=10)
    assert output == "mark="


@pytest.mark.skipif(not netns_supported(), reason="needs root and ip netns")
def test_boards_in_network_namespaces_reach_each_other(tmp_path: Path) -> None:
    boards = [
        create_device(
            {
                "name": name,
                "device_type": "local",
                "settings": {"network": "netns", "ipv4": ip, "bridge": "lmqtest0"},
            },
            tmp_path / name,
        )
        for name, ip in (("net-a", "192.0.2.201/24"), ("net-b", "192.0.2.202/24"))
    ]
    try:
        consoles = [b.boot(timeout=15) for b in boards]
        output, rc = consoles[0].run("hostname; ip -4 -o addr show eth0", timeout=10)
        assert rc == 0
        assert output.splitlines()[0] == "net-a"
        assert "192.0.2.201/24" in output
        # a TCP round trip between the two namespaces (ping may not be installed)
        serve = (
            "import socket; s = socket.create_server(('192.0.2.201', 7777)); "
            "c, _ = s.accept(); c.sendall(c.recv(64).upper()); c.close()"
        )
        consoles[0].run(f'python3 -c "{serve}" & true', timeout=10)
        client = (
            "import socket, time\n"
            "deadline = time.monotonic() + 10\n"
            "while True:\n"
            "    try:\n"
            "        c = socket.create_connection(('192.0.2.201', 7777), timeout=5); break\n"
            "    except OSError:\n"
            "        assert time.monotonic() < deadline; time.sleep(0.05)\n"
            "c.sendall(b'hello'); print(c.recv(64).decode())"
        )
        (tmp_path / "net-b" / "client.py").write_text(client)
        output, rc = consoles[1].run("python3 client.py", timeout=15)
        assert (output, rc) == ("HELLO", 0)
    finally:
        for b in boards:
            b.shutdown()
    import subprocess

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "lavamq-net-a" not in listed and "lavamq-net-b" not in listed
    # the bridge goes with its last board
    assert subprocess.run(["ip", "link", "show", "lmqtest0"], capture_output=True).returncode != 0


def test_power_off_finds_a_process_that_double_forked_out_of_the_session(
    board: LocalDevice,
) -> None:
    """``setsid cmd &`` leaves the board's session and is reparented to init."""
    console = board.boot(timeout=15)
    (seconds,) = unique_seconds(1)
    console.run(f"setsid sleep {seconds} & true", timeout=10)
    assert board.proc is not None
    session = board.proc.pid

    def escaped() -> set[int]:
        return {
            p
            for p in live(running("sleep", seconds))
            if (proc_stat(p) or (0, session))[1] != session
        }

    deadline = time.monotonic() + 10
    while not escaped():
        assert time.monotonic() < deadline, "setsid sleep never left the board's session"
        time.sleep(0.02)
    pids = escaped()
    assert not pids & session_processes(session)  # out of reach of session and parent links
    board.power_off()
    assert live(pids) == set()
