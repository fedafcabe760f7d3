"""LAVA's XML-RPC endpoint ``/RPC2``: decode, authenticate, dispatch, encode.

The body is decoded and the answer encoded by the standard library's
``xmlrpc.client.loads``/``dumps``; the methods are in server/lava_api.py.
Authentication is LAVA's: ``Authorization: Basic base64(user:token)`` (what
lavacli sends for ``http://user:token@host/RPC2``); an unknown pair is an
HTTP 401 with ``WWW-Authenticate``, a header of another scheme or not
decodable an HTTP 400, no header an anonymous call. Every other problem is a
Fault inside HTTP 200, never an HTTP 5xx: lavacli retries those and, in
``jobs logs``, polls forever.
"""

from __future__ import annotations

import base64
import binascii
import logging
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from schemas.job import MAX_JOB_BYTES
from server import lava_api
from server.errors import answer_for
from server.lab import Lab
from server.users import ANONYMOUS, Identity

log = logging.getLogger(__name__)

#: a job file may grow five-fold as XML text (``&`` → ``&amp;``) plus the envelope
MAX_BODY = 5 * MAX_JOB_BYTES + 65536
#: how much of an oversized body is read and dropped so the client sees the answer
MAX_DRAIN = 64 * 1024 * 1024
CONTENT_TYPE = "text/xml; charset=utf-8"
#: linaro_django_xmlrpc's fault codes
FAULT_NOT_WELL_FORMED = -32700
FAULT_INVALID_REQUEST = -32600
FAULT_NO_SUCH_METHOD = -32601
FAULT_BAD_PARAMS = -32602
FAULT_INTERNAL = -32603

router = APIRouter(tags=["xmlrpc"])
#: where lavacli posts (``http://host/RPC2``, some identities with a trailing slash)
PATHS = ("/RPC2", "/RPC2/")


def fault_body(code: int, message: str) -> bytes:
    """An XML-RPC fault as the response body LAVA's clients expect."""
    text = xmlrpc.client.dumps(
        xmlrpc.client.Fault(code, message), allow_none=True, encoding="utf-8"
    )
    return text.encode("utf-8")


def _xml(body: bytes) -> Response:
    return Response(body, media_type=CONTENT_TYPE)


def caller(lab: Lab, header: str | None) -> Identity | Response:
    """Who calls, from the Authorization header; or the HTTP answer LAVA gives."""
    if header is None:
        return ANONYMOUS
    scheme, _, value = header.partition(" ")
    if not value:
        return PlainTextResponse("Invalid HTTP_AUTHORIZATION header", status_code=400)
    if scheme != "Basic":
        return PlainTextResponse(
            "Unsupported HTTP_AUTHORIZATION header, only Basic scheme is supported",
            status_code=400,
        )
    try:
        decoded = base64.standard_b64decode(value.strip()).decode("utf-8")
    except (binascii.Error, ValueError):
        return PlainTextResponse(
            "Corrupted HTTP_AUTHORIZATION header, bad base64 encoding", status_code=400
        )
    name, sep, token = decoded.partition(":")
    if not sep:
        return PlainTextResponse(
            "Corrupted HTTP_AUTHORIZATION header, no user:pass", status_code=400
        )
    who = lab.identify(token, name)
    if who is None:
        return PlainTextResponse(
            "Invalid token",
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="XML-RPC Authentication token"'},
        )
    return who


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it is over :data:`MAX_BODY` (the rest is read and dropped)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY + MAX_DRAIN:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            if size > MAX_BODY + MAX_DRAIN:
                break
            parts = []
            continue
        parts.append(chunk)
    return None if size > MAX_BODY else b"".join(parts)


def decode_call(body: bytes) -> tuple[str, tuple[Any, ...]]:
    """(method, params); raises Fault for anything that is not one XML-RPC call."""
    try:
        params, name = xmlrpc.client.loads(body, use_builtin_types=False)
    except xml.parsers.expat.ExpatError as exc:
        raise xmlrpc.client.Fault(FAULT_NOT_WELL_FORMED, f"not well-formed XML: {exc}") from None
    except (xmlrpc.client.ResponseError, ValueError, TypeError, OverflowError) as exc:
        raise xmlrpc.client.Fault(
            FAULT_INVALID_REQUEST, f"Unable to decode request: {exc}"
        ) from None
    except Exception as exc:  # the unmarshaller raises several undocumented kinds
        raise xmlrpc.client.Fault(
            FAULT_INVALID_REQUEST, f"Unable to decode request: {type(exc).__name__}: {exc}"
        ) from None
    if not name or not isinstance(name, str):
        raise xmlrpc.client.Fault(FAULT_INVALID_REQUEST, "Unable to decode request: no method")
    return name, tuple(_plain(p) for p in params)


def _plain(value: Any) -> Any:
    """Binary arguments as text (LAVA takes job files as str); the rest as it came."""
    if isinstance(value, xmlrpc.client.Binary):
        return value.data.decode("utf-8", errors="replace")
    return value


#: what a call gives: an encoded answer or fault, or a log to stream
Answer = bytes | lava_api.StreamedLog


