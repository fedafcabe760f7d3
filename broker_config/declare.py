"""Apply lavamq's topology to a broker: exchanges, queues, bindings, policies.

``declare_topology`` is idempotent and works on every transport (AMQP
declares). Policies are not AMQP: ``apply_policies`` uses the RabbitMQ
management HTTP API (``http://<host>:15672`` by default, credentials from the
broker URL), the portable choice that needs no shell on the broker host.

Left-overs of a crashed group: its queues expire by the ``lava-group-expiry``
policy (``expires``: unused for 24 h by default). Exchanges cannot expire, so
``sweep_stale_group_exchanges`` deletes every ``lava.group.*`` exchange that
no queue is bound to any more; ``lavamq broker setup`` runs it.

``definitions()`` renders the same topology as a RabbitMQ definitions file
(``broker_config/definitions.json``, for ``rabbitmqctl import_definitions``
and the management UI); ``python -m broker_config.declare`` rewrites it.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from kombu import Exchange, Queue

from broker_config import cluster, errors, topology
from broker_config.broker import Broker
from schemas.errors import InfrastructureError

log = logging.getLogger(__name__)

DEFINITIONS_FILE = Path(__file__).parent / "definitions.json"


def declare_topology(broker: Broker) -> None:
    """Declare every static exchange and queue (with bindings); idempotent."""
    broker.declare(*topology.static_exchanges())
    broker.declare(*topology.static_queues())


def policies(group_expiry_ms: int = topology.DEFAULT_GROUP_EXPIRY_MS) -> list[dict[str, Any]]:
    """The policies lavamq relies on, in the management API's shape."""
    return [
        {
            "name": topology.GROUP_QUEUE_POLICY,
            "pattern": topology.GROUP_QUEUE_POLICY_PATTERN,
            "apply-to": "queues",
            "priority": 0,
            "definition": {"expires": group_expiry_ms},
        }
    ]


class ManagementAPI:
    """The few RabbitMQ management HTTP API calls lavamq needs."""

    def __init__(self, base_url: str, user: str, password: str, vhost: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.password = password
        self.vhost = vhost

    @classmethod
    def from_broker_url(cls, broker_url: str, management_url: str | None = None) -> ManagementAPI:
        """The management API of the broker at ``broker_url`` (its user, vhost and host)."""
        parts = urllib.parse.urlsplit(cluster.first_url(broker_url))
        vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        host = parts.hostname or "127.0.0.1"
        base = management_url or f"http://{host}:15672"
        return cls(
            base,
            urllib.parse.unquote(parts.username or "guest"),
            urllib.parse.unquote(parts.password or "guest"),
            vhost,
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One management API request; the decoded JSON answer (None when empty)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + "/api" + path, data=data, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise errors.from_http(
                exc.code,
                f"RabbitMQ management API {method} {self.base_url}/api{path}: "
                f"HTTP {exc.code} {detail}",
            ) from exc
        except OSError as exc:
            raise errors.ConnectionLost(
                f"RabbitMQ management API at {self.base_url} unreachable: {exc} "
                "(is the rabbitmq_management plugin enabled?)"
            ) from exc
        return json.loads(raw) if raw else None

    def q(self, name: str) -> str:
        """``name`` quoted for a management API path (a vhost ``/`` too)."""
        return urllib.parse.quote(name, safe="")

    def put_policy(self, policy: dict[str, Any]) -> None:
        """Create or replace one policy of the vhost."""
        body = {k: v for k, v in policy.items() if k != "name"}
        self.call("PUT", f"/policies/{self.q(self.vhost)}/{self.q(policy['name'])}", body)

    def list_policies(self) -> list[dict[str, Any]]:
        """The vhost's policies."""
        return self.call("GET", f"/policies/{self.q(self.vhost)}") or []

    def exchanges(self) -> list[dict[str, Any]]:
        """The vhost's exchanges."""
        return self.call("GET", f"/exchanges/{self.q(self.vhost)}") or []

    def bindings_from(self, exchange: str) -> list[dict[str, Any]]:
        """The bindings whose source is ``exchange``."""
        path = f"/exchanges/{self.q(self.vhost)}/{self.q(exchange)}/bindings/source"
        return self.call("GET", path) or []

    def delete_exchange(self, exchange: str) -> None:
        """Delete ``exchange`` if nothing is bound to it any more."""
        self.call("DELETE", f"/exchanges/{self.q(self.vhost)}/{self.q(exchange)}?if-unused=true")


def apply_policies(
    api: ManagementAPI, group_expiry_ms: int = topology.DEFAULT_GROUP_EXPIRY_MS
) -> list[str]:
    """Create or update lavamq's policies; returns their names."""
    names = []
    for policy in policies(group_expiry_ms):
        api.put_policy(policy)
        names.append(policy["name"])
    return names


def sweep_stale_group_exchanges(api: ManagementAPI) -> list[str]:
    """Delete ``lava.group.*`` exchanges no queue is bound to (their group is gone)."""
    deleted = []
    for exchange in api.exchanges():
        name = exchange.get("name", "")
        if not topology.is_group_name(name):
            continue
        if api.bindings_from(name):
            continue
        try:
            api.delete_exchange(name)
        except InfrastructureError as exc:
            log.warning("cannot delete stale exchange %s: %s", name, exc)
            continue
        deleted.append(name)
    return deleted


# --- definitions.json -----------------------------------------------------


def _exchange_def(exchange: Exchange, vhost: str) -> dict[str, Any]:
    return {
        "name": exchange.name,
        "vhost": vhost,
        "type": exchange.type,
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "internal": False,
        "arguments": {},
    }


def _queue_def(queue: Queue, vhost: str) -> dict[str, Any]:
    return {
        "name": queue.name,
        "vhost": vhost,
        "durable": queue.durable,
        "auto_delete": queue.auto_delete,
        "arguments": dict(getattr(queue, "queue_arguments", None) or {}),
    }


def _binding_def(queue: Queue, vhost: str) -> dict[str, Any]:
    assert queue.exchange is not None
    return {
        "source": queue.exchange.name,
        "vhost": vhost,
        "destination": queue.name,
        "destination_type": "queue",
        "routing_key": queue.routing_key or "",
        "arguments": {},
    }


def definitions(
    vhost: str = "/", group_expiry_ms: int = topology.DEFAULT_GROUP_EXPIRY_MS
) -> dict[str, Any]:
    """The static topology and policies as a RabbitMQ definitions document."""
    return {
        "rabbitmq_version": "3.12.0",
        "vhosts": [{"name": vhost}],
        "exchanges": [_exchange_def(e, vhost) for e in topology.static_exchanges()],
        "queues": [_queue_def(q, vhost) for q in topology.static_queues()],
        "bindings": [_binding_def(q, vhost) for q in topology.static_queues()],
        "policies": [{"vhost": vhost, **p} for p in policies(group_expiry_ms)],
    }


def render_definitions(vhost: str = "/") -> str:
    """``definitions.json`` as text, sorted: ``--check`` compares it with the file in git."""
    return json.dumps(definitions(vhost), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m broker_config.declare [--check]``: rewrite (or check) definitions.json."""
    args = sys.argv[1:] if argv is None else argv
    text = render_definitions()
    if "--check" in args:
        current = DEFINITIONS_FILE.read_text() if DEFINITIONS_FILE.exists() else ""
        if current != text:
            print(f"{DEFINITIONS_FILE} is out of date: run python -m broker_config.declare")
            return 1
        return 0
    DEFINITIONS_FILE.write_text(text)
    print(f"wrote {DEFINITIONS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
