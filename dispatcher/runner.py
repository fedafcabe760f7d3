"""Run one sub-job: build its pipeline, validate it, run it under deadlines, always finalize.

The runner owns everything of one sub-job: its job log (a file in the
sub-job's work dir, and batches on ``lava.logs``), its results (to
``lava.results``), its MultiNode client and its device for the duration.
It runs on its own thread; the publisher and the console reader have
theirs. The daemon learns the outcome through ``report_state``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatcher.action import JobContext, Pipeline
from dispatcher.actions.finalize import FinalizeAction
from dispatcher.actions.test_shell import record_result
from dispatcher.assignment import Assignment, load_assignment
from dispatcher.joblog import JobLog, mask_secrets
from dispatcher.publisher import dropped_note
from dispatcher.registry import build_pipeline, pipeline_for
from schemas.errors import JobCanceled, JobError, LavamqError, classify

__all__ = ["Outcome", "SubJobRunner", "build_pipeline"]

log = logging.getLogger(__name__)

#: state, error_type, message
StateReporter = Callable[[str, str | None, str | None], None]
MultinodeFactory = Callable[[Assignment], Any]


@dataclass
class Outcome:
    """How a sub-job ended: its state, its error if any, and its job log."""

    state: str  # complete | incomplete | canceled
    error: LavamqError | None
    log_path: Path


def _canceled_reason(ctx: JobContext) -> str | None:
    """Why the node's group was canceled, if it was."""
    reason = getattr(ctx.multinode, "canceled", None)
    return reason if isinstance(reason, str) else None


