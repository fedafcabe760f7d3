"""LAVA's XML-RPC methods, as lavacli calls them, on top of :class:`server.lab.Lab`.

Each method takes the caller and LAVA's arguments and returns what LAVA
returns (shapes from ``lava_scheduler_app/api/``, ``lava_results_app/api.py``
and ``lava_server/api.py``; see docs/server.md). Marshalling, auth and faults
are the edge's job (server/xmlrpc.py); these only raise our errors.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml

from schemas.job import load_job
from server import lava
from server.errors import BadRequest, LoginRequired, NotFound
from server.lab import LAVA_VERSION, Lab
from server.node_rows import NodeRow
from server.users import Identity

#: LAVA's ``system.api_version`` (lavacli only prints it)
API_VERSION = 2


@dataclass(frozen=True)
class Call:
    """One XML-RPC call's context: the lab it reads and who is calling."""

    lab: Lab
    who: Identity


@dataclass(frozen=True)
class StreamedLog:
    """``scheduler.jobs.logs``'s answer: (finished, Binary(text)) with the text streamed."""

    finished: bool
    chunks: Iterator[bytes]


Method = Callable[..., Any]
_M = TypeVar("_M", bound=Method)
METHODS: dict[str, Method] = {}


def method(name: str) -> Callable[[_M], _M]:
    """Register a function as the XML-RPC method ``name`` of LAVA's API."""

    def register(fun: _M) -> _M:
        METHODS[name] = fun
        return fun

    return register


def bind(name: str, params: tuple[Any, ...]) -> Callable[[Call], Any]:
    """The method ``name`` with ``params`` bound; NotFound / BadRequest for a bad call."""
    fun = METHODS.get(name)
    if fun is None:
        raise NoSuchMethod(f"No such method: {name!r}")
    try:
        _signature(fun).bind(None, *params)
    except TypeError as exc:
        raise BadParams(f"{name}: {exc}") from None
    return lambda call: fun(call, *params)


@functools.cache
def _signature(fun: Method) -> inspect.Signature:
    return inspect.signature(fun)


class NoSuchMethod(Exception):
    """LAVA's -32601 fault."""


class BadParams(Exception):
    """LAVA's -32602 fault (wrong number of arguments)."""


# --- helpers ------------------------------------------------------------------


def when(ts: float | None) -> xmlrpc.client.DateTime | None:
    """A store time as XML-RPC's dateTime.iso8601 (UTC), as LAVA sends its times."""
    if ts is None:
        return None
    return xmlrpc.client.DateTime(dt.datetime.fromtimestamp(float(ts), dt.UTC).replace(tzinfo=None))


def when_text(ts: float | None) -> str | None:
    """A time as Django prints a datetime (``str(job.start_time)`` in jobs.list verbose)."""
    if ts is None:
        return None
    return str(dt.datetime.fromtimestamp(float(ts), dt.UTC))


def number(value: Any, what: str, default: int | None = None) -> int | None:
    """An integer argument as LAVA takes it (a boolean counts); BadRequest naming ``what``."""
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be a number, not {value!r}") from None


def need_login(who: Identity) -> None:
    """Refuse an anonymous caller, as LAVA does for the methods that need a user."""
    if who.anonymous:
        raise LoginRequired("Authentication with user and token required for this API.")


def _visibility(row: NodeRow) -> str:
    return "Public" if row.visibility == "public" else "Personal"


def _failure(row: NodeRow) -> str | None:
    if row.state == "complete":
        return None
    return row.message or (row.failure_cause if row.job_state in ("canceled",) else None)


# --- system -------------------------------------------------------------------


@method("system.version")
def system_version(call: Call) -> str:
    """The LAVA version this API answers as."""
    return LAVA_VERSION


@method("system.whoami")
def system_whoami(call: Call) -> str | None:
    """The calling user's name, or None when anonymous."""
    return call.who.name


@method("system.api_version")
def system_api_version(call: Call) -> int:
    """The version of LAVA's XML-RPC API implemented here."""
    return API_VERSION


@method("system.listMethods")
def system_list_methods(call: Call) -> list[str]:
    """Every method this API offers."""
    return sorted(METHODS)


@method("system.methodHelp")
def system_method_help(call: Call, name: str) -> str:
    """A method's documentation (its docstring), as LAVA gives it."""
    fun = METHODS.get(str(name))
    if fun is None:
        raise NotFound(f"No such method: {name!r}")
    return inspect.getdoc(fun) or ""


