"""broker_config.errors: each client library's failure maps to one type, by code, not text."""

from __future__ import annotations

import socket
from pathlib import Path

import amqp.exceptions
import pytest
from kombu.exceptions import ChannelError

from broker_config import errors
from device_agent.qemu.process import PortInUse, QemuProcess
from schemas.errors import InfrastructureError


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (amqp.exceptions.NotFound("NOT_FOUND - no queue 'q'"), errors.NotFound),
        (amqp.exceptions.AccessRefused("ACCESS_REFUSED"), errors.AccessRefused),
        (amqp.exceptions.PreconditionFailed("PRECONDITION_FAILED"), errors.PreconditionFailed),
        (amqp.exceptions.ResourceLocked("RESOURCE_LOCKED"), errors.BrokerError),
        # memory:// gives the code as a string
        (ChannelError("no queue", (50, 10), "Channel.queue_declare", "404"), errors.NotFound),
    ],
)
def test_amqp_channel_errors_map_by_reply_code(raised: Exception, expected: type) -> None:
    error = errors.from_amqp(raised, "declare queue 'q'")
    assert type(error) is expected
    assert isinstance(error, InfrastructureError)
    assert error.message.startswith("declare queue 'q': broker refused: ")
    assert error.__cause__ is raised


class PikaLikeClosed(Exception):
    """Shaped as pika's ChannelClosedByBroker: the code as an attribute, any text."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_code, reply_text)
        self.reply_code = reply_code


def test_text_plays_no_part() -> None:
    # a 403 whose text says NOT_FOUND is still a refusal, and text alone maps to nothing
    assert type(errors.from_amqp(PikaLikeClosed(403, "NOT_FOUND 404"), "x")) is (
        errors.AccessRefused
    )
    assert type(errors.from_amqp(RuntimeError("404 NOT_FOUND"), "x")) is errors.BrokerError
    assert errors.is_not_found(PikaLikeClosed(404, "anything"))
    assert not errors.is_not_found(RuntimeError("HTTP 404 NOT_FOUND"))


def test_management_api_statuses() -> None:
    assert type(errors.from_http(404, "m")) is errors.NotFound
    assert type(errors.from_http(401, "m")) is errors.AccessRefused
    assert type(errors.from_http(403, "m")) is errors.AccessRefused
    assert type(errors.from_http(500, "m")) is errors.BrokerError


def test_qemu_start_failing_on_a_taken_port_is_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as holder:
        # bound, not listening: QEMU's console port cannot be bound, and nothing answers on it
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        proc = QemuProcess(
            "vm1",
            ["false"],
            pidfile=tmp_path / "vm1.pid",
            qmp=tmp_path / "vm1.qmp",
            port=port,
            logfile=tmp_path / "qemu.log",
        )
        with pytest.raises(PortInUse):
            proc.start()
    # the same failure on a free port is some other start failure
    with pytest.raises(InfrastructureError) as info:
        proc.start()
    assert not isinstance(info.value, PortInUse)
