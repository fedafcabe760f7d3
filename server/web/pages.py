"""The web view's pages: jobs, queue, a job's group (nodes, consoles, timeline, results),
devices and hosts, log in; and LAVA's URLs redirected to ours.

Pages are rendered on the server and read without JS; the live parts (consoles,
timeline, node states) stream over server-sent events from the same
:class:`server.live.LiveTap` the metrics use. Every form carries a CSRF token
(a random cookie repeated in the form); admin actions check the user's flag.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from server import lava
from server.errors import BadRequest, NotFound, PermissionDenied
from server.lab import Lab
from server.rest.common import MAX_ID
from server.users import ANONYMOUS, Identity
from server.web.stream import JobView, console_lines, events, page_of

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)

TOKEN_COOKIE = "lavamq_token"
CSRF_COOKIE = "lavamq_csrf"
PAGE = 50


def utc(ts: float | None) -> str:
    """A time for the pages, in UTC to the second ('' when unknown)."""
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).isoformat(timespec="seconds")


def duration(start: float | None, end: float | None) -> str:
    """How long from ``start`` to ``end`` (or now) as H:MM:SS ('' before it started)."""
    if start is None:
        return ""
    seconds = int((end or dt.datetime.now(dt.UTC).timestamp()) - start)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


templates.env.filters["utc"] = utc
templates.env.globals["duration"] = duration


def lab_of(request: Request) -> Lab:
    """The lab the application serves (set on its state at creation)."""
    lab: Lab = request.app.state.lab
    return lab


def who_of(request: Request) -> Identity:
    """The user of the request's session cookie, anonymous without a valid one."""
    token = request.cookies.get(TOKEN_COOKIE)
    if not token:
        return ANONYMOUS
    return lab_of(request).identify(token) or ANONYMOUS


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from its template, with the user and a CSRF token (set as a cookie when new)."""
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    context.update(request=request, who=who_of(request), csrf=csrf)
    response = templates.TemplateResponse(request, name, context, status_code=status)
    if request.cookies.get(CSRF_COOKIE) != csrf:
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict")
    return response


def check_csrf(request: Request, token: str) -> None:
    """Refuse a form whose CSRF token is not the session's (a stale page or another site)."""
    expected = request.cookies.get(CSRF_COOKIE) or ""
    if not expected or not hmac.compare_digest(expected, token):
        raise PermissionDenied("the form is stale or came from another site: reload the page")


async def call(fun: Any, *args: Any) -> Any:
    """Run a blocking store query off the event loop."""
    return await run_in_threadpool(fun, *args)


# --- pages ----------------------------------------------------------------------


