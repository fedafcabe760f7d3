"""By hand: a transient lava-sync release dropped by a REAL RabbitMQ restart still arrives.

RESTARTS THE LOCAL RABBITMQ (``rabbitmqctl stop_app`` / ``start_app``): run it
only on a development machine, never beside a test suite or a lab::

    python scripts/broker_restart_check.py

Node ``a`` (through a TCP proxy that can keep it cut off) waits in
``lava-sync``; while it is cut off, node ``b``'s acknowledgement completes
the barrier and the barrier's transient release lands in ``a``'s queue.
RabbitMQ is restarted, which drops that copy (printed), then ``a`` may
reconnect: its receiver asks the barrier again (``multinode-query``) and the
sync returns. Exits 1 if it does not within 90 s. The barrier runs in this
process with SQLite in a temporary directory; the vhost is made and removed
through the management API.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from faults import BrokerProxy  # noqa: E402

from broker_config import topology  # noqa: E402
from broker_config.broker import Broker  # noqa: E402
from broker_config.declare import ManagementAPI, declare_topology  # noqa: E402
from coordinator.barrier import BarrierService  # noqa: E402
from coordinator.groups import create_group, end_group  # noqa: E402
from device_agent.multinode import MultinodeClient  # noqa: E402
from schemas.messages.multinode import MultinodeSyncSchema  # noqa: E402

MEMBERS = {"a": "server", "b": "client"}


def queued(broker: Broker, group: str, node: str) -> int:
    name = topology.group_queue_name(group, node)
    return int(broker.channel().queue_declare(name, passive=True)[1])


def main() -> int:
    vhost = f"lavamq-restart-{uuid.uuid4().hex[:6]}"
    url = f"amqp://guest:guest@127.0.0.1:5672/{urllib.parse.quote(vhost, safe='')}"
    api = ManagementAPI.from_broker_url(url)
    quoted = urllib.parse.quote(vhost, safe="")
    api.call("PUT", f"/vhosts/{quoted}", {})
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    api.call("PUT", f"/permissions/{quoted}/guest", everything)
    tmp = tempfile.mkdtemp(prefix="lavamq-restart-")
    broker = Broker(url)
    declare_topology(broker)
    barrier = BarrierService(url, f"sqlite:///{tmp}/barrier.sqlite")
    barrier.start()
    group = f"restart{uuid.uuid4().hex[:6]}"
    create_group(broker, group, MEMBERS, timeout=120)
    proxy = BrokerProxy()
    a = MultinodeClient(proxy.url(url), group, "a", MEMBERS, timeout=120)
    returned: list[float] = []

    def wait_sync() -> None:
        a.sync("go")
        returned.append(time.time())

    waiter = threading.Thread(target=wait_sync)
    try:
        waiter.start()
        while not a.waiting_for():
            time.sleep(0.01)
        proxy.down()
        broker.publish(
            topology.BARRIER_EXCHANGE_NAME,
            topology.barrier_routing_key(group),
            MultinodeSyncSchema(),
            {"group": group, "node": "b", "message_id": "go", "generation": 1},
        )
        deadline = time.time() + 10
        while queued(broker, group, "a") == 0 and time.time() < deadline:
            time.sleep(0.05)
        print(f"release queued for a while a is cut off: {queued(broker, group, 'a')}")
        broker.close()
        started = time.time()
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
        print(f"RabbitMQ restarted in {time.time() - started:.1f} s")
        broker = Broker(url)
        print(f"messages in a's queue after the restart: {queued(broker, group, 'a')}")
        proxy.up()
        back = time.time()
        waiter.join(90)
        if not returned:
            print("FAILED: a's lava-sync did not return within 90 s of reconnecting")
            return 1
        print(
            f"a's lava-sync returned {returned[0] - back:.2f} s after it could reconnect "
            f"(receiver connections: {a._receiver.connects})"
        )
        return 0
    finally:
        proxy.up()
        a.close()
        end_group(broker, group, MEMBERS)
        barrier.stop()
        broker.close()
        proxy.close()
        api.call("DELETE", f"/vhosts/{quoted}")


if __name__ == "__main__":
    sys.exit(main())