def run_call(lab: Lab, who: Identity, body: bytes) -> Answer:
    """Decode, run and encode one call (blocking: runs in the thread pool)."""
    try:
        name, params = decode_call(body)
    except xmlrpc.client.Fault as fault:
        return fault_body(fault.faultCode, fault.faultString)
    try:
        result = lava_api.bind(name, params)(lava_api.Call(lab, who))
        if isinstance(result, lava_api.StreamedLog):
            return result
        return xmlrpc.client.dumps(
            (result,), methodresponse=True, allow_none=True, encoding="utf-8"
        ).encode("utf-8")
    except lava_api.NoSuchMethod as exc:
        return fault_body(FAULT_NO_SUCH_METHOD, str(exc))
    except lava_api.BadParams as exc:
        return fault_body(FAULT_BAD_PARAMS, str(exc))
    except Exception as exc:
        return error_fault(exc, name)


def error_fault(exc: Exception, what: str) -> bytes:
    """Any error of a call as LAVA's fault (a bug logged, as -32603), never an HTTP 500."""
    code, _, err = answer_for(exc)
    if code == FAULT_INTERNAL:
        log.error("xmlrpc %s failed", what, exc_info=exc)
        return fault_body(code, f"Internal Server Error: {err.message}")
    return fault_body(code, err.message)


def streamed(log_answer: lava_api.StreamedLog) -> Iterator[bytes]:
    """``(finished, Binary(text))`` as XML-RPC, the text base64-encoded as it is read.

    The envelope comes from ``xmlrpc.client.dumps`` around a marker Binary; the
    marker's base64 is replaced by the log's, encoded in runs of 57 bytes (one
    76-character base64 line, as ``Binary`` writes it).
    """
    marker = b"lavamq-log-marker"
    envelope = xmlrpc.client.dumps(
        ((log_answer.finished, xmlrpc.client.Binary(marker)),),
        methodresponse=True,
        allow_none=True,
        encoding="utf-8",
    )
    head, _, tail = envelope.partition(base64.encodebytes(marker).decode("ascii"))
    yield head.encode("utf-8")
    pending = b""
    for chunk in log_answer.chunks:
        pending += chunk
        cut = len(pending) - len(pending) % 57
        if cut:
            yield base64.encodebytes(pending[:cut])
            pending = pending[cut:]
    if pending:
        yield base64.encodebytes(pending)
    yield tail.encode("utf-8")


def answer_call(lab: Lab, header: str | None, body: bytes | None) -> Response | Answer:
    """Authenticate and run one call: the whole request's blocking work, in one thread."""
    try:
        who = ANONYMOUS if header is None else caller(lab, header)
    except Exception as exc:  # the store unreachable: a fault, as for the call itself
        return error_fault(exc, "authentication")
    if isinstance(who, Response):
        return who
    if body is None:
        return fault_body(FAULT_INVALID_REQUEST, f"request body over {MAX_BODY} bytes")
    if not body:
        return fault_body(FAULT_INVALID_REQUEST, "Unable to decode request: empty body")
    return run_call(lab, who, body)


async def answer(lab: Lab, request: Request) -> Response:
    """LAVA's ``/RPC2``: one XML-RPC call, its answer streamed for a job log."""
    body = await _read_body(request)
    answer = await lab.in_thread(answer_call, lab, request.headers.get("authorization"), body)
    if isinstance(answer, Response):
        return answer
    if isinstance(answer, lava_api.StreamedLog):
        return StreamingResponse(streamed(answer), media_type=CONTENT_TYPE)
    return _xml(answer)


async def rpc2(request: Request) -> Response:
    """``POST /RPC2`` as a route (an app without :class:`RPC2Endpoint`)."""
    return await answer(request.app.state.lab, request)


class RPC2Endpoint:
    """``POST /RPC2`` answered ahead of FastAPI's exception and exit-stack middleware and
    its routing, which cost a lavacli call about a quarter of its CPU and give it nothing
    (its errors are faults, made here). Every other request goes on to the app.

    An ASGI middleware (``app.add_middleware(RPC2Endpoint, lab=lab)``): FastAPI's outer
    middleware (the 500 handler) still wraps it.
    """

    def __init__(self, app: ASGIApp, lab: Lab) -> None:
        self.app = app
        self.lab = lab

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``POST /RPC2`` (or ``/RPC2/``) here, pass anything else on."""
        if scope["type"] == "http" and scope["method"] == "POST" and _route_path(scope) in PATHS:
            response = await answer(self.lab, Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the app's routes see (without a ``root_path`` it is mounted under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


async def rpc2_help(request: Request) -> Response:
    """``GET /RPC2``: the list of methods, as LAVA shows it to a browser."""
    methods = "\n".join(f"  {m}" for m in sorted(lava_api.METHODS))
    return PlainTextResponse(
        "LAVA XML-RPC API (lavamq). POST XML-RPC calls here, e.g. with lavacli.\n"
        f"Methods:\n{methods}\nSee docs/server.md.\n"
    )


# plain Starlette routes: LAVA's one endpoint needs none of FastAPI's parameter
# handling; RPC2Endpoint answers the POSTs before them (the POST routes give a 405 its
# Allow, and serve an app without it)
for _path in PATHS:
    router.add_route(_path, rpc2, methods=["POST"], include_in_schema=False)
    router.add_route(_path, rpc2_help, methods=["GET"], include_in_schema=False)
