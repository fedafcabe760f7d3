"""A dispatcher registers its host again after its broker connection comes back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from crashlab import host_toml
from faults import BrokerProxy, ServiceProcess, record_reliability, wait_for

from coordinator.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HOST = "rereg-host"
DEVICES = [("rereg-01", "side-a"), ("rereg-02", "side-b")]


def coordinator(url: str, db_url: str, name: str) -> ServiceProcess:
    return ServiceProcess(
        ["coordinator", "--broker", url, "--db", db_url, "--schedule-interval", "0.2"],
        "lavamq coordinator ready",
        name=name,
    )


def known_devices(db_url: str) -> set[str]:
    store = Store(db_url, run_migrations=False)
    try:
        return {d["name"] for d in store.devices() if d["state"] == "idle"}
    finally:
        store.close()


def test_dispatcher_registers_again_after_reconnecting(rabbit_url: str, tmp_path: Path) -> None:
    """Failure covered: the coordinator lost its state (restarted on an empty
    store) while a dispatcher kept running; the dispatcher's heartbeats are
    then ignored (its host is unknown) and its devices never come back. After
    its broker connections are cut (``BrokerProxy.outage``) and re-established,
    the dispatcher sends ``host-register`` again and the new coordinator sees
    every device.
    """
    started = time.monotonic()
    first_db = f"sqlite:///{tmp_path / 'first.sqlite'}"
    second_db = f"sqlite:///{tmp_path / 'second.sqlite'}"
    names = {name for name, _ in DEVICES}
    with BrokerProxy() as proxy:
        first = coordinator(rabbit_url, first_db, "coordinator (first)")
        first.start(60)
        cfg = host_toml(tmp_path, HOST, proxy.url(rabbit_url), DEVICES, heartbeat_interval=0.3)
        dispatcher = ServiceProcess(
            ["dispatcher", "--config", str(cfg)], f"lavamq dispatcher {HOST} ready", name=HOST
        )
        dispatcher.start(60)
        second = coordinator(rabbit_url, second_db, "coordinator (second)")
        try:
            wait_for(lambda: names <= known_devices(first_db), 30, "devices in the first store")
            # the coordinator loses everything: a new one on an empty store
            first.stop()
            second.start(60)
            second.wait_line(f"heartbeat from unregistered host {HOST} ignored", 15)
            assert not known_devices(second_db)

            cut = proxy.outage(refuse_attempts=2)
            assert cut >= 2  # the device-queue consumer's and the control publisher's
            wait_for(
                lambda: names <= known_devices(second_db),
                20,
                f"{HOST}'s devices registered again\n{''.join(dispatcher.output[-30:])}",
            )
            assert "registering rereg-host again" in dispatcher.text()
        finally:
            dispatcher.stop()
            second.stop()
            first.stop()
    record_reliability(
        {
            "test": "re-register after reconnect",
            "fault": f"coordinator restarted on an empty store, then a broker outage via proxy "
            f"({cut} connections cut, {proxy.refused} reconnects refused)",
            "faults": 2,
            "sent": f"host-register of {len(names)} devices",
            "deliveries_expected": len(names),
            "lost": len(names - known_devices(second_db)),
            "duplicated": 0,
            "duplicates_dropped": "-",
            "seconds": round(time.monotonic() - started, 1),
        }
    )