@router.get("/")
async def home() -> Response:
    """The home page is the job list."""
    return RedirectResponse("/jobs")


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    page: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    state: Annotated[str, Query(max_length=20)] = "",
    submitter: Annotated[str, Query(max_length=150)] = "",
) -> Response:
    """The job list, filtered by state and submitter, one page at a time."""
    lab, who = lab_of(request), who_of(request)
    lab.check_read(who)
    states = [state] if state else []
    items, total = await call(
        lambda: lab.reader.jobs_page(
            states=states, submitter=submitter or None, offset=page * PAGE, limit=PAGE,
            viewer=who, anonymous_read=lab.settings.anonymous_read,
        )
    )  # fmt: skip
    types = await call(lab.reader.device_types_of, [j["id"] for j in items])
    return render(
        request, "jobs.html", jobs=items, types=types, page=page, pages=max(1, -(-total // PAGE)),
        total=total, state=state, submitter=submitter,
        states=("queued", "scheduled", "running", "complete", "incomplete", "canceled"),
    )  # fmt: skip


@router.get("/queue", response_class=HTMLResponse)
async def queue_page(request: Request) -> Response:
    """The waiting groups and why each waits."""
    lab, who = lab_of(request), who_of(request)
    lab.check_read(who)
    items, _ = await call(
        lambda: lab.reader.jobs_page(
            states=["queued"], limit=500, viewer=who, anonymous_read=lab.settings.anonymous_read
        )
    )
    types = await call(lab.reader.device_types_of, [j["id"] for j in items])
    return render(request, "queue.html", jobs=items, types=types)


def _job_context(
    lab: Lab, who: Identity, job_id: int, node: int | None, page: int | None
) -> dict[str, Any]:
    rows = lab.visible_nodes(who, job_id)
    job = lab.reader.job(job_id)
    view = JobView(lab, rows)
    consoles = []
    for row in rows:
        # counted first: lines stored while the page renders come again over the stream
        total = console_lines(lab, row)
        lines, shown, pages = page_of(lab, row, page if node == row.index else None)
        consoles.append({"row": row, "lines": lines, "page": shown, "pages": pages, "total": total})
    view.read_store()
    bundle = lab.aggregator.bundle(job_id)
    return {"job": job, "rows": rows, "consoles": consoles, "timeline": view.timeline_data(),
            "bundle": bundle}  # fmt: skip


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(
    request: Request,
    job_id: int,
    node: Annotated[int | None, Query(ge=0, le=10_000)] = None,
    page: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> Response:
    """One job: its nodes, the group's timeline and a node's log."""
    lab, who = lab_of(request), who_of(request)
    context = await call(_job_context, lab, who, job_id, node, page)
    return render(request, "job.html", **context)


def _fragment(view: JobView, part: str) -> str:
    """The node table or the timeline, rendered by the same macros as the page."""
    macros: Any = templates.get_template("parts.html").module
    if part == "nodes":
        view.refresh()
        return str(macros.nodes(view.rows))
    return str(macros.timeline(view.timeline_data()))


@router.get("/jobs/{job_id}/events")
async def job_events(
    request: Request, job_id: int, since: Annotated[str, Query(max_length=20_000)] = ""
) -> Response:
    """Server-sent events of the job page (see server/web/stream.py); ``since``:
    ``node:lines,...``, the console lines the page already shows."""
    lab, who = lab_of(request), who_of(request)
    rows = await call(lab.visible_nodes, who, job_id)
    view = JobView(lab, rows)
    shown: dict[int, int] = {}
    for part in since.split(","):
        node, _, count = part.partition(":")
        if node.isdigit() and count.isdigit():
            shown[int(node)] = int(count)
    return StreamingResponse(
        events(request.app.state.live, view, _fragment, shown),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/devices", response_class=HTMLResponse)
async def devices_page(request: Request) -> Response:
    """The lab's devices and hosts."""
    lab, who = lab_of(request), who_of(request)
    lab.check_read(who)
    devices = await call(lab.reader.devices)
    hosts = await call(lab.reader.hosts)
    now = dt.datetime.now(dt.UTC).timestamp()
    return render(request, "devices.html", devices=devices, hosts=hosts, now=now, lava=lava)


@router.post("/devices/{name}/maintenance")
async def maintenance(
    request: Request,
    name: str,
    csrf: Annotated[str, Form()] = "",
    on: Annotated[str, Form()] = "1",
) -> Response:
    """An admin puts a device in maintenance (``on=1``) or takes it out (``on=0``)."""
    check_csrf(request, csrf)
    lab, who = lab_of(request), who_of(request)
    if who.anonymous or not who.is_admin:
        raise PermissionDenied("only an admin may put a device in maintenance")
    await call(lab.device, name)
    health = "maintenance" if on == "1" else "good"
    await call(lab.rpc, lambda c: c.device_health(name, health))
    return RedirectResponse("/devices", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    """The login form."""
    return render(request, "login.html", error=None)


@router.post("/login")
async def login(
    request: Request,
    username: Annotated[str, Form(max_length=150)] = "",
    token: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Check a user's token and start a session (a cookie), else show the form again."""
    check_csrf(request, csrf)
    who = await call(lab_of(request).identify, token, username)
    if who is None:
        return render(request, "login.html", status=401, error="unknown user or token")
    response = RedirectResponse("/jobs", status_code=303)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session (CSRF-checked) and go back to the job list."""
    check_csrf(request, csrf)
    response = RedirectResponse("/jobs", status_code=303)
    response.delete_cookie(TOKEN_COOKIE)
    return response


# --- LAVA's URLs -------------------------------------------------------------------


@router.get("/scheduler/job/{job_id}")
@router.get("/scheduler/job/{job_id}/{rest:path}")
@router.get("/results/{job_id}")
@router.get("/results/{job_id}/{rest:path}")
async def lava_job(job_id: str, rest: str = "") -> Response:
    """LAVA's job (``/scheduler/job/12.1``) and results pages: ours, at that node."""
    try:
        parsed = lava.parse_job_id(job_id)
    except BadRequest:
        raise NotFound(f"no job {job_id}") from None
    anchor = "#results" if rest.startswith("results") else f"#node-{parsed.index}"
    return RedirectResponse(f"/jobs/{parsed.job_id}{anchor}", status_code=301)


LAVA_PAGES = {
    "/scheduler": "/jobs",
    "/scheduler/": "/jobs",
    "/scheduler/alljobs": "/jobs",
    "/scheduler/myjobs": "/jobs",
    "/scheduler/jobs": "/jobs",
    "/scheduler/alldevices": "/devices",
    "/scheduler/allworkers": "/devices#hosts",
    "/scheduler/workers": "/devices#hosts",
    "/scheduler/labhealth": "/devices",
    "/scheduler/device_types": "/devices",
    "/scheduler/queue": "/queue",
    "/results": "/jobs",
    "/accounts/login/": "/login",
}


def _redirect(target: str) -> Any:
    async def go() -> Response:
        return RedirectResponse(target, status_code=301)

    return go


for _path, _target in LAVA_PAGES.items():
    router.add_api_route(_path, _redirect(_target), methods=["GET"])


@router.get("/scheduler/device/{name}")
async def lava_device(name: str) -> Response:
    """LAVA's device page URL, redirected to the device on the devices page."""
    return RedirectResponse(f"/devices#device-{name}", status_code=301)