@method("system.methodSignature")
def system_method_signature(call: Call, name: str) -> str:
    """LAVA answers 'undef' for every method's signature; so does this."""
    if str(name) not in METHODS:
        raise NotFound(f"No such method: {name!r}")
    return "undef"


# --- jobs ---------------------------------------------------------------------


@method("scheduler.jobs.submit")
def jobs_submit(call: Call, definition: str) -> int | list[str]:
    """Submit a job; its id, or the ids of its nodes (``J.0``, ``J.1`` ...) if MultiNode."""
    need_login(call.who)
    if not isinstance(definition, str):
        raise BadRequest("Decoding job submission failed: the definition must be a string.")
    receipt = call.lab.submit(call.who, definition, source="xmlrpc")
    nodes = len(receipt["subjobs"])
    job_id = int(receipt["job_id"])
    if nodes <= 1:
        return job_id
    return [f"{job_id}.{i}" for i in range(nodes)]


@method("scheduler.jobs.resubmit")
def jobs_resubmit(call: Call, job_id: Any) -> int | list[str]:
    """Submit a job's definition again (the whole group for a MultiNode node)."""
    need_login(call.who)
    row = call.lab.visible_node(call.who, lava.parse_job_id(job_id))
    return jobs_submit(call, call.lab.reader.definition(row.job_id))


@method("scheduler.jobs.cancel")
def jobs_cancel(call: Call, job_id: Any) -> bool:
    """Cancel the job's whole group (one node cannot be canceled alone)."""
    need_login(call.who)
    if not job_id:
        raise BadRequest("Bad request: TestJob id was not specified.")
    call.lab.cancel(call.who, lava.parse_job_id(job_id))
    return True


@method("scheduler.jobs.definition")
def jobs_definition(call: Call, job_id: Any) -> str:
    """The submitted job file (for a MultiNode node, the whole group's file, as LAVA)."""
    row = call.lab.visible_node(call.who, lava.parse_job_id(job_id))
    return call.lab.reader.definition(row.job_id)


def _summary(row: NodeRow, verbose: bool) -> dict[str, Any]:
    state, health = row.lava_state
    data: dict[str, Any] = {
        "id": row.display_id,
        "description": row.job_name,
        "device_type": row.device_type,
        "health": health,
        "state": state,
        "submitter": row.submitter,
    }
    if verbose:
        failed = row.state in ("incomplete", "canceled")
        data.update(
            {
                "actual_device": row.device,
                "start_time": when_text(row.start_time),
                "end_time": when_text(row.end_time),
                "error_msg": row.message if failed else None,
                "error_type": row.error_type if failed else None,
            }
        )
    return data


@method("scheduler.jobs.list")
def jobs_list(
    call: Call,
    state: str | None = None,
    health: str | None = None,
    start: Any = 0,
    limit: Any = 25,
    since: Any = 0,
    verbose: bool = False,
    duration_at_least: Any = None,
) -> list[dict[str, Any]]:
    """The newest nodes, one row per node (LAVA lists each sub-job of a MultiNode job)."""
    call.lab.check_read(call.who)
    if state is not None and not isinstance(state, str):
        raise BadRequest(f"Invalid state '{state}'")
    if health is not None and not isinstance(health, str):
        raise BadRequest(f"Invalid health '{health}'")
    minutes = number(since, "since", 0) or 0
    rows = call.lab.reader.nodes(
        state=state or None,
        health=health or None,
        start=number(start, "start", 0) or 0,
        limit=min(number(limit, "limit", 25) or 0, 100),
        since=(dt.datetime.now(dt.UTC).timestamp() - 60 * minutes) if minutes > 0 else None,
        viewer=call.who,
        anonymous_read=call.lab.settings.anonymous_read,
    )
    least = number(duration_at_least, "duration_at_least")
    if least is not None:
        now = dt.datetime.now(dt.UTC).timestamp()
        rows = [r for r in rows if r.start_time and (r.end_time or now) - r.start_time > 60 * least]
    return [_summary(r, bool(verbose)) for r in rows]


