"""Submitted job files are loaded in a worker process, bounded in time and memory.

The loader bounds what a job file may hold (``schemas.job``: bytes, values
once YAML aliases are expanded, depth), so a valid or invalid file loads in
milliseconds. The worker is the second wall, for whatever those bounds miss:
a submission whose loading takes more than ``timeout`` seconds or more than
``memory_bytes`` of address space is refused with a problem that says so,
the worker is replaced, and the coordinator itself never holds the memory.
The coordinator's consumer waits for one submission at most ``timeout``
seconds, so one bad job delays the lab's other messages by that much at most.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import resource
import traceback
from multiprocessing.connection import Connection
from typing import Any

from schemas.errors import InfrastructureError, LavamqBug
from schemas.job import JobPlan, JobValidationError

log = logging.getLogger(__name__)

#: the function a worker loads a job file with: ``module:function``, (text, source) -> JobPlan
DEFAULT_LOADER = "schemas.job:load_job"


def _serve(conn: Connection, memory_bytes: int, loader: str) -> None:
    """The worker: load each (text, source) it is sent, under an address-space limit."""
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    module, _, name = loader.partition(":")
    load = getattr(importlib.import_module(module), name)
    while True:
        try:
            text, source = conn.recv()
        except EOFError:
            return
        reply: tuple[str, Any]
        try:
            reply = ("ok", load(text, source).to_dict())
        except JobValidationError as exc:
            reply = ("problems", exc.problems)
        except MemoryError:
            reply = ("memory", None)
        except Exception as exc:
            reply = ("bug", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        conn.send(reply)
        if reply[0] == "memory":
            return  # what was half built may still be held: a fresh worker takes over


class SubmissionValidator:
    """Loads job files in one worker process at a time; see the module docstring."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        memory_bytes: int = 1 << 30,
        loader: str = DEFAULT_LOADER,
    ) -> None:
        self.timeout = timeout
        self.memory_bytes = memory_bytes
        self.loader = loader
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Connection | None = None
        self.replaced = 0

    def load(self, text: str, source: str) -> JobPlan:
        """The plan of a job file, or ``JobValidationError`` naming every problem or the limit."""
        conn = self._worker()
        try:
            conn.send((text, source))
            answered = conn.poll(self.timeout)
            reply = conn.recv() if answered else None
        except (EOFError, OSError):
            reply = ("died", None)
        if reply is None:
            self._replace("took longer than its time limit")
            raise JobValidationError(
                [
                    f"file: loading it took more than {self.timeout:g} s, the limit for one "
                    "submission (is it a generated file of many repeats?)"
                ],
                source,
            )
        kind, value = reply
        if kind == "ok":
            return JobPlan.from_dict(value)
        if kind == "problems":
            raise JobValidationError(value, source)
        if kind == "bug":
            raise LavamqBug(f"loading {source}: {value.splitlines()[0]}", traceback=value)
        self._replace("ran out of memory" if kind == "memory" else "died")
        raise JobValidationError(
            [
                f"file: loading it needed more than {self.memory_bytes // (1 << 20)} MB, "
                "the limit for one submission"
                if kind == "memory"
                else "file: the validator stopped while loading it (out of memory?)"
            ],
            source,
        )

    def start(self) -> None:
        """Start the worker now (it imports the loader while the caller goes on)."""
        self._worker()

    def close(self) -> None:
        """Stop the worker (a new one starts at the next ``load``)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(2)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(2)
            self._process = None

    def _worker(self) -> Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        self.close()
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_serve,
            args=(child, self.memory_bytes, self.loader),
            name="lavamq-validator",
            daemon=True,
        )
        try:
            process.start()
        except OSError as exc:
            raise InfrastructureError(f"cannot start the job file validator: {exc}") from exc
        child.close()
        self._process, self._conn = process, parent
        return parent

    def _replace(self, why: str) -> None:
        log.warning("job file validator %s: starting a new one", why)
        self.replaced += 1
        if self._process is not None:
            self._process.kill()
        self.close()
