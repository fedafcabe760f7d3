"""What every REST router shares: the caller, the lab, JSON errors, page parameters."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.errors import LavamqError
from server.errors import LoginRequired, answer_for
from server.lab import Lab
from server.users import ANONYMOUS, Identity

#: the largest id a path or filter takes (SQLite and PostgreSQL integers hold it)
MAX_ID = 2**31 - 1


class ErrorBody(BaseModel):
    """Every REST error: its kind, what went wrong, and for a job file every problem."""

    error_type: str
    message: str
    problems: list[str] = []


#: the error answers of every route, always JSON (also for routes that answer text)
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "content": {"application/json": {}}}
    for status in (400, 401, 403, 404, 503)
}


def lab_of(request: Request) -> Lab:
    """The lab the application serves (set on its state at creation)."""
    lab: Lab = request.app.state.lab
    return lab


def caller(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Identity:
    """``Authorization: Bearer TOKEN`` (or LAVA's basic ``user:token``); none: anonymous."""
    if not authorization:
        return ANONYMOUS
    lab = lab_of(request)
    scheme, _, value = authorization.partition(" ")
    who = None
    if scheme.lower() == "bearer" and value:
        who = lab.identify(value.strip())
    elif scheme.lower() == "basic" and value:
        try:
            name, sep, token = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, sep, token = "", "", ""
        who = lab.identify(token, name) if sep else None
    if who is None:
        raise LoginRequired("invalid token: use Authorization: Bearer TOKEN (lavamq token create)")
    return who


Caller = Annotated[Identity, Depends(caller)]
LabDep = Annotated[Lab, Depends(lab_of)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Skip this many items.")]
Limit = Annotated[int, Query(ge=1, le=500, description="At most this many items.")]


def error_response(exc: BaseException) -> JSONResponse:
    """A lavamq error (or any exception) as the REST API's JSON error body and status."""
    _, status, err = answer_for(exc)
    body = ErrorBody(
        error_type=err.error_type,
        message=err.message,
        problems=list(getattr(err, "problems", []) or []),
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def install_errors(app: FastAPI) -> None:
    """Our errors (and bugs) as :class:`ErrorBody` JSON with the status of ERROR_ANSWERS."""
    allowed = _allowed_methods(app)

    @app.exception_handler(LavamqError)
    async def lavamq_error(request: Request, exc: LavamqError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {401: "login-required", 403: "permission", 404: "not-found"}
        body = ErrorBody(
            error_type=kinds.get(exc.status_code, "bad-request"), message=str(exc.detail)
        )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed(request.url.path) or headers.get("Allow", "")
        return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=headers)


def _allowed_methods(app: FastAPI) -> Callable[[str], str | None]:
    """A 405's ``Allow``: every method the schema has for the path (Starlette names only
    the first route's, though ``GET /jobs`` and ``POST /jobs`` are two routes). Done in
    the 405's handler, not in a middleware, which would cost every request."""
    table: list[tuple[re.Pattern[str], str]] = []

    def allowed(path: str) -> str | None:
        if not table:
            for template, ops in app.openapi().get("paths", {}).items():
                pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
                table.append((re.compile(f"^{pattern}$"), ", ".join(m.upper() for m in ops)))
        return next((methods for pattern, methods in table if pattern.match(path)), None)

    return allowed