@method("scheduler.jobs.queue")
def jobs_queue(
    call: Call, device_types: Any = None, start: Any = 0, limit: Any = 25
) -> list[dict[str, Any]]:
    """Nodes waiting to be scheduled, newest first."""
    call.lab.check_read(call.who)
    wanted = None if device_types is None else {str(t) for t in device_types}
    rows = call.lab.reader.nodes(
        state="SUBMITTED",
        start=number(start, "start", 0) or 0,
        limit=min(number(limit, "limit", 25) or 0, 100),
        viewer=call.who,
        anonymous_read=call.lab.settings.anonymous_read,
    )
    return [
        {
            "id": r.display_id,
            "description": r.job_name,
            "requested_device_type": r.device_type,
            "submitter": r.submitter,
        }
        for r in rows
        if wanted is None or r.device_type in wanted
    ]


@method("scheduler.jobs.show")
def jobs_show(call: Call, job_id: Any) -> dict[str, Any]:
    """One node's details; the three times are dateTime values or nil."""
    row = call.lab.visible_node(call.who, lava.parse_job_id(job_id))
    state, health = row.lava_state
    failed = row.state in ("incomplete", "canceled")
    return {
        "id": row.display_id,
        "description": row.job_name,
        "device": row.device,
        "device_type": row.device_type,
        "health_check": False,
        "pipeline": True,
        "health": health,
        "state": state,
        "submitter": row.submitter,
        "submit_time": when(row.submit_time),
        "start_time": when(row.start_time),
        "end_time": when(row.end_time),
        "tags": row.tags,
        "visibility": _visibility(row),
        "failure_comment": _failure(row),
        "error_msg": row.message if failed else None,
        "error_type": row.error_type if failed else None,
    }


@method("scheduler.jobs.logs")
def jobs_logs(call: Call, job_id: Any, start: Any = 0, end: Any = None) -> StreamedLog:
    """Log lines ``start``..``end`` (from 0) of one node: (finished, Binary(YAML lines))."""
    row = call.lab.visible_node(call.who, lava.parse_job_id(job_id))
    finished = row.lava_state[0] == "Finished"
    first = number(start, "start", 0) or 0
    last = number(end, "end")
    if not row.device or not call.lab.logs.node_dir(row.job_id, row.device).is_dir():
        return StreamedLog(finished, iter([b"[]"]))
    return StreamedLog(finished, call.lab.logs.lava_chunks(row.job_id, row.device, first, last))


@method("scheduler.jobs.validate")
def jobs_validate(call: Call, definition: str, strict: bool = False) -> dict[str, str]:
    """``{}`` for a valid job file, else the first problem as ``{path, msg}``."""
    from schemas.job import JobValidationError

    try:
        load_job(str(definition), "xmlrpc")
    except JobValidationError as exc:
        first = exc.problems[0] if exc.problems else str(exc)
        path, _, msg = first.partition(": ")
        return {"path": path, "msg": msg or first}
    return {}


# --- results ------------------------------------------------------------------


def _case(row: NodeRow, r: dict[str, Any]) -> dict[str, Any]:
    shown = str(row.display_id)
    return {
        "name": r["case"],
        "job": shown,
        "suite": r["suite"],
        "result": r["result"],
        "measurement": str(r["measurement"]),
        "unit": str(r["units"]),
        "level": "",
        "url": f"/results/{shown}/{r['suite']}/{r['case']}",
        "id": str(r["id"]),
        "logged": str(dt.datetime.fromtimestamp(r["time"], dt.UTC)),
        "log_start_line": "",
        "log_end_line": "",
        "metadata": {},
    }


def _results_row(call: Call, job_id: Any) -> NodeRow:
    need_login(call.who)
    if not job_id:
        raise BadRequest("Bad request: TestJob id was not specified.")
    try:
        return call.lab.visible_node(call.who, lava.parse_job_id(job_id))
    except NotFound:
        raise NotFound("Specified job not found.") from None


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, default_flow_style=False)


@method("results.get_testjob_results_yaml")
def results_job(call: Call, job_id: Any) -> str:
    """Every test case of a job's node, as LAVA's YAML list."""
    row = _results_row(call, job_id)
    return _dump([_case(row, r) for r in call.lab.reader.results(row.subjob_id)])


@method("results.get_testsuite_results_yaml")
def results_suite(
    call: Call, job_id: Any, suite_name: Any, limit: Any = None, offset: Any = None
) -> str:
    """The test cases of one suite of a node, paged with limit and offset as LAVA does."""
    row = _results_row(call, job_id)
    cases = call.lab.reader.results(row.subjob_id, suite=str(suite_name))
    if not cases and str(suite_name) not in call.lab.reader.suites(row.subjob_id):
        raise NotFound("Specified test suite not found.")
    first = number(offset, "offset", 0) or 0
    count = number(limit, "limit")
    cases = cases[first:] if count is None else cases[first : first + count]
    return _dump([_case(row, r) for r in cases])


