"""The lava-* helpers, run in real shells: dash, bash and busybox (with only its applets)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from device_agent.overlay import (
    MultinodeContext,
    overlay_environment,
    setup_commands,
    write_overlay,
)
from schemas.errors import JobError

SHELLS = ["dash", "bash", "busybox"]

CONTEXT = MultinodeContext(
    "node-b", "client", {"node-a": "server", "node-b": "client", "node-c": "client"}
)


@pytest.fixture(scope="module")
def busybox_path(tmp_path_factory: pytest.TempPathFactory) -> str | None:
    busybox = shutil.which("busybox")
    if busybox is None:
        return None
    bb_dir = tmp_path_factory.mktemp("busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout.split()
    for applet in applets:
        (bb_dir / applet).symlink_to(busybox)
    return str(bb_dir)


class Dut:
    """An overlay and a way to run its helpers under one shell."""

    def __init__(self, root: Path, shell: str, busybox_path: str | None) -> None:
        if shell == "busybox" and busybox_path is None:
            pytest.skip("busybox is not installed")
        if shell != "busybox" and shutil.which(shell) is None:
            pytest.skip(f"{shell} is not installed")
        self.root = root
        self.bin = write_overlay(root / "overlay", CONTEXT)
        self.env = overlay_environment(str(root / "overlay"), cache_dir=str(root / "tmp"))
        if shell == "busybox":
            assert busybox_path is not None
            self.env["PATH"] = f"{self.bin}:{busybox_path}"
            self.argv = [f"{busybox_path}/sh"]
        else:
            self.env["PATH"] = f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin"
            self.argv = [str(shutil.which(shell))]

    def run(self, helper: str, *args: str, stdin: str = "", **env: str) -> tuple[int, str, str]:
        proc = subprocess.run(
            [*self.argv, str(self.bin / helper), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**self.env, **env},
            cwd=self.root,
            timeout=20,
        )
        return proc.returncode, proc.stdout, proc.stderr

    @property
    def cache(self) -> Path:
        return Path(self.env["LAVA_MULTI_NODE_CACHE"])


@pytest.fixture(params=SHELLS)
def dut(request: pytest.FixtureRequest, tmp_path: Path, busybox_path: str | None) -> Dut:
    return Dut(tmp_path, request.param, busybox_path)


def test_self_role_group(dut: Dut) -> None:
    assert dut.run("lava-self") == (0, "node-b\n", "")
    assert dut.run("lava-role") == (0, "client", "")
    # as LAVA: the second column of lava-group, one line per node
    assert dut.run("lava-role", "list") == (0, "server\nclient\nclient\n", "")
    assert dut.run("lava-group") == (0, "node-a\tserver\nnode-b\tclient\nnode-c\tclient\n", "")
    assert dut.run("lava-group", "client") == (0, "node-b\nnode-c\n", "")
    assert dut.run("lava-group", "nobody") == (1, "", "")


def test_send_prints_the_signal_keeping_only_key_values(dut: Dut) -> None:
    assert dut.run("lava-send", "ready") == (0, "<LAVA_MULTI_NODE> <LAVA_SEND ready>\n", "")
    rc, out, _ = dut.run("lava-send", "ready", "ip=192.0.2.5", "junk", "msg=hello world", "=x")
    assert (rc, out) == (0, "<LAVA_MULTI_NODE> <LAVA_SEND ready ip=192.0.2.5 msg=hello world>\n")
    rc, out, err = dut.run("lava-send", "bad=id", "a=b")
    assert (rc, out) == (1, "")
    assert "must not contain '='" in err
    rc, out, err = dut.run("lava-send", "id", "a=b\nc")
    assert (rc, out) == (1, "")
    assert "cannot contain a newline" in err


def test_debug_lines_when_asked(dut: Dut) -> None:
    rc, out, err = dut.run("lava-send", "x", LAVA_MULTI_NODE_DEBUG="1")
    assert rc == 0 and out == "<LAVA_MULTI_NODE> <LAVA_SEND x>\n"
    assert "<LAVA_SEND_DEBUG" in err


def test_wait_reads_until_its_reply_and_writes_the_cache(dut: Dut) -> None:
    stdin = (
        "some noise\n"
        "<LAVA_SYNC_COMPLETE>\n"
        "<LAVA_WAIT_COMPLETE node-a:ip=192.0.2.5 node-a:msg=hello world node-c:k=v=w>\r\n"
        "after\n"
    )
    rc, out, _ = dut.run("lava-wait", "ready", stdin=stdin)
    assert (rc, out) == (0, "<LAVA_MULTI_NODE> <LAVA_WAIT ready>\n")
    assert dut.cache.read_text() == ("node-a:ip=192.0.2.5\nnode-a:msg=hello world\nnode-c:k=v=w\n")
    # scripts read values with cut -d = -f 2
    assert (
        subprocess.run(
            ["cut", "-d", "=", "-f", "2"],
            input="node-a:ip=192.0.2.5\n",
            capture_output=True,
            text=True,
        ).stdout
        == "192.0.2.5\n"
    )


def test_wait_without_data_leaves_no_cache(dut: Dut) -> None:
    dut.cache.parent.mkdir(parents=True, exist_ok=True)
    dut.cache.write_text("old\n")
    assert dut.run("lava-wait", "go", stdin="<LAVA_WAIT_COMPLETE>\n")[0] == 0
    assert not dut.cache.exists()


def test_nack_and_end_of_input_exit_1(dut: Dut) -> None:
    rc, _, err = dut.run("lava-wait", "go", stdin="<LAVA_WAIT_COMPLETE nack>\n")
    assert rc == 1 and "Error: no-response go" in err
    rc, _, err = dut.run("lava-sync", "go", stdin="<LAVA_SYNC_COMPLETE nack>\n")
    assert rc == 1
    rc, _, err = dut.run("lava-wait-all", "go", stdin="")
    assert rc == 1 and "no reply" in err


def test_wait_all_and_sync_signals(dut: Dut) -> None:
    rc, out, _ = dut.run(
        "lava-wait-all", "done", "client", stdin="<LAVA_WAIT_ALL_COMPLETE node-b:r=1 node-c:r=2>\n"
    )
    assert (rc, out) == (0, "<LAVA_MULTI_NODE> <LAVA_WAIT_ALL done client>\n")
    assert dut.cache.read_text() == "node-b:r=1\nnode-c:r=2\n"
    rc, out, _ = dut.run(
        "lava-sync", "start", stdin="<LAVA_WAIT_COMPLETE x:y=z>\n<LAVA_SYNC_COMPLETE>\n"
    )
    assert (rc, out) == (0, "<LAVA_MULTI_NODE> <LAVA_SYNC start>\n")
    assert dut.run("lava-sync")[0] == 1


def test_long_reply_survives(dut: Dut) -> None:
    items = " ".join(f"node-a:k{i}={'v' * 50}" for i in range(200))
    assert dut.run("lava-wait", "big", stdin=f"<LAVA_WAIT_COMPLETE {items}>\n")[0] == 0
    assert len(dut.cache.read_text().splitlines()) == 200


def test_test_case_signals(dut: Dut) -> None:
    assert dut.run("lava-test-case", "boot", "--result", "pass") == (
        0,
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot RESULT=pass>\n",
        "",
    )
    rc, out, _ = dut.run(
        "lava-test-case", "speed", "--result", "pass", "--measurement", "12.5", "--units", "MB/s"
    )
    assert (
        out == "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=speed RESULT=pass MEASUREMENT=12.5 UNITS=MB/s>\n"
    )
    rc, out, _ = dut.run("lava-test-case", "t", "--shell", "echo inside; false")
    assert (rc, out) == (
        0,
        "<LAVA_SIGNAL_STARTTC t>\ninside\n<LAVA_SIGNAL_ENDTC t>\n"
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=t RESULT=fail>\n",
    )
    assert dut.run("lava-test-case", "t", "--result", "maybe")[0] == 1
    assert dut.run("lava-test-case", "t")[0] == 1
    assert (dut.root / "overlay/results/results/speed/measurement").read_text() == "12.5\n"


def test_test_case_shell_keeps_each_argument(dut: Dut) -> None:
    def result(*command: str) -> str:
        rc, out, err = dut.run("lava-test-case", "t", "--shell", *command)
        assert rc == 0, err
        return out.splitlines()[-1]

    passed = "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=t RESULT=pass>"
    failed = "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=t RESULT=fail>"
    # arguments holding spaces, quotes and shell characters reach the command as given
    assert result("test", "a b", "=", "a b") == passed
    assert result("test", "a b", "=", "a  b") == failed
    assert result("test", "x;y", "=", "x;y") == passed
    assert result("test", "$HOME", "=", "$" + "HOME") == passed
    assert result("test", "it's", "=", "it's") == passed
    assert result("sh", "-c", 'test "$1" = "p q"', "sh", "p q") == passed
    _rc, out, _ = dut.run("lava-test-case", "t", "--shell", "printf", "[%s]\\n", "a b", "c")
    assert out.splitlines()[1:3] == ["[a b]", "[c]"]
    # one argument is a shell command line: pipes work, the exit status is the last command's
    assert result("echo hello | grep -q hello") == passed
    assert result("echo hello | grep -q bye") == failed


NETWORK_CACHE = (
    "node-a:ipv4=192.0.2.10\nnode-a:hostname=alpha\nnode-a:netmask=255.255.255.0\n"
    "node-b:ipv4=192.0.2.11\nnode-b:hostname=beta\n"
    "node-c:ipv4=192.0.2.12\n"
)


def test_network_query_hosts_and_alias_hosts(dut: Dut) -> None:
    rc, _, err = dut.run("lava-network", "query", "node-a", "ipv4")
    assert rc == 1 and "collect" in err
    cache = Path(dut.env["LAVA_MULTI_NODE_NETWORK_CACHE"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(NETWORK_CACHE)
    assert dut.run("lava-network", "query", "node-a", "netmask") == (0, "255.255.255.0\n", "")
    assert dut.run("lava-network", "query", "node-c", "hostname")[0] == 1
    hosts = dut.root / "hosts"
    assert dut.run("lava-network", "hosts", str(hosts))[0] == 0
    assert hosts.read_text() == "192.0.2.10\talpha\n192.0.2.11\tbeta\n192.0.2.12\tnode-c\n"
    aliased = dut.root / "hosts2"
    assert dut.run("lava-network", "alias-hosts", str(aliased))[0] == 0
    assert aliased.read_text() == (
        "192.0.2.10\talpha\tserver01\n192.0.2.11\tbeta\tclient01\n192.0.2.12\tnode-c\tclient02\n"
    )


def test_network_collect_and_broadcast(dut: Dut) -> None:
    rc, out, _ = dut.run(
        "lava-network",
        "collect",
        "eth0",
        stdin="<LAVA_WAIT_ALL_COMPLETE node-a:ipv4=192.0.2.10 node-a:hostname=alpha>\n",
    )
    assert (rc, out) == (0, "<LAVA_MULTI_NODE> <LAVA_WAIT_ALL network_info>\n")
    assert dut.run("lava-network", "query", "node-a", "ipv4") == (0, "192.0.2.10\n", "")
    rc, out, _ = dut.run("lava-network", "broadcast", "lo")
    assert rc == 0
    assert out.startswith(
        "<LAVA_MULTI_NODE> <LAVA_SEND network_info ipv4=127.0.0.1 netmask=255.0.0.0"
    )
    assert "hostname=" in out and "mac=" not in out  # lo has no ethernet address
    assert dut.run("lava-echo-ipv4", "lo") == (0, "127.0.0.1\n", "")


def test_context_is_checked_and_setup_commands_quote() -> None:
    with pytest.raises(JobError, match="bad node name 'a b'"):
        MultinodeContext("a b", "r", {"a b": "r"}).check()
    with pytest.raises(JobError, match="not in its group"):
        MultinodeContext("a", "r", {"a": "s"}).check()
    lines = setup_commands({"LAVA_TEST_BIN": "/x y/bin", "K": "it's"})
    assert lines == [
        "export LAVA_TEST_BIN='/x y/bin'",
        "export K='it'\"'\"'s'",
        "export PATH='/x y/bin':\"$PATH\"",
    ]
    out = subprocess.run(
        ["sh", "-c", "; ".join([*lines, 'printf "%s|%s" "$K" "${PATH%%:*}"'])],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout
    assert out == "it's|/x y/bin"


def test_send_refuses_what_the_grammar_cannot_carry_and_keeps_the_rest_raw(dut: Dut) -> None:
    rc, out, err = dut.run("lava-send", "id", "my key=v")
    assert (rc, out) == (1, "") and "bad key 'my key'" in err
    rc, out, err = dut.run("lava-send", "id", "schlüssel=v")
    assert (rc, out) == (1, "") and "bad key" in err
    rc, out, err = dut.run("lava-send", "id", "v=" + "x" * 70_000)
    assert (rc, out) == (1, "") and "at most 65534" in err
    # printf, not echo: a backslash is a backslash
    rc, out, _ = dut.run("lava-send", "id", r"v=a\cb\tc", "p=100% <ok", "q=k=v")
    assert (rc, out) == (0, "<LAVA_MULTI_NODE> <LAVA_SEND id v=a\\cb\\tc p=100% <ok q=k=v>\n")


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("a>b", r"gt:esc=a\0076b"),  # '>' would end the signal
        ("x b=c", r"gt:esc=x\0040b=c"),  # the dispatcher would split a key 'b' there
        (" lead", r"gt:esc=\0040lead"),  # blanks at either end would be lost
        ("trail\t", r"gt:esc=trail\0011"),
        ("a\\b>", r"gt:esc=a\0134b\0076"),  # an escaped value escapes its backslashes
        ("grüße ✓>", r"gt:esc=grüße\0040✓\0076"),
    ],
)
def test_send_escapes_what_the_one_line_grammar_would_change(
    dut: Dut, value: str, sent: str
) -> None:
    rc, out, err = dut.run("lava-send", "id", f"gt={value}")
    assert (rc, out) == (0, f"<LAVA_MULTI_NODE> <LAVA_SEND id {sent}>\n"), err
    # and the dispatcher reads back the raw value
    from device_agent.signals import parse_multinode

    call = parse_multinode(out.strip())
    assert call is not None and call.data == {"gt": value}


def test_data_lines_reach_the_cache_byte_for_byte_and_cannot_be_forged(dut: Dut) -> None:
    from device_agent.signals import reply_lines

    values = {"v": "x node-c:ready=yes", "p": "100% <ok>", "b": "a\\cb\\0076 ", "t": "a\tb"}
    reply = "\n".join(reply_lines("WAIT", {"node-a": values})) + "\n"
    assert ">ok>" not in reply  # no typed line holds a '>' of a value
    assert dut.run("lava-wait", "go", stdin=reply)[0] == 0
    assert dut.cache.read_text(encoding="utf-8").splitlines() == [
        f"node-a:{key}={value}" for key, value in values.items()
    ]


@pytest.mark.parametrize(
    ("helper", "why"),
    [
        ("lava-target-storage", "describes no storage"),
        ("lava-probe-ip", "no energy probes"),
        ("lava-test-feedback", "one test shell per device"),
    ],
)
def test_helpers_no_device_can_honour_say_why_and_fail(dut: Dut, helper: str, why: str) -> None:
    rc, out, err = dut.run(helper, LAVA_DEVICE_TYPE="local")
    assert (rc, out) == (1, "") and f"{helper}: not supported on local: " in err and why in err


def attached(out: str) -> list[dict[str, Any]]:
    """What the dispatcher makes of the attachment signals in ``out``."""
    from device_agent.signals import SignalReader
    from dispatcher.attachments import AttachmentCollector

    said: list[str] = []
    files = AttachmentCollector(said.append)
    reader = SignalReader()
    reader.subscribe(lambda line, event: files.handle(event, "0_run"))  # type: ignore[arg-type]
    reader.feed(out)
    return files.take("0_run")


def test_attachments_reach_the_dispatcher_byte_for_byte(dut: Dut) -> None:
    data = bytes(range(256)) * 40 + "grüße\n".encode()
    (dut.root / "log file.bin").write_bytes(data)
    rc, out, err = dut.run("lava-test-case-attach", "boot", "log file.bin", "application/x-log")
    assert rc == 0, err
    rc, out2, err = dut.run("lava-test-run-attach", "log file.bin")
    assert rc == 0, err
    files = attached(out + out2)
    assert [(f["pathname"], f["case"], f["mime_type"]) for f in files] == [
        ("log file.bin", "boot", "application/x-log"),
        ("log file.bin", None, None),
    ]
    assert all(base64.b64decode(f["content"]) == data for f in files)


def test_attachments_refuse_what_they_cannot_send(dut: Dut) -> None:
    rc, _, err = dut.run("lava-test-run-attach", "missing.txt")
    assert rc == 1 and "missing.txt not found" in err
    (dut.root / "big").write_bytes(b"x" * (1024 * 1024 + 1))
    rc, out, err = dut.run("lava-test-case-attach", "c", "big")
    assert (rc, out) == (1, "") and "at most 1048576" in err
    assert dut.run("lava-test-case-attach", "only-one-arg")[0] == 1


def test_background_process_starts_and_stops_with_what_it_started(dut: Dut) -> None:
    rc, out, err = dut.run("lava-background-process-start", "ticker", "--cmd", "sleep 60 | cat")
    assert rc == 0 and "started" in out, err
    pid = int((dut.root / "overlay/results/results/ticker/pid").read_text())
    os.kill(pid, 0)  # running
    assert dut.run("lava-background-process-start", "ticker", "--cmd", "true")[0] == 1
    rc, out, err = dut.run("lava-background-process-stop", "ticker")
    assert rc == 0 and "stopped" in out, err
    for _ in range(200):
        try:
            os.waitpid(pid, os.WNOHANG)
            os.kill(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            break
        subprocess.run(["sleep", "0.05"], check=True)
    else:
        pytest.fail(f"background process {pid} still runs")
    rc, _, err = dut.run("lava-background-process-stop", "ticker")
    assert rc == 1 and "no background process 'ticker'" in err
    assert dut.run("lava-background-process-start", "x")[0] == 1


def test_target_ip_and_mac_as_the_device_gives_them(dut: Dut) -> None:
    env = {"TARGET_DEVICE_IP": "192.0.2.7", "TARGET_DEVICE_MAC": "52:54:00:12:34:56"}
    assert dut.run("lava-target-ip", **env) == (0, "192.0.2.7\n", "")
    assert dut.run("lava-target-mac", **env) == (0, "52:54:00:12:34:56\n", "")
    why = {"TARGET_DEVICE_WHY": "the board shares the host's network", "LAVA_DEVICE_TYPE": "local"}
    rc, out, err = dut.run("lava-target-mac", TARGET_DEVICE_IP="192.0.2.7", **why)
    assert (rc, out) == (1, "")
    assert err == "lava-target-mac: not supported on local: the board shares the host's network\n"


def test_os_build_and_installed_packages_of_the_os_they_run_on(dut: Dut) -> None:
    rc, out, err = dut.run("lava-os-build")
    assert rc == 0 and out.strip(), err
    if shutil.which("dpkg-query") and not dut.argv[0].endswith("/sh"):  # not busybox's PATH
        rc, out, err = dut.run("lava-installed-packages")
        assert rc == 0, err
        assert any(line.startswith("package: dash : ") for line in out.splitlines())


def test_packages_are_installed_only_where_the_device_allows(dut: Dut) -> None:
    refused = {
        "LAVA_PACKAGES_REFUSED": "this board is the dispatcher host",
        "LAVA_DEVICE_TYPE": "local",
    }
    for helper in ("lava-install-packages", "lava-add-sources", "lava-add-keys"):
        rc, _, err = dut.run(helper, "iperf3", **refused)
        assert (
            rc == 1
            and f"{helper}: not supported on local: this board is the dispatcher host" in err
        )
        assert dut.run(helper)[0] == 1  # usage
    # allowed, but an OS without a package manager (only busybox's applets, or none)
    rc, _, err = dut.run("lava-install-packages", "iperf3", PATH=str(dut.bin) + ":/nonexistent")
    assert rc == 1 and "no package manager on the device" in err


def test_echo_config_prints_what_the_device_dictionary_shares(dut: Dut) -> None:
    assert dut.run("lava-echo-config") == (1, "", "no shared config\n")
    shared = "switch-port 12\npdu-outlet 3 (rack b)"
    assert dut.run("lava-echo-config", LAVA_SHARED_CONFIG=shared) == (0, shared + "\n", "")
    assert dut.run("lava-echo-config", "pdu-outlet", LAVA_SHARED_CONFIG=shared) == (
        0,
        "3 (rack b)\n",
        "",
    )
    assert dut.run("lava-echo-config", "nope", LAVA_SHARED_CONFIG=shared)[0] == 1


def test_vm_helpers_are_the_messages_lava_sends(dut: Dut) -> None:
    rc, out, _ = dut.run("lava-start-vms", TARGET_DEVICE_IP="192.0.2.7")
    assert (rc, out) == (0, "<LAVA_MULTI_NODE> <LAVA_SEND lava_vm_start host_ip=192.0.2.7>\n")
    assert dut.run("lava-start-vms")[1] == "<LAVA_MULTI_NODE> <LAVA_SEND lava_vm_start>\n"
    rc, out, _ = dut.run("lava-wait-for-vms", stdin="<LAVA_WAIT_ALL_COMPLETE>\n")
    assert (rc, out) == (
        0,
        "<LAVA_MULTI_NODE> <LAVA_SEND lava_vm_stop>\n"
        "<LAVA_MULTI_NODE> <LAVA_WAIT_ALL lava_vm_stop>\n",
    )


def test_test_case_output_file_goes_in_the_log_between_its_markers(dut: Dut) -> None:
    (dut.root / "out.txt").write_text("line 1\nline 2\n")
    rc, out, _ = dut.run("lava-test-case", "t", "--result", "pass", "--output", "out.txt")
    assert (rc, out) == (
        0,
        "<LAVA_SIGNAL_STARTTC t>\nline 1\nline 2\n<LAVA_SIGNAL_ENDTC t>\n"
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=t RESULT=pass>\n",
    )
    rc, _, err = dut.run("lava-test-case", "t", "--result", "pass", "--output", "nope.txt")
    assert rc == 1 and "nope.txt" in err


def test_the_collector_keeps_only_whole_attachments() -> None:
    from device_agent.signals import parse_line
    from dispatcher.attachments import AttachmentCollector

    said: list[str] = []
    files = AttachmentCollector(said.append)

    def feed(*lines: str) -> None:
        for line in lines:
            files.handle(parse_line(line), "0_run")  # type: ignore[arg-type]

    ok = base64.b64encode(b"hello").decode()
    feed("<LAVA_SIGNAL_ATTACH START - - 6 short>", f"<LAVA_SIGNAL_ATTACH DATA {ok}>")
    feed("<LAVA_SIGNAL_ATTACH END>")  # 5 bytes arrived, 6 announced
    feed("<LAVA_SIGNAL_ATTACH START - - 5 cut>", f"<LAVA_SIGNAL_ATTACH DATA {ok[:-1]}>")
    feed("<LAVA_SIGNAL_ATTACH END>")  # damaged base64
    feed("<LAVA_SIGNAL_ATTACH START - - 9999999 huge>", "<LAVA_SIGNAL_ATTACH END>")
    feed("<LAVA_SIGNAL_ATTACH START c text/plain 5 good>", f"<LAVA_SIGNAL_ATTACH DATA {ok}>")
    feed("<LAVA_SIGNAL_ATTACH END>", "<LAVA_SIGNAL_ATTACH DATA AAAA>")
    kept = files.take("0_run")
    assert [(f["pathname"], base64.b64decode(f["content"])) for f in kept] == [("good", b"hello")]
    assert files.take("0_run") == []  # handed over once
    assert any("short: not kept: 5 bytes arrived, 6 were announced" in s for s in said)
    assert any("cut: not kept: its base64 is damaged" in s for s in said)
    assert any("huge: not kept: over the limit of 1048576 bytes" in s for s in said)
    assert any("without a start" in s for s in said)


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (["lava-send"], "usage: lava-send <message-id>"),
        (["lava-send", "a b"], "bad message id 'a b'"),
        (["lava-wait"], "usage: lava-wait <message-id>"),
        (["lava-wait-all"], "usage: lava-wait-all <message-id> [<role>]"),
        (["lava-sync"], "usage: lava-sync <message-id>"),
        (["lava-role", "bogus"], "usage: lava-role [list]"),
        (["lava-network", "bogus"], "usage: lava-network broadcast|collect"),
        (["lava-echo-ipv4"], "usage: lava-echo-ipv4 <interface>"),
        (["lava-echo-ipv4", "nosuchif0"], "no IPv4 address on interface 'nosuchif0'"),
        (["lava-test-case"], "Usage: lava-test-case TEST_CASE_ID"),
        (["lava-test-case", "x"], "--result must be specified"),
        (["lava-test-case", "x", "--result", "maybe"], "bad result 'maybe'"),
        (["lava-test-set", "bogus"], "Usage: lava-test-set start NAME"),
        (["lava-test-reference", "x", "--result", "pass"], "Usage: lava-test-reference"),
        (["lava-test-raise"], "Usage: lava-test-raise MESSAGE"),
        (["lava-test-event"], "Usage: lava-test-event TEXT"),
        (["lava-background-process-start", "x"], "usage: lava-background-process-start NAME"),
        (["lava-background-process-stop"], "usage: lava-background-process-stop NAME"),
        (["lava-test-case-attach", "c", "/nonexistent"], "file /nonexistent not found"),
        (["lava-test-run-attach"], "usage: lava-test-run-attach FILE [MIME_TYPE]"),
        (["lava-install-packages"], "usage: lava-install-packages PACKAGE..."),
        (["lava-add-sources"], "usage: lava-add-sources SOURCE..."),
        (["lava-add-keys"], "usage: lava-add-keys KEY..."),
    ],
)
def test_bad_input_to_a_helper_says_what_is_wrong(dut: Dut, call: list[str], says: str) -> None:
    rc, _, err = dut.run(*call)
    assert rc != 0 and says in err, (rc, err)
