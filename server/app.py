"""The ASGI app: one FastAPI application with a router per resource.

``create_app(lab)`` wires the routers to a :class:`server.lab.Lab`;
``app_from_env()`` builds one from ``LAVAMQ_*`` variables, for uvicorn's
``--workers`` (each worker process imports and builds its own).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from server import xmlrpc
from server.lab import Lab, ServerSettings
from server.live import LiveTap
from server.metrics import CONTENT_TYPE, Metrics
from server.rest import common, jobs
from server.rest import lab as lab_routes
from server.web import pages


def create_app(lab: Lab, *, live: bool = False) -> FastAPI:
    """The app on ``lab``; ``live``: consume the broker's logs and events while it runs
    (metrics of the traffic, the web view's live parts)."""
    metrics = Metrics(lab.reader)
    tap = LiveTap(lab.settings.broker_url)
    tap.add_listener(metrics.on_live)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if live:
            await run_in_threadpool(tap.start)
        try:
            yield
        finally:
            if live:
                await run_in_threadpool(tap.stop)

    app = FastAPI(
        title="lavamq lab server",
        summary="LAVA's XML-RPC at /RPC2, a REST API under /api/v1, /metrics and the web view",
        version="1",
        lifespan=lifespan,
    )
    app.state.lab = lab
    app.state.live = tap
    app.include_router(xmlrpc.router)
    app.add_middleware(xmlrpc.RPC2Endpoint, lab=lab)
    app.include_router(jobs.router)
    app.include_router(lab_routes.router)
    common.install_errors(app)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(pages.HERE / "static")), name="static")

    @app.get("/metrics", tags=["metrics"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics: the lab's state (from the store) and its traffic (live)."""
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    @app.get("/health", tags=["health"])
    async def health(request: Request) -> JSONResponse:
        """200 when the broker and the store answer, 503 (naming what failed) when not."""
        checks = await run_in_threadpool(request.app.state.lab.health)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"ok": ok, **checks}, status_code=200 if ok else 503)

    return app


def settings_from_env() -> ServerSettings:
    """The settings ``lavamq server`` hands its worker processes."""
    return ServerSettings(
        broker_url=os.environ["LAVAMQ_BROKER_URL"],
        db_url=os.environ["LAVAMQ_DB_URL"],
        log_dir=os.environ.get("LAVAMQ_LOG_DIR", "lavamq-logs"),
        anonymous_read=os.environ.get("LAVAMQ_ANONYMOUS_READ", "1") == "1",
    )


def app_from_env() -> FastAPI:
    """The web application configured from the environment (for ``uvicorn --factory``)."""
    return create_app(Lab(settings_from_env(), run_migrations=False), live=True)