class SubJobRunner:
    """Runs one sub-job: pipeline, deadlines, results and logs, and always finalize."""

    def __init__(
        self,
        assignment: Assignment | Mapping[str, Any],
        device: Any,
        *,
        workdir: str | Path,
        report_state: StateReporter | None = None,
        broker_url: str | None = None,
        multinode_factory: MultinodeFactory | None = None,
        cancelled: Callable[[], bool] | None = None,
        publisher_interval: float = 0.1,
    ) -> None:
        self.assignment = (
            assignment if isinstance(assignment, Assignment) else load_assignment(assignment)
        )
        self.device = device
        self.workdir = Path(workdir)
        self.report_state = report_state or (lambda state, error_type, message: None)
        self.broker_url = broker_url
        self.multinode_factory = multinode_factory
        self.cancelled = cancelled or (lambda: False)
        self.publisher_interval = publisher_interval
        self.pipeline: Pipeline | None = None

    def run(self) -> Outcome:
        """Build, validate and run the sub-job's pipeline, then finalize; how it ended."""
        a = self.assignment
        job, subjob, node = a.job_id, a.subjob_id, a.node
        self.workdir.mkdir(parents=True, exist_ok=True)
        # the job's secrets are masked in everything the log keeps or sends
        joblog = JobLog(self.workdir / "job.log", secrets=a.secrets.values())
        publisher = None
        if self.broker_url:
            from dispatcher.publisher import SubJobPublisher

            publisher = SubJobPublisher(
                self.broker_url,
                job=job,
                subjob=subjob,
                node=node,
                interval=self.publisher_interval,
            ).start()
            joblog.add_json_listener(publisher.log_json)
        start = time.monotonic()

        def cancelled() -> bool:
            # the dispatcher is stopping, or the group's job was canceled (every running
            # node stops now, not at its next MultiNode call)
            return self.cancelled() or _canceled_reason(ctx) is not None

        ctx = JobContext(
            job_id=job,
            subjob_id=subjob,
            node=node,
            role=a.role,
            log=joblog,
            workdir=self.workdir,
            device=self.device,
            group=a.group,
            members=dict(a.members),
            job_deadline=start + a.timeouts.job if a.timeouts.job else None,
            timeouts=a.timeouts,
            secrets=dict(a.secrets),
            environment=dict(a.environment),
            job_context=dict(a.context),
            publish_result=publisher.result if publisher is not None else None,
            cancelled=cancelled,
        )
        ctx.data["attach_console"] = lambda console: self._attach_console(console, joblog)
        joblog.event(
            f"sub-job {subjob} of job {job} ({a.job_name or 'unnamed'}): "
            f"node {node}, role {ctx.role}, device {getattr(self.device, 'name', '?')}"
        )
        self.report_state("running", None, None)
        error: LavamqError | None = None
        pipeline = Pipeline()
        finalize = FinalizeAction()
        try:
            # inside the try: a plan item that cannot be built still finalizes
            pipeline, build_problems = pipeline_for(a)
            self.pipeline = pipeline
            # a boot action looks ahead for the overlay its device boots with
            ctx.data["pipeline"] = pipeline
            problems = build_problems + pipeline.validate(ctx)
            if problems:
                for p in problems:
                    joblog.error(f"validate: {p}")
                raise JobError(
                    f"the sub-job's pipeline does not validate ({len(problems)} problem(s)): "
                    + "; ".join(problems)
                )
            joblog.info(f"pipeline validated: {len(pipeline.actions)} action(s)")
            if self.multinode_factory is not None and ctx.group:
                ctx.multinode = self.multinode_factory(a)
            pipeline.run(None, None, ctx)
        except Exception as exc:
            error = classify(exc)
            joblog.error(f"{error.error_type}: {error.message}")
            with contextlib.suppress(Exception):
                pipeline.cleanup(ctx)
        finally:
            try:
                Pipeline([finalize], start=len(pipeline.actions) + 1).run(
                    ctx.data.get("console"), None, ctx
                )
            except Exception as exc:
                finalize.problems.append(str(exc))
        if error is None and finalize.problems:
            from schemas.errors import InfrastructureError

            error = InfrastructureError("finalize: " + "; ".join(finalize.problems))
        reason = _canceled_reason(ctx)
        if reason is not None and error is not None:
            error = JobCanceled(f"{reason} ({error.message})")
        if cancelled() and error is not None:
            state = "canceled"
        else:
            state = "complete" if error is None else "incomplete"
        with contextlib.suppress(Exception):
            record_result(
                ctx, {"suite": "lava", "case": "job", "result": "pass" if error is None else "fail"}
            )
        joblog.event(
            f"sub-job {subjob} {state}"
            + (f": {error.error_type}: {error.message}" if error is not None else "")
        )
        joblog.close()
        message = None
        if error is not None:
            message = mask_secrets(error.message, a.secrets.values())[:10_000]
        if publisher is not None:
            publisher.close()
            if publisher.dropped_records or publisher.dropped_results:
                # after the log closed (it feeds the publisher): appended to its file
                note = dropped_note(publisher.dropped_records, publisher.dropped_results)
                try:
                    tail = JobLog(joblog.path or self.workdir / "job.log")
                    tail.warning(note)
                    tail.close()
                except OSError as exc:
                    log.warning("sub-job %s: cannot write to its job log: %s", subjob, exc)
                message = f"{message}; {note}" if message else note
        self.report_state(state, error.error_type if error is not None else None, message)
        return Outcome(state, error, joblog.path or self.workdir / "job.log")

    @staticmethod
    def _attach_console(console: Any, joblog: JobLog) -> None:
        if getattr(console, "_lavamq_joblog", None) is joblog:
            return
        console.add_listener(joblog.target_bytes)
        if hasattr(console, "add_input_listener"):
            console.add_input_listener(lambda text: joblog.input(text.rstrip("\r\n")))
        with contextlib.suppress(AttributeError):
            console._lavamq_joblog = joblog

        # a prompt has no newline: flush partial lines that sit for a while
        def flusher() -> None:
            while not getattr(console, "closed", True):
                time.sleep(0.2)
                joblog.flush_partial(older_than=0.2)

        threading.Thread(target=flusher, name="joblog-flush", daemon=True).start()
