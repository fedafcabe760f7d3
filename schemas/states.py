"""The states a job, a sub-job, a device and a host move through.

One ``StrEnum`` each, shared by the store (which writes them), the messages
(which validate them) and every reader (CLI, server, tests). Members are
strings, so they compare equal to, and are stored and sent as, their values.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """A job's state, as ``lavamq jobs`` shows it."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    CANCELED = "canceled"


class SubJobState(StrEnum):
    """A sub-job's state: one node of a job's group, on one device."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    RUNNING = "running"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    CANCELED = "canceled"


class DeviceState(StrEnum):
    """Whether a device can take a sub-job, has one, or is out of the lab."""

    IDLE = "idle"
    RESERVED = "reserved"
    RUNNING = "running"
    OFFLINE = "offline"
    RETIRED = "retired"


class DeviceHealth(StrEnum):
    """A device's health: only ``good`` devices are scheduled."""

    GOOD = "good"
    BAD = "bad"
    UNKNOWN = "unknown"


class HostState(StrEnum):
    """Whether a dispatcher host is heartbeating."""

    ONLINE = "online"
    OFFLINE = "offline"


#: a job or sub-job in one of these states never changes again
FINAL_JOB_STATES: tuple[JobState, ...] = (
    JobState.COMPLETE,
    JobState.INCOMPLETE,
    JobState.CANCELED,
)
FINAL_SUBJOB_STATES: tuple[SubJobState, ...] = (
    SubJobState.COMPLETE,
    SubJobState.INCOMPLETE,
    SubJobState.CANCELED,
)
#: the states a dispatcher may report for a sub-job
REPORTED_SUBJOB_STATES: tuple[SubJobState, ...] = (
    SubJobState.ACCEPTED,
    SubJobState.RUNNING,
    *FINAL_SUBJOB_STATES,
)
#: the order a sub-job moves through before it ends; a report never moves it backwards
SUBJOB_ORDER: dict[str, int] = {
    SubJobState.QUEUED: 0,
    SubJobState.ASSIGNED: 1,
    SubJobState.ACCEPTED: 2,
    SubJobState.RUNNING: 3,
}
