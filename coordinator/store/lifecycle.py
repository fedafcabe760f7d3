"""A started group's life in the store: dispatcher reports, cancels, lost hosts,
missed join deadlines, and what a restarted coordinator must redo.

Each transition returns a :class:`GroupOutcome`: what it means for the
group's broker side (fail its peers, delete its topology), which the service
applies after the transaction has committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.store.base import StoreBase
from coordinator.store.intake import started_subjob
from coordinator.store.models import Device, DeviceType, Group, GroupPhase, Host, Job, SubJob
from coordinator.store.views import GroupOutcome, StartedGroup, merge_outcomes
from schemas.errors import JobError
from schemas.states import (
    FINAL_JOB_STATES,
    FINAL_SUBJOB_STATES,
    SUBJOB_ORDER,
    DeviceState,
    HostState,
    JobState,
    SubJobState,
)

log = logging.getLogger(__name__)

#: a sub-job in one of these states holds its device and has not ended
LIVE_SUBJOB_STATES = (SubJobState.ASSIGNED, SubJobState.ACCEPTED, SubJobState.RUNNING)
#: not yet taken by a dispatcher: ends at once on a cancel
UNTAKEN_SUBJOB_STATES = (SubJobState.QUEUED, SubJobState.ASSIGNED)


def failure_reason(sub: SubJob, what: str = "failed") -> str:
    """How a node's bad end is told to its peers."""
    return (
        f"node {sub.device} (role {sub.role}) {what}: {sub.message or sub.error_type or sub.state}"
    )


def _outcome(job: Job, group: Group, subs: Sequence[SubJob]) -> GroupOutcome:
    """The group's outcome as it stands, before this transition adds to it."""
    return GroupOutcome(
        job.id,
        group.name,
        job_state=job.state,
        nodes=sorted(x.device for x in subs if x.device),
        created=group.started_at is not None,
    )


