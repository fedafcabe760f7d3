from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dispatcher.joblog import JobLog, cut, mask_secrets, read_records


def test_records_are_json_lines_with_time_level_message(tmp_path: Path) -> None:
    jl = JobLog(tmp_path / "job.log")
    jl.info("start: 1 deploy-image")
    jl.error("boom")
    jl.close()
    lines = (tmp_path / "job.log").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert set(first) == {"time", "level", "message"}
    assert first["level"] == "info" and first["message"] == "start: 1 deploy-image"
    assert [r["level"] for r in read_records(tmp_path / "job.log")] == ["info", "error"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown level 'loud'"):
        JobLog().record("loud", "x")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "git clone https://bob:hunter2@git.example.org/x.git",
            "git clone https://bob:*****@git.example.org/x.git",
        ),
        ("amqp://host1:s3cr3t@127.0.0.1:5672/%2f", "amqp://host1:*****@127.0.0.1:5672/%2f"),
        ("login password=abc123 next", "login password=***** next"),
        ("TOKEN: xyz", "TOKEN: *****"),
        ("no secrets here http://example.org/a:b", "no secrets here http://example.org/a:b"),
    ],
)
def test_secrets_are_masked(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


def test_registered_secret_is_masked_in_stored_records(tmp_path: Path) -> None:
    jl = JobLog(tmp_path / "job.log", secrets=["topsecret"])
    jl.target_bytes(b"echo topsecret\n")
    jl.close()
    assert "topsecret" not in (tmp_path / "job.log").read_text()


def test_long_lines_are_cut_and_say_so() -> None:
    assert cut("x" * 20, 10) == "x" * 10 + " [cut 10 characters]"
    got: list[dict[str, Any]] = []
    jl = JobLog(max_message=50)
    jl.add_listener(got.append)
    jl.info("y" * 80)
    assert got[0]["message"].endswith("[cut 30 characters]")


def test_console_bytes_become_target_lines_across_chunks() -> None:
    got: list[dict] = []
    jl = JobLog()
    jl.add_listener(got.append)
    jl.target_bytes(b"hello wo")
    jl.target_bytes(b"rld\r\nsecond\nprom")
    assert [(r["level"], r["message"]) for r in got] == [
        ("target", "hello world"),
        ("target", "second"),
    ]
    jl.flush_partial()
    assert got[-1]["message"] == "prom"
    jl.target_bytes("caf\u00e9\n".encode()[:4])
    jl.target_bytes("caf\u00e9\n".encode()[4:])
    # a split multi-byte character is decoded per chunk: replacement, never a crash
    assert got[-1]["level"] == "target"


def test_endless_console_line_is_split_into_bounded_records() -> None:
    got: list[dict] = []
    jl = JobLog(max_message=100)
    jl.add_listener(got.append)
    jl.target_bytes(b"z" * 350)
    assert all(len(r["message"]) <= 100 for r in got)
    assert len(got) == 3


def test_a_failing_listener_does_not_stop_logging() -> None:
    jl = JobLog()
    got: list[dict] = []

    def broken(_rec: dict) -> None:
        raise RuntimeError("listener broke")

    jl.add_listener(broken)
    jl.add_listener(got.append)
    jl.info("still here")
    assert got[0]["message"] == "still here"