@method("results.get_testcase_results_yaml")
def results_case(call: Call, job_id: Any, suite_name: Any, case_name: Any) -> str:
    """One test case of one suite (every result of that name), as LAVA's YAML list."""
    row = _results_row(call, job_id)
    if str(suite_name) not in call.lab.reader.suites(row.subjob_id):
        raise NotFound("Specified test suite not found.")
    cases = call.lab.reader.results(row.subjob_id, suite=str(suite_name), case=str(case_name))
    if not cases:
        raise NotFound("Specified test case not found.")
    return _dump([_case(row, r) for r in cases])


@method("results.get_testjob_suites_list_yaml")
def results_suites(call: Call, job_id: Any) -> str:
    """The suites of a node's results, with the ids and URIs lavacli shows."""
    row = _results_row(call, job_id)
    shown = str(row.display_id)
    return _dump(
        [
            {"id": shown, "job": shown, "name": name, "resource_uri": f"/results/{shown}/{name}"}
            for name in call.lab.reader.suites(row.subjob_id)
        ]
    )


# --- devices, device types, workers -------------------------------------------


@method("scheduler.devices.list")
def devices_list(call: Call, show_all: bool = False, offline_info: bool = False) -> list[Any]:
    """The lab's devices with LAVA's health and state names."""
    call.lab.check_read(call.who)
    return [
        {
            "hostname": d["name"],
            "type": d["device_type"],
            "health": lava.device_health(d["state"], d["health"]),
            "state": lava.device_state(d["state"]),
            "current_job": d["current_job"],
            "pipeline": True,
        }
        for d in call.lab.reader.devices(include_retired=bool(show_all))
    ]


@method("scheduler.devices.show")
def devices_show(call: Call, hostname: Any) -> dict[str, Any]:
    """One device with the fields LAVA's ``scheduler.devices.show`` has."""
    call.lab.check_read(call.who)
    d = call.lab.device(str(hostname))
    return {
        "hostname": d["name"],
        "device_type": d["device_type"],
        "health": lava.device_health(d["state"], d["health"]),
        "state": lava.device_state(d["state"]),
        "health_job": False,
        "description": "",
        "pipeline": True,
        "has_device_dict": True,
        "worker": d["host"],
        "current_job": d["current_job"],
        "tags": d["tags"],
        "permissions": [],
    }


@method("scheduler.devices.tags.list")
def devices_tags_list(call: Call, hostname: Any) -> list[str]:
    """One device's tags."""
    call.lab.check_read(call.who)
    tags: list[str] = call.lab.device(str(hostname))["tags"]
    return tags


@method("scheduler.device_types.list")
def device_types_list(call: Call, show_all: bool = False) -> list[dict[str, Any]]:
    """The device types (those with devices unless ``show_all``), as LAVA lists them."""
    call.lab.check_read(call.who)
    return [
        {"name": t["name"], "devices": t["devices"], "installed": True, "template": True}
        for t in call.lab.reader.device_types()
        if show_all or t["devices"] > 0
    ]


@method("scheduler.workers.list")
def workers_list(call: Call, show_all: bool = False) -> list[str]:
    """The dispatcher hosts' names, LAVA's workers."""
    call.lab.check_read(call.who)
    return [h["name"] for h in call.lab.reader.hosts()]


@method("scheduler.workers.show")
def workers_show(call: Call, hostname: Any) -> dict[str, Any]:
    """One dispatcher host as LAVA shows a worker (state, devices, version)."""
    from importlib.metadata import PackageNotFoundError, version

    call.lab.check_read(call.who)
    h = call.lab.host(str(hostname))
    try:
        ours = version("lavamq")
    except PackageNotFoundError:
        ours = "unknown"
    return {
        "hostname": h["name"],
        "description": "",
        "state": lava.worker_state(h["state"]),
        "health": "Active",
        "devices": h["devices"],
        "last_ping": when(h["last_heartbeat"]),
        "job_limit": 0,
        "version": f"lavamq {ours}",
        "default_config": True,
        "default_env": True,
        "default_env_dut": True,
    }
