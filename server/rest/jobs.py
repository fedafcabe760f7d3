"""``/api/v1/jobs``: list, submit, show (the group and its nodes), cancel, logs, results."""

from __future__ import annotations

from typing import Annotated, Literal

import yaml
from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from coordinator.results import bundle_junit
from schemas.messages.jobs import SUBMIT_KEY_PATTERN
from server import lava
from server.lab import Lab
from server.node_rows import NodeRow
from server.rest.common import ERRORS, MAX_ID, Caller, LabDep, Limit, Offset
from server.users import Identity

router = APIRouter(prefix="/api/v1", tags=["jobs"], responses=ERRORS)

JobId = Annotated[int, Path(ge=0, le=MAX_ID, description="The lavamq job (group) id.")]
OurJobState = Literal["queued", "scheduled", "running", "complete", "incomplete", "canceled"]


class Node(BaseModel):
    """One node of a group: LAVA's id for it, its role, device, host and states."""

    id: str = Field(description="LAVA's id of the node: J.N (or J for a single-node job)")
    index: int
    subjob_id: int
    role: str
    device_type: str | None
    device: str | None
    host: str | None
    tags: list[str]
    state: str = Field(description="the sub-job's lavamq state")
    lava_state: str
    lava_health: str
    start_time: float | None
    end_time: float | None
    error_type: str | None
    message: str | None


class JobSummary(BaseModel):
    """A job as the job list shows it."""

    id: int
    name: str
    state: str
    priority: int
    waiting_reason: str | None
    submitter: str
    submit_time: float
    start_time: float | None
    end_time: float | None
    failure_cause: str | None
    key: str | None = Field(None, description="the submission's idempotency key, if it had one")


class JobList(BaseModel):
    """One page of the job list and the total, for paging."""

    items: list[JobSummary]
    offset: int
    limit: int
    total: int


class Job(JobSummary):
    """A job with its definition's source, group and nodes, as ``GET /jobs/{id}`` gives it."""

    source: str
    failure_type: str | None
    group: str | None
    group_state: str | None
    visibility: str
    nodes: list[Node]


SubmitKey = Annotated[
    str | None,
    Field(
        pattern=SUBMIT_KEY_PATTERN,
        description="The submission's idempotency key: a second submit of the same user "
        "with it gives the same job, never a second one (`GET /jobs?key=` finds it).",
    ),
]


class Submit(BaseModel):
    """A job submission: the job file as text."""

    definition: str = Field(description="The job file (LAVA YAML or 2014 JSON) as text.")
    key: SubmitKey = None


class SubmittedNode(BaseModel):
    """One node of a submitted job: its sub-job id, role and index."""

    id: int = Field(description="the sub-job id")
    role: str
    index: int = Field(description="the node's index within its role")


class Submitted(BaseModel):
    """The coordinator's receipt, and LAVA's ids of the nodes."""

    job_id: int
    job_name: str
    group: str
    subjobs: list[SubmittedNode]
    ids: list[str] = Field(description="LAVA's ids of the nodes, J.0, J.1 ...")
    key: str | None = Field(None, description="the submission's idempotency key")
    again: bool = Field(False, description="true: the job was submitted before with this key")


class LogRecord(BaseModel):
    """One record of a node's job log."""

    time: str
    level: str
    message: str


class LogPage(BaseModel):
    """A page of a node's job log, where the next page starts and whether the log is finished."""

    node: str
    offset: int
    next_offset: int
    finished: bool
    records: list[LogRecord]


def node_model(row: NodeRow) -> Node:
    """One node's row as the API's Node, with LAVA's state and health names."""
    state, health = row.lava_state
    return Node(
        id=str(row.display_id),
        index=row.index,
        subjob_id=row.subjob_id,
        role=row.role,
        device_type=row.device_type,
        device=row.device,
        host=row.host,
        tags=row.tags,
        state=row.state,
        lava_state=state,
        lava_health=health,
        start_time=row.start_time,
        end_time=row.end_time,
        error_type=row.error_type,
        message=row.message,
    )


def job_model(lab: Lab, who: Identity, job_id: int) -> Job:
    """The job as its caller may see it (NotFound when it may not), with its nodes."""
    rows = lab.visible_nodes(who, job_id)
    return Job(**lab.reader.job(job_id), nodes=[node_model(r) for r in rows])


@router.get("/jobs", response_model=JobList)
def list_jobs(
    lab: LabDep,
    who: Caller,
    offset: Offset = 0,
    limit: Limit = 50,
    state: Annotated[list[OurJobState] | None, Query()] = None,
    submitter: Annotated[str | None, Query(max_length=150)] = None,
    key: Annotated[str | None, Query(pattern=SUBMIT_KEY_PATTERN)] = None,
) -> JobList:
    """Jobs newest first, filtered by state(s), submitter and submission key, paged."""
    lab.check_read(who)
    items, total = lab.reader.jobs_page(
        states=state or (),
        submitter=submitter,
        key=key,
        offset=offset,
        limit=limit,
        viewer=who,
        anonymous_read=lab.settings.anonymous_read,
    )
    return JobList(items=[JobSummary(**j) for j in items], offset=offset, limit=limit, total=total)


