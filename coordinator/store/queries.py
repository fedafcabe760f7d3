"""Reading the store: jobs, one job with its sub-jobs, events, and results.

These are the queries every reader shares (the coordinator's RPC, the
server's API and web pages); each returns plain JSON-safe dicts whose keys
are listed in docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from coordinator.store.base import StoreBase
from coordinator.store.models import Event, Group, Job, Result, SubJob
from schemas.errors import JobError


class QueryStore(StoreBase):
    """The store's read API (and the results table's one writer)."""

    def jobs(
        self, states: Iterable[str] = (), limit: int = 50, *, key: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs, optionally only those in ``states``, or with
        the submission key ``key`` (whoever submitted them)."""
        with self.session() as s:
            q = select(Job).order_by(Job.id.desc()).limit(limit)
            states = list(states)
            if states:
                q = q.where(Job.state.in_(states))
            if key:
                q = q.where(Job.submit_key == key)
            return [job_summary(j) for j in s.scalars(q)]

    def job(self, job_id: int) -> dict[str, Any]:
        """One job with its group and sub-jobs; JobError for an unknown id."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobError(f"no job {job_id}")
            group = s.scalar(select(Group).where(Group.job_id == job_id))
            subs = s.scalars(select(SubJob).where(SubJob.job_id == job_id).order_by(SubJob.id))
            out = job_summary(job)
            out.update(
                {
                    "source": job.source,
                    "submitter": job.submitter,
                    "start_time": job.start_time,
                    "end_time": job.end_time,
                    "failure_type": job.failure_type,
                    "group": group.name if group else None,
                    "group_state": group.state if group else None,
                    "join_deadline": group.join_deadline if group else None,
                    "subjobs": [
                        {
                            "id": x.id,
                            "role": x.role,
                            "index": x.role_index,
                            "device_type": x.device_type,
                            "tags": list(x.tags or ()),
                            "device": x.device,
                            "state": x.state,
                            "error_type": x.error_type,
                            "message": x.message,
                        }
                        for x in subs
                    ],
                }
            )
            return out

    def events(self, job_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` events (of one job if given), oldest first."""
        with self.session() as s:
            q = select(Event).order_by(Event.id.desc()).limit(limit)
            if job_id is not None:
                q = q.where(Event.job_id == job_id)
            rows = list(s.scalars(q))
            return [
                {"time": e.time, "kind": e.kind, "state": e.state, "job_id": e.job_id,
                 "device": e.device, "text": e.text}
                for e in reversed(rows)
            ]  # fmt: skip

    def add_result(
        self,
        subjob_id: int,
        test_run: str,
        test_case: str,
        result: str,
        now: float,
        *,
        measurement: float | None = None,
        units: str | None = None,
    ) -> int:
        """Store one test case's result for a sub-job; returns its row id."""
        with self.session() as s:
            if s.get(SubJob, subjob_id) is None:
                raise JobError(f"result for unknown sub-job {subjob_id}")
            row = Result(
                subjob_id=subjob_id,
                test_run=test_run,
                test_case=test_case,
                result=result,
                measurement=measurement,
                units=units,
                time=now,
            )
            s.add(row)
            s.flush()
            return row.id

    def results(self, job_id: int) -> list[dict[str, Any]]:
        """Every stored result of a job's sub-jobs, in the order they were stored."""
        with self.session() as s:
            rows = s.execute(
                select(Result, SubJob.device, SubJob.role)
                .join(SubJob, Result.subjob_id == SubJob.id)
                .where(SubJob.job_id == job_id)
                .order_by(Result.id)
            ).all()
            return [
                {"subjob_id": r.subjob_id, "node": dev, "role": role, "test_run": r.test_run,
                 "test_case": r.test_case, "result": r.result, "measurement": r.measurement,
                 "units": r.units}
                for r, dev, role in rows
            ]  # fmt: skip


def job_summary(job: Job) -> dict[str, Any]:
    """The fields of a job every listing shows."""
    return {
        "id": job.id,
        "name": job.job_name,
        "state": job.state,
        "priority": job.priority,
        "submit_time": job.submit_time,
        "waiting_reason": job.waiting_reason,
        "failure_cause": job.failure_cause,
        "submitter": job.submitter,
        "key": job.submit_key,
    }
