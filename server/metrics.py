"""Prometheus ``/metrics``: the lab's state from the store, its traffic from the live stream.

At each scrape a collector reads the store: jobs by state, queued sub-jobs
and the age of the oldest per device type, devices by state, and each
host's heartbeat age. The live stream (server/live.py) feeds the counters
and the histogram as it happens: console bytes, ``lava-send`` calls, and
how long after the last node arrived a ``lava-sync`` was released (read
from the nodes' job logs, as the timeline does). ``rate()`` of a counter
gives bytes/s and sends/s.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from coordinator.store import Device, Job, SubJob
from server.queries import LabReader
from server.timeline import Timeline

#: how many jobs' timelines the latency histogram keeps while their syncs run
MAX_TIMELINES = 2000
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector(Collector):
    """Gauges read from the store at each scrape (a few grouped queries)."""

    def __init__(self, reader: LabReader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The store's gauges (jobs, devices, the queue) at scrape time."""
        now = time.time()
        with self.reader.session() as s:
            jobs = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
            devices = s.execute(select(Device.state, func.count()).group_by(Device.state)).all()
            queue = s.execute(
                select(SubJob.device_type, func.count(SubJob.id), func.min(Job.submit_time))
                .join(Job, SubJob.job_id == Job.id)
                .where(Job.state == "queued")
                .group_by(SubJob.device_type)
            ).all()
        hosts = self.reader.hosts()
        by_state = GaugeMetricFamily("lavamq_jobs", "Jobs (groups) by state", labels=["state"])
        for state, count in jobs:
            by_state.add_metric([str(state)], int(count))
        yield by_state
        depth = GaugeMetricFamily(
            "lavamq_queue_depth", "Queued sub-jobs by device type", labels=["device_type"]
        )
        oldest = GaugeMetricFamily(
            "lavamq_queue_oldest_seconds",
            "Age of the oldest queued sub-job by device type",
            labels=["device_type"],
        )
        for device_type, count, first in queue:
            depth.add_metric([str(device_type or "-")], int(count))
            oldest.add_metric([str(device_type or "-")], max(0.0, now - float(first)))
        yield depth
        yield oldest
        dev = GaugeMetricFamily("lavamq_devices", "Devices by state", labels=["state"])
        for state, count in devices:
            dev.add_metric([str(state)], int(count))
        yield dev
        beat = GaugeMetricFamily(
            "lavamq_host_heartbeat_age_seconds",
            "Seconds since each dispatcher host's last heartbeat",
            labels=["host"],
        )
        for h in hosts:
            beat.add_metric([h["name"]], max(0.0, now - float(h["last_heartbeat"])))
        yield beat


class Metrics:
    """The registry behind ``/metrics`` and the live listener that feeds it."""

    def __init__(self, reader: LabReader) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(reader))
        self.console_bytes = Counter(
            "lavamq_console_bytes", "Console bytes received from boards", registry=self.registry
        )
        self.sends = Counter("lavamq_sends", "lava-send calls", registry=self.registry)
        self.sync_latency = Histogram(
            "lavamq_sync_release_seconds",
            "Seconds from the last node's arrival at a lava-sync to its release",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self._timelines: OrderedDict[str, Timeline] = OrderedDict()

    def on_live(self, kind: str, body: dict[str, Any]) -> None:
        """A :class:`server.live.LiveTap` listener."""
        if kind != "log-batch":
            return
        records = body.get("records") or []
        size = sum(
            len(str(r.get("message", "")).encode("utf-8")) + 1
            for r in records
            if r.get("level") == "target"
        )
        if size:
            self.console_bytes.inc(size)
        job = str(body.get("job"))
        timeline = self._timelines.get(job)
        if timeline is None:
            timeline = self._timelines[job] = Timeline({})
            while len(self._timelines) > MAX_TIMELINES:
                self._timelines.popitem(last=False)
        sends, released = timeline.sends, len(timeline.release_latencies)
        node = str(body.get("node"))
        for rec in records:
            timeline.add(node, rec)
        if timeline.sends > sends:
            self.sends.inc(timeline.sends - sends)
        for latency in timeline.release_latencies[released:]:
            self.sync_latency.observe(latency)

    def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
