"""How ``lavamq run`` ends a job that did not end by itself, and the bundle it prints then.

``lavamq run --json`` always prints a result bundle naming each node's state
and why: when its own ``--timeout`` passes and on Ctrl-C, the job is canceled
(its nodes stop within a second, naming the reason) and the bundle is the
coordinator's once the nodes have reported; when the embedded lab itself
fails (it cannot start, a service dies), the bundle is the coordinator's if it
still answers, else one made from the job's plan, every node ``incomplete``
with the lab's error as its reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from coordinator.results import NodeOutcome, build_bundle
from schemas.errors import JobCanceled, LavamqError, MultinodeTimeout
from schemas.jobmodel import JobPlan
from schemas.states import FINAL_SUBJOB_STATES

#: how long the nodes of a job canceled by ``lavamq run`` get to report
CANCEL_WAIT = 60.0


def plan_bundle(plan: JobPlan, error: LavamqError, job_id: int | None = None) -> dict[str, Any]:
    """The bundle of a job the lab could not run: one node per sub-job of the plan,
    ``incomplete``, naming ``error`` (no coordinator to ask)."""
    nodes = [
        NodeOutcome(
            node=sub.device or f"{sub.role}-{sub.index}",
            role=sub.role,
            device=sub.device or "-",
            state="incomplete",
            error_type=error.error_type,
            message=error.message,
            ended_at=time.time(),
        )
        for sub in plan.subjobs
    ]
    bundle = build_bundle({"id": job_id, "name": plan.job_name}, nodes, [])
    bundle["job"].update(
        {
            "state": "incomplete",
            "failure_type": error.error_type,
            "failure_cause": error.message,
            "results_complete": True,
            "results_missing": [],
        }
    )
    return bundle


def stop_job(
    lab: Any,
    job_id: int,
    reason: str,
    say: Callable[[str], None],
    fallback: Callable[[], dict[str, Any]],
    wait: float = CANCEL_WAIT,
) -> dict[str, Any]:
    """Cancel ``job_id`` naming ``reason`` and return its bundle once its nodes reported
    (as it is after ``wait`` seconds or a second Ctrl-C; ``fallback()`` if the
    coordinator cannot answer)."""
    say(f"canceling job {job_id}: {reason}")
    try:
        lab.client().cancel(job_id, reason)
        return dict(lab.wait(job_id, wait))
    except (LavamqError, KeyboardInterrupt) as exc:
        if isinstance(exc, LavamqError):
            say(f"job {job_id} did not end cleanly: {exc.message}")
    try:
        return dict(lab.client().results(job_id))
    except (LavamqError, KeyboardInterrupt):
        return fallback()


def end_early(
    exc: LavamqError | KeyboardInterrupt,
    plan: JobPlan,
    lab: Any,
    job_id: int | None,
    say: Callable[[str], None],
) -> tuple[LavamqError, dict[str, Any]]:
    """Why the run ended before the job (``exc``: Ctrl-C, ``lab.wait``'s own
    timeout, the lab's failure) and the job's bundle after ending it."""
    if isinstance(exc, KeyboardInterrupt):
        error: LavamqError = JobCanceled("lavamq run: interrupted (Ctrl-C)")
    elif isinstance(exc, MultinodeTimeout):  # lab.wait's: this run's own --timeout
        error = JobCanceled(f"lavamq run --timeout: {exc.message}")
    else:
        error = exc
    say(error.message)

    def fallback() -> dict[str, Any]:
        return plan_bundle(plan, error, job_id)

    if lab is None or job_id is None:
        return error, fallback()
    bundle = stop_job(lab, job_id, error.message, say, fallback)
    for node in bundle.get("nodes", []):
        # a node the lab could not end says why it did not
        if node.get("state") not in FINAL_SUBJOB_STATES and not node.get("message"):
            node["error_type"], node["message"] = error.error_type, error.message
    return error, bundle