@router.post("/jobs", response_model=Submitted, status_code=201)
def submit_job(body: Submit, lab: LabDep, who: Caller) -> Submitted:
    """Submit a job file; every problem of a bad one comes back with its place."""
    receipt = lab.submit(who, body.definition, source="rest", key=body.key)
    count = len(receipt["subjobs"])
    job_id = int(receipt["job_id"])
    return Submitted(
        job_id=job_id,
        job_name=str(receipt.get("job_name") or ""),
        group=str(receipt["group"]),
        subjobs=[SubmittedNode(**s) for s in receipt["subjobs"]],
        ids=[str(lava.display_id(job_id, i, count)) for i in range(count)],
        key=receipt.get("key"),
        again=bool(receipt.get("again")),
    )


@router.get("/jobs/{job_id}", response_model=Job)
def show_job(job_id: JobId, lab: LabDep, who: Caller) -> Job:
    """The job, its group and every node."""
    return job_model(lab, who, job_id)


@router.get("/groups/{job_id}", response_model=Job, tags=["groups"])
def show_group(job_id: JobId, lab: LabDep, who: Caller) -> Job:
    """The MultiNode group of a job (the same document as its job: a job is one group)."""
    return job_model(lab, who, job_id)


@router.get("/jobs/{job_id}/definition", response_class=PlainTextResponse)
def job_definition(job_id: JobId, lab: LabDep, who: Caller) -> str:
    """The job file as it was submitted."""
    lab.visible_node(who, lava.LavaJobId(job_id))
    return lab.reader.definition(job_id)


@router.post("/jobs/{job_id}/cancel", response_model=Job)
def cancel_job(job_id: JobId, lab: LabDep, who: Caller) -> Job:
    """Cancel the whole group (your own job, or any as an admin)."""
    lab.cancel(who, lava.LavaJobId(job_id))
    return job_model(lab, who, job_id)


@router.get("/jobs/{job_id}/logs", response_model=LogPage, tags=["logs"])
def job_logs(
    job_id: JobId,
    lab: LabDep,
    who: Caller,
    node: Annotated[int, Query(ge=0, le=10_000, description="The node's place (N of J.N).")] = 0,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> LogPage:
    """A page of one node's job log; ``next_offset`` is where the next page starts."""
    row = lab.visible_node(who, lava.LavaJobId(job_id, node))
    records = []
    if row.device:
        for rec in lab.logs.records(job_id, row.device, offset, offset + limit):
            records.append(
                LogRecord(
                    time=str(rec.get("time", "")),
                    level=str(rec.get("level", "")),
                    message=str(rec.get("message", "")),
                )
            )
    return LogPage(
        node=str(row.display_id),
        offset=offset,
        next_offset=offset + len(records),
        finished=row.lava_state[0] == "Finished",
        records=records,
    )


@router.get(
    "/jobs/{job_id}/results",
    tags=["results"],
    responses={
        200: {
            "description": "The bundle (json), JUnit XML (junit) or LAVA's results (yaml)",
            "content": {"application/json": {}, "application/xml": {}, "application/yaml": {}},
        }
    },
)
async def job_results(
    job_id: JobId,
    lab: LabDep,
    who: Caller,
    format: Annotated[Literal["json", "junit", "yaml"], Query()] = "json",
) -> Response:
    """The group's result bundle (JSON), as JUnit XML, or LAVA's results YAML of every node."""
    bundle = await run_in_threadpool(lab.results_bundle, who, job_id)
    if format == "junit":
        return Response(
            bundle_junit(bundle),
            media_type="application/xml",
            headers={"Content-Disposition": f'attachment; filename="job-{job_id}-junit.xml"'},
        )
    if format == "yaml":
        rows = await run_in_threadpool(lab.reader.job_nodes, job_id)
        text = yaml.safe_dump(
            [
                {"job": str(r.display_id), "suite": c["suite"], "name": c["case"],
                 "result": c["result"], "measurement": c["measurement"], "unit": c["units"]}
                for r in rows
                for c in lab.reader.results(r.subjob_id)
            ],
            default_flow_style=False,
        )  # fmt: skip
        return Response(
            text,
            media_type="application/yaml",
            headers={"Content-Disposition": f'attachment; filename="job-{job_id}-results.yaml"'},
        )
    from fastapi.responses import JSONResponse

    return JSONResponse(bundle)
