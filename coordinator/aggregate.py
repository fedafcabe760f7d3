"""Result aggregation: ``lava.results`` into the store, once, and one bundle per group.

Every ``test-result`` message a dispatcher publishes (schemas/messages/console.py)
carries a unique ``id``. :meth:`ResultsAggregator.record` stores the result and
a receipt for that id in one transaction, so a redelivered message (a
consumer reconnect, a requeue after a store hiccup) is stored exactly once.
The sub-job end states reach the store through the coordinator's
``subjob-state`` handling (``Store.subjob_state``, itself idempotent).

:meth:`ResultsAggregator.bundle` builds the group's result bundle from the
store with :func:`coordinator.results.build_bundle`: per node (device, role),
per test run, per test case, with measurements and units, the job and group
status and the first failure. ``results_complete`` in the bundle says whether
every sub-job that ran has delivered its last result: the runner's
``lava/job`` result is always the last one a sub-job publishes, so a waiting
client knows when the bundle is final rather than guessing with a sleep.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Float, Integer, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import Base
from coordinator.results import CaseResult, NodeOutcome, build_bundle
from coordinator.store import FINAL_JOB_STATES, Job, Result, Store, SubJob
from coordinator.store.lab import check_subjob_host
from schemas.errors import JobError

log = logging.getLogger(__name__)

#: the result every sub-job's runner publishes last (suite, case)
LAST_RESULT = ("lava", "job")
#: after a job ended, how long a sub-job's missing last result is waited for
RESULTS_GRACE_SECONDS = 30.0


class ResultReceipt(Base):
    """One stored ``test-result`` message (tables from revisions 0004 and 0006).

    Keyed by (sub-job, sender's broker user, message id): ids are unique only
    within what one sender sends for one sub-job, so no sender can use up an
    id another's genuine result will carry.
    """

    __tablename__ = "result_receipts"
    subjob_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sender: Mapped[str] = mapped_column(String(200), primary_key=True, server_default="")
    message_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    result_id: Mapped[int] = mapped_column(Integer)
    time: Mapped[float] = mapped_column(Float)


def _subjob_id(body: dict[str, Any]) -> int:
    try:
        return int(body["subjob"])
    except (TypeError, ValueError):
        raise JobError(
            f"test result {body.get('id')!r}: sub-job {body.get('subjob')!r} is not a number"
        ) from None


class ResultsAggregator:
    """Stores test results idempotently and builds result bundles from the store."""

    def __init__(
        self,
        store: Store,
        *,
        grace: float = RESULTS_GRACE_SECONDS,
        clock: Any = time.time,
    ) -> None:
        self.store = store
        self.grace = grace
        self.clock = clock
        self.recorded = 0
        self.duplicates = 0

    # --- consuming --------------------------------------------------------

    def record(
        self,
        body: dict[str, Any],
        now: float | None = None,
        *,
        sender: str | None = None,
        host: str | None = None,
    ) -> bool:
        """Store one ``test-result`` body; False when it was stored before.

        ``sender``: the delivery's validated broker user (receipts are scoped
        by it); ``host``: the host that user is, if it is a host's: the result's
        sub-job must then run on a device of that host (``Unauthorized``
        otherwise). A result naming an unknown sub-job, a sub-job of another
        job is a JobError (the consumer dead-letters it).
        """
        now = self.clock() if now is None else now
        message_id = str(body["id"])
        subjob_id = _subjob_id(body)
        receipt_key = (subjob_id, sender or "", message_id)
        try:
            with self.store.session() as s:
                if s.get(ResultReceipt, receipt_key) is not None:
                    self.duplicates += 1
                    return False
                sub = s.get(SubJob, subjob_id)
                if sub is None:
                    raise JobError(f"test result {message_id}: no sub-job {subjob_id}")
                if host is not None:
                    check_subjob_host(s, sub, host, "test-result", sender)
                if str(sub.job_id) != str(body["job"]):
                    raise JobError(
                        f"test result {message_id}: sub-job {subjob_id} belongs to job "
                        f"{sub.job_id}, not {body['job']}"
                    )
                row = Result(
                    subjob_id=subjob_id,
                    test_run=str(body["suite"])[:200],
                    test_case=str(body["case"])[:500],
                    result=str(body["result"]),
                    measurement=body.get("measurement"),
                    units=body.get("units"),
                    time=now,
                    extra=dict(body.get("extra") or {}) or None,
                    attachments=list(body.get("attachments") or []) or None,
                )
                s.add(row)
                s.flush()
                s.add(
                    ResultReceipt(
                        subjob_id=subjob_id,
                        sender=sender or "",
                        message_id=message_id,
                        job_id=sub.job_id,
                        result_id=row.id,
                        time=now,
                    )
                )
        except IntegrityError:
            # another consumer stored the same message between our check and commit
            with self.store.session() as s:
                if s.get(ResultReceipt, receipt_key) is None:
                    raise
            self.duplicates += 1
            return False
        self.recorded += 1
        return True

    # --- the bundle -------------------------------------------------------

    def bundle(self, job_id: int, now: float | None = None) -> dict[str, Any]:
        """The job's result bundle as it is in the store now (JobError for an unknown job)."""
        now = self.clock() if now is None else now
        with self.store.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobError(f"no job {job_id}")
            subs = list(
                s.scalars(select(SubJob).where(SubJob.job_id == job_id).order_by(SubJob.id))
            )
            rows = list(
                s.scalars(
                    select(Result)
                    .where(Result.subjob_id.in_([x.id for x in subs]))
                    .order_by(Result.id)
                )
            )
            job_info: dict[str, Any] = {
                "id": job.id,
                "name": job.job_name,
                "state": job.state,
                "submit_time": job.submit_time,
                "start_time": job.start_time,
                "end_time": job.end_time,
                "failure_type": job.failure_type,
                "failure_cause": job.failure_cause,
            }
            node_name = {x.id: _node_name(x) for x in subs}
            nodes = [
                NodeOutcome(
                    node=node_name[x.id],
                    role=x.role,
                    device=x.device or "-",
                    state=x.state,
                    error_type=x.error_type,
                    message=x.message,
                    ended_at=x.ended_at,
                )
                for x in subs
            ]
            cases = [
                CaseResult(
                    node=node_name[r.subjob_id],
                    test_run=r.test_run,
                    case=r.test_case,
                    result=r.result,
                    measurement=r.measurement,
                    units=r.units,
                    extra=r.extra,
                    attachments=r.attachments or (),
                )
                for r in rows
            ]
            finished = {r.subjob_id for r in rows if (r.test_run, r.test_case) == LAST_RESULT}
            # a sub-job that was never taken by a dispatcher publishes nothing
            owing = [x for x in subs if x.accepted_at is not None and x.id not in finished]
            extra = {
                node_name[x.id]: {
                    "subjob_id": x.id,
                    "index": x.role_index,
                    "device_type": x.device_type,
                    "is_slave": x.is_slave,
                    "ended_at": x.ended_at,
                }
                for x in subs
            }
        bundle = build_bundle(job_info, nodes, cases)
        head = bundle["job"]
        final = job_info["state"] in FINAL_JOB_STATES
        # the store's job state is the authority (a canceled job stays canceled)
        head["status"] = job_info["state"]
        head["passed"] = head["status"] == "complete" and bundle["summary"]["fail"] == 0
        end = job_info["end_time"]
        head["results_complete"] = final and (
            not owing or (end is not None and now - float(end) >= self.grace)
        )
        head["results_missing"] = sorted(node_name[x.id] for x in owing)
        for entry in bundle["nodes"]:
            entry.update(extra.get(entry["node"], {}))
        return bundle


def _node_name(sub: SubJob) -> str:
    """A node is named after its device; a sub-job that never got one by role and index."""
    return sub.device or f"{sub.role}-{sub.role_index}"


__all__ = [
    "LAST_RESULT",
    "RESULTS_GRACE_SECONDS",
    "ResultReceipt",
    "ResultsAggregator",
]
