"""The CLI through ``lavamq server``'s REST API, for users without broker credentials.

``lavamq submit/jobs/logs/results --url http://server:8000`` call
``/api/v1/`` with ``Authorization: Bearer TOKEN``; the token comes from
``$LAVAMQ_TOKEN``, else from ``$XDG_CONFIG_HOME/lavamq/token`` (default
``~/.config/lavamq/token``, one line). Errors come back as the server's
``{error_type, message, problems}`` and are raised as our error kinds.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from coordinator.rpc import outcome_unknown
from schemas.errors import ERROR_TYPES, InfrastructureError, JobError, LavamqError
from schemas.job import JobValidationError

TOKEN_ENV = "LAVAMQ_TOKEN"


def token_file() -> Path:
    """The server token file, read when the environment gives none (``$XDG_CONFIG_HOME``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "lavamq" / "token"


def find_token() -> str | None:
    """``$LAVAMQ_TOKEN``, else the token file's first line, else None (anonymous)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    try:
        return token_file().read_text(encoding="utf-8").strip().splitlines()[0] or None
    except (OSError, IndexError):
        return None


class Unanswered(InfrastructureError):
    """The request may have reached the server, but no answer came (a timeout, a reset)."""


class ServerClient:
    """A few REST calls; every answer is JSON (or bytes for downloads)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token if token is not None else find_token()
        self.timeout = timeout

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        """Nothing to close: every call is one HTTP request."""

    def _request(self, method: str, path: str, body: Any = None, **query: Any) -> bytes:
        params = {k: v for k, v in query.items() if v is not None}
        url = f"{self.url}/api/v1{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            raise _error(exc.code, exc.read(), url) from None
        except urllib.error.URLError as exc:  # while connecting or sending: not handled
            raise InfrastructureError(f"cannot reach the lab server at {self.url}: {exc}") from None
        except OSError as exc:  # waiting for the answer: the request may have been handled
            raise Unanswered(f"no answer from the lab server at {self.url}: {exc}") from None

    def get(self, path: str, **query: Any) -> Any:
        """GET ``path`` of the REST API with ``query``; the decoded JSON."""
        return json.loads(self._request("GET", path, **query))

    def submit(
        self, definition: str, source: str = "", submitter: str = "", key: str | None = None
    ) -> dict[str, Any]:
        """The coordinator's receipt (``source`` and ``submitter`` are the server's to set:
        the submitter is the token's user). ``key``: the idempotency key, as
        ``CoordinatorClient.submit``'s; without an answer the outcome is unknown."""
        body = {"definition": definition} | ({"key": key} if key else {})
        try:
            result: dict[str, Any] = json.loads(self._request("POST", "/jobs", body))
        except Unanswered as exc:
            raise outcome_unknown(str(exc), key) from None
        return result

    def jobs(self, states: list[str], limit: int, key: str | None = None) -> list[dict[str, Any]]:
        """The newest jobs (by state, submission key), as ``lavamq jobs`` lists them."""
        items: list[dict[str, Any]] = self.get("/jobs", state=states or None, limit=limit, key=key)[
            "items"
        ]
        return items

    def results(self, job_id: int) -> dict[str, Any]:
        """A job's result bundle."""
        bundle: dict[str, Any] = self.get(f"/jobs/{job_id}/results")
        return bundle

    def log_records(
        self, job_id: int, *, follow: bool, poll: float = 1.0
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(node, record) for every node of the job; with ``follow`` until each node ended."""
        nodes = self.get(f"/jobs/{job_id}")["nodes"]
        offsets = {n["index"]: 0 for n in nodes}
        done: set[int] = set()
        while True:
            for index in offsets:
                if index in done:
                    continue
                while True:
                    page = self.get(
                        f"/jobs/{job_id}/logs", node=index, offset=offsets[index], limit=5000
                    )
                    name = next(n["device"] or n["id"] for n in nodes if n["index"] == index)
                    for rec in page["records"]:
                        yield name, rec
                    offsets[index] = page["next_offset"]
                    if not page["records"]:
                        break
                if page["finished"] or not follow:
                    done.add(index)
            if len(done) == len(offsets):
                return
            time.sleep(poll)
            nodes = self.get(f"/jobs/{job_id}")["nodes"]


def _error(status: int, raw: bytes, url: str) -> LavamqError:
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or body.get("detail") or f"HTTP {status} from {url}")
    if body.get("problems"):
        return JobValidationError(list(body["problems"]), "server")
    cls = ERROR_TYPES.get(str(body.get("error_type")))
    if cls is not None:
        return cls(message)
    if status in (401, 403):
        return JobError(f"{message} (set {TOKEN_ENV} or {token_file()})")
    if status >= 500:
        return InfrastructureError(message)
    return JobError(message)


url_option = click.option(
    "--url",
    envvar="LAVAMQ_SERVER_URL",
    help="Go through the lab server at this URL (env LAVAMQ_SERVER_URL) instead of the "
    f"broker; the token comes from ${TOKEN_ENV} or ~/.config/lavamq/token.",
)
