"""LAVA's words for our states, and LAVA-style job ids for our jobs and nodes.

Ids: a lavamq job ``J`` is one group of sub-jobs. LAVA gives each node of a
MultiNode job its own id ``J.N``; here ``N`` is the node's place in the group
(0, 1, ... in sub-job order, which is the order of the job file's roles and
counts). ``J`` alone means ``J.0``, as LAVA's ``J`` is its first sub-job. A
single-node job is plain ``J`` (an integer on the wire, as in LAVA).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.errors import BadRequest

_JOB_ID = re.compile(r"^\s*(\d{1,12})(?:\.(\d{1,6}))?\s*$")


@dataclass(frozen=True)
class LavaJobId:
    """A job id as LAVA writes it (``12`` or ``12.1``): the job and, for MultiNode, one node."""

    job_id: int
    node: int | None = None  # None: the job as a whole (its first node)

    @property
    def index(self) -> int:
        """The node's index in its job (0 for the job as a whole)."""
        return self.node or 0


def parse_job_id(value: object) -> LavaJobId:
    """``12``, ``'12'``, ``'12.1'`` → a :class:`LavaJobId`; BadRequest for anything else."""
    if isinstance(value, bool):
        raise BadRequest(f"job id {value!r} is not a job id (use 12 or 12.0)")
    if isinstance(value, int):
        if value < 0:
            raise BadRequest(f"job id {value} is negative")
        return LavaJobId(value)
    match = _JOB_ID.match(str(value)) if isinstance(value, str) else None
    if match is None:
        raise BadRequest(f"job id {value!r} is not a job id (use 12 or 12.0)")
    node = match.group(2)
    return LavaJobId(int(match.group(1)), None if node is None else int(node))


def display_id(job_id: int, index: int, nodes: int) -> int | str:
    """LAVA's id of a node: ``J`` for a single-node job, ``"J.N"`` in a MultiNode one."""
    return job_id if nodes <= 1 else f"{job_id}.{index}"


# --- jobs ---------------------------------------------------------------------

JOB_STATES = ("Submitted", "Scheduling", "Scheduled", "Running", "Canceling", "Finished")
JOB_HEALTHS = ("Unknown", "Complete", "Incomplete", "Canceled")
_FINAL = {"complete": "Complete", "incomplete": "Incomplete", "canceled": "Canceled"}
_SUBJOB_STATE = {
    "queued": "Submitted",
    "assigned": "Scheduled",
    "accepted": "Running",
    "running": "Running",
}


def node_state(
    subjob_state: str, job_state: str, *, ended_after_cancel: bool = True
) -> tuple[str, str]:
    """(LAVA state, LAVA health) of one node from its sub-job's and its job's states.

    A canceled job whose node a dispatcher still runs is ``Canceling`` until
    the dispatcher reports the node's end; a node that ends after the cancel
    is ``Canceled``, as in LAVA (a node released from a MultiNode call by the
    canceled group may well finish its test shell ``complete``).
    """
    if subjob_state in _FINAL:
        if job_state == "canceled" and ended_after_cancel:
            return "Finished", "Canceled"  # a node ended by the cancel was canceled
        return "Finished", _FINAL[subjob_state]
    if job_state == "canceled":
        return "Canceling", "Unknown"
    return _SUBJOB_STATE.get(subjob_state, "Submitted"), "Unknown"


def subjob_states_for(state: str) -> tuple[str, ...]:
    """Our sub-job states behind a LAVA state filter (``RUNNING``, ``finished`` ...)."""
    wanted = state.capitalize()
    if wanted not in JOB_STATES:
        raise BadRequest(f"Invalid state '{state}'")
    return tuple(
        s
        for s in ("queued", "assigned", "accepted", "running", "complete", "incomplete", "canceled")
        if node_state(s, "running")[0] == wanted
    )


def subjob_healths_for(health: str) -> tuple[str, ...]:
    """Our sub-job states behind a LAVA health filter (``COMPLETE`` ...)."""
    wanted = health.capitalize()
    if wanted not in JOB_HEALTHS:
        raise BadRequest(f"Invalid health '{health}'")
    if wanted == "Unknown":
        return ("queued", "assigned", "accepted", "running")
    return tuple(k for k, v in _FINAL.items() if v == wanted)


# --- devices and workers ------------------------------------------------------

_DEVICE_STATE = {"idle": "Idle", "reserved": "Reserved", "running": "Running"}


def device_state(state: str) -> str:
    """Idle, Reserved or Running (an offline or retired device is Idle, as in LAVA)."""
    return _DEVICE_STATE.get(state, "Idle")


def device_health(state: str, health: str) -> str:
    """Good, Unknown, Bad, Maintenance or Retired (an offline device is Bad)."""
    if state == "retired":
        return "Retired"
    if state == "offline":
        return "Bad"
    if health == "maintenance":
        return "Maintenance"
    return {"good": "Good", "bad": "Bad"}.get(health, "Unknown")


def worker_state(state: str) -> str:
    """A host's state as LAVA names a worker's (``Online``/``Offline``)."""
    return "Online" if state == "online" else "Offline"