class LifecycleStore(StoreBase):
    """The transitions of a started group, each one transaction."""

    def subjob_state(
        self,
        subjob_id: int,
        state: str,
        now: float,
        *,
        error_type: str | None = None,
        message: str | None = None,
        replay: bool = False,
    ) -> GroupOutcome | None:
        """Apply a dispatcher's report. Idempotent; never moves a sub-job backwards.

        ``replay``: the report is a redelivery (the coordinator may have died
        after committing it and before acting on the broker); a report that
        changes nothing then returns the group's outcome again, so its broker
        side (failure, clean-up) is done at least once. Both are idempotent.
        """
        with self.session() as s:
            sub = s.get(SubJob, subjob_id)
            if sub is None:
                log.warning("state %s for unknown sub-job %s ignored", state, subjob_id)
                return None
            if sub.state in FINAL_SUBJOB_STATES:
                return self._replayed_outcome(s, sub) if replay else None
            group = s.get(Group, sub.group_id)
            assert group is not None
            if state in FINAL_SUBJOB_STATES:
                outcome = self._end_subjob(s, sub, state, error_type, message, now)
                # a canceled node (its dispatcher stopping) fails its peers too:
                # they would wait for it until their MultiNode timeout
                if state in (SubJobState.INCOMPLETE, SubJobState.CANCELED) and not outcome.ended:
                    what = "failed" if state == SubJobState.INCOMPLETE else "was canceled"
                    outcome.fail_reason = outcome.fail_reason or failure_reason(sub, what)
                    outcome.fail_node = sub.device
                return outcome
            if SUBJOB_ORDER.get(state, 0) <= SUBJOB_ORDER.get(sub.state, 0):
                return None
            if sub.state == SubJobState.QUEUED:
                log.warning("sub-job %s reported %s before it was assigned", sub.id, state)
                return None
            sub.state = state
            if state == SubJobState.ACCEPTED:
                sub.accepted_at = now
            job = s.get(Job, sub.job_id)
            assert job is not None
            self._event(
                s, now, "subjob", state, f"sub-job {sub.id} ({sub.role}) {state} on {sub.device}",
                job_id=sub.job_id, subjob_id=sub.id, device=sub.device,
            )  # fmt: skip
            if sub.device:
                dev = self._device(s, sub.device)
                if dev is not None and dev.current_subjob_id == sub.id:
                    dev.state = DeviceState.RUNNING
            others = s.scalars(select(SubJob).where(SubJob.group_id == group.id)).all()
            # joined: accepted, running, or already ended (a node may finish
            # or fail before a slow peer's dispatcher accepts)
            if group.state == GroupPhase.JOINING and all(
                o.state not in UNTAKEN_SUBJOB_STATES for o in others
            ):
                group.state = GroupPhase.RUNNING
                group.join_deadline = None
                if job.state == JobState.SCHEDULED:
                    job.state = JobState.RUNNING
                    self._event(
                        s, now, "job", JobState.RUNNING, f"job {job.id}: every node joined",
                        job_id=job.id,
                    )  # fmt: skip
            return GroupOutcome(job.id, group.name, job_state=job.state, created=True)

    def _replayed_outcome(self, s: Session, sub: SubJob) -> GroupOutcome:
        """The broker side of a sub-job's end, again (nothing in the store changes)."""
        job = s.get(Job, sub.job_id)
        group = s.get(Group, sub.group_id)
        assert job is not None and group is not None
        subs = s.scalars(select(SubJob).where(SubJob.group_id == group.id)).all()
        outcome = _outcome(job, group, subs)
        outcome.ended = group.state == GroupPhase.ENDED
        if sub.state == SubJobState.INCOMPLETE:
            outcome.fail_reason = failure_reason(sub)
            outcome.fail_node = sub.device
        return outcome

    def unfinished_groups(self) -> tuple[list[StartedGroup], list[GroupOutcome]]:
        """What a restarted coordinator must redo on the broker for groups it started.

        Returns the groups still joining (with every sub-job and its state: the
        ``assigned`` ones may never have been published) and, for groups not
        ended that already failed (a sub-job ended badly, or the job was
        canceled), the outcome whose failure the peers must see.
        """
        joining: list[StartedGroup] = []
        failed: list[GroupOutcome] = []
        with self.session() as s:
            groups = s.scalars(
                select(Group)
                .where(Group.state.in_((GroupPhase.JOINING, GroupPhase.RUNNING)))
                .order_by(Group.id)
            ).all()
            for group in groups:
                job = s.get(Job, group.job_id)
                assert job is not None
                subs = s.scalars(
                    select(SubJob).where(SubJob.group_id == group.id).order_by(SubJob.id)
                ).all()
                nodes = sorted(x.device for x in subs if x.device)
                bad = sorted(
                    (x for x in subs if x.state in (SubJobState.INCOMPLETE, SubJobState.CANCELED)),
                    key=lambda x: (x.ended_at or 0.0, x.id),
                )
                if job.state == JobState.CANCELED or bad:
                    first = bad[0] if bad else None
                    if job.state == JobState.CANCELED or first is None:
                        reason = f"job {job.id} canceled: {job.failure_cause}"
                    else:
                        reason = failure_reason(first)
                    outcome = _outcome(job, group, subs)
                    outcome.fail_reason = reason
                    outcome.fail_node = first.device if first is not None else None
                    outcome.created = True
                    failed.append(outcome)
                if group.state != GroupPhase.JOINING or group.join_deadline is None:
                    continue
                devices = {
                    d.name: (t, h)
                    for d, t, h in s.execute(
                        select(Device, DeviceType.name, Host.name)
                        .join(DeviceType, Device.device_type_id == DeviceType.id)
                        .outerjoin(Host, Device.host_id == Host.id)
                        .where(Device.name.in_(nodes))
                    ).all()
                }
                info = StartedGroup(
                    job.id, job.job_name, group.name, job.plan, group.join_deadline, []
                )
                for sub in subs:
                    if not sub.device or sub.device not in devices:
                        continue
                    dtype, host = devices[sub.device]
                    info.subjobs.append(started_subjob(sub, sub.device, dtype, host))
                joining.append(info)
        return joining, failed

    def _end_subjob(
        self,
        s: Session,
        sub: SubJob,
        state: str,
        error_type: str | None,
        message: str | None,
        now: float,
    ) -> GroupOutcome:
        sub.state = state
        sub.ended_at = now
        sub.error_type = error_type
        sub.message = message
        text = f"sub-job {sub.id} ({sub.role}) {state}"
        if message:
            text += f": {message}"
        self._event(
            s, now, "subjob", state, text, job_id=sub.job_id, subjob_id=sub.id, device=sub.device
        )
        if sub.device:
            dev = self._device(s, sub.device)
            if dev is not None and dev.current_subjob_id == sub.id:
                dev.current_job_id = dev.current_subjob_id = None
                if dev.state in (DeviceState.RESERVED, DeviceState.RUNNING):
                    dev.state = DeviceState.IDLE
                    self._event(
                        s, now, "device", DeviceState.IDLE,
                        f"device {dev.name} freed by job {sub.job_id}",
                        job_id=sub.job_id, device=dev.name,
                    )  # fmt: skip
        return self._maybe_end_group(s, sub.job_id, now)

    def _maybe_end_group(self, s: Session, job_id: int, now: float) -> GroupOutcome:
        job = s.get(Job, job_id)
        group = s.scalar(select(Group).where(Group.job_id == job_id))
        assert job is not None and group is not None
        subs = s.scalars(select(SubJob).where(SubJob.job_id == job_id)).all()
        outcome = _outcome(job, group, subs)
        if not all(x.state in FINAL_SUBJOB_STATES for x in subs):
            return outcome
        if group.state != GroupPhase.ENDED:
            group.state = GroupPhase.ENDED
            group.ended_at = now
            group.join_deadline = None
            outcome.ended = True
        if job.state not in FINAL_JOB_STATES:
            if all(x.state == SubJobState.COMPLETE for x in subs):
                job.state = JobState.COMPLETE
            else:
                job.state = JobState.INCOMPLETE
                failed = [x for x in subs if x.state != SubJobState.COMPLETE]
                first = min(failed, key=lambda x: (x.ended_at or now, x.id))
                job.failure_type = job.failure_type or first.error_type
                job.failure_cause = job.failure_cause or (
                    f"{first.role} on {first.device}: {first.message or first.state}"
                )
            job.end_time = now
            self._event(
                s, now, "job", job.state,
                f"job {job_id} {job.state}"
                + (f": {job.failure_cause}" if job.failure_cause else ""),
                job_id=job_id,
            )  # fmt: skip
        outcome.job_state = job.state
        return outcome

    def cancel(
        self, job_id: int, cause: str, now: float, *, error_type: str = "canceled"
    ) -> GroupOutcome:
        """Cancel a job. Sub-jobs not yet taken by a dispatcher end now (devices freed);
        taken ones end when their dispatcher reports (the group is failed meanwhile)."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobError(f"no job {job_id}")
            group = s.scalar(select(Group).where(Group.job_id == job_id))
            assert group is not None
            if job.state in FINAL_JOB_STATES:
                return GroupOutcome(job_id, group.name, job_state=job.state)
            was = job.state
            job.state = JobState.CANCELED
            job.failure_type = error_type
            job.failure_cause = cause
            job.end_time = now
            job.waiting_reason = None
            self._event(
                s, now, "job", JobState.CANCELED, f"job {job_id} canceled: {cause}", job_id=job_id
            )
            subs = s.scalars(select(SubJob).where(SubJob.job_id == job_id)).all()
            outcome = _outcome(job, group, subs)
            for sub in subs:
                if sub.state in UNTAKEN_SUBJOB_STATES:
                    outcome = self._end_subjob(s, sub, SubJobState.CANCELED, error_type, cause, now)
            if was != JobState.QUEUED:
                outcome.fail_reason = f"job {job_id} canceled: {cause}"
                outcome.fail_cause = "canceled"
            return outcome

    def expired_joins(self, now: float) -> list[tuple[int, list[str]]]:
        """Groups past their join deadline: (job id, nodes that did not join)."""
        with self.session() as s:
            groups = s.scalars(
                select(Group).where(Group.state == GroupPhase.JOINING, Group.join_deadline < now)
            ).all()
            out = []
            for g in groups:
                late = s.scalars(
                    select(SubJob).where(
                        SubJob.group_id == g.id, SubJob.state == SubJobState.ASSIGNED
                    )
                ).all()
                if late:  # nobody late: the group ends with its nodes' own states
                    out.append((g.job_id, sorted(f"{x.device} ({x.role})" for x in late)))
            return out

    def host_lost(self, host: str, now: float, cause: str) -> list[GroupOutcome]:
        """Mark a host offline: its devices go offline, their groups fail naming the host."""
        outcomes: list[GroupOutcome] = []
        with self.session() as s:
            row = s.scalar(select(Host).where(Host.name == host))
            if row is None:
                return []
            row.state = HostState.OFFLINE
            self._event(s, now, "host", HostState.OFFLINE, f"host {host}: {cause}", host=host)
            devices = list(s.scalars(select(Device).where(Device.host_id == row.id)))
            names = {d.name for d in devices}
            for dev in devices:
                if dev.state != DeviceState.RETIRED:
                    dev.state = DeviceState.OFFLINE
                    self._event(
                        s, now, "device", DeviceState.OFFLINE,
                        f"device {dev.name}: host {host} {cause}",
                        device=dev.name, host=host,
                    )  # fmt: skip
                    dev.current_job_id = dev.current_subjob_id = None
            subjobs = s.scalars(
                select(SubJob).where(SubJob.device.in_(names), SubJob.state.in_(LIVE_SUBJOB_STATES))
            ).all()
            for sub in subjobs:
                message = f"host {host} {cause}; device {sub.device} is offline"
                outcome = self._end_subjob(
                    s, sub, SubJobState.INCOMPLETE, "infrastructure", message, now
                )
                outcome.fail_reason = outcome.fail_reason or message
                outcome.fail_node = sub.device
                outcomes.append(outcome)
        return merge_outcomes(outcomes)
