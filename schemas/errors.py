"""The error taxonomy shared by every part of lavamq.

Three kinds matter to users: the job file's fault (JobError), the lab's
(InfrastructureError), and a failed test (a result, never an exception); a
job stopped on purpose is JobCanceled. A message that does not fit its schema
(InvalidMessage) or whose sender may not send it (Unauthorized) is refused at
the edge. Anything else that escapes is a bug (LavamqBug) and is reported with
its traceback. Errors cross the broker as data (``error_type`` + ``message``)
and are rebuilt only from the allow-list in ``ERROR_TYPES``.
"""

from __future__ import annotations

from typing import Any


class LavamqError(Exception):
    """Base of every error lavamq raises on purpose."""

    error_type = "lavamq"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The error as data, to cross the broker (rebuilt by ``error_from_dict``)."""
        return {"error_type": self.error_type, "message": self.message}

    def __str__(self) -> str:
        return self.message


class JobError(LavamqError):
    """The job file (or a test definition it names) is at fault."""

    error_type = "job"


class InfrastructureError(LavamqError):
    """The lab is at fault: a device, a host, the broker, the network."""

    error_type = "infrastructure"


class ConfigurationError(LavamqError):
    """A lavamq configuration or device dictionary is wrong."""

    error_type = "configuration"


class MultinodeTimeout(LavamqError):
    """A MultiNode operation did not complete before its deadline."""

    error_type = "multinode-timeout"


class GroupFailed(LavamqError):
    """The MultiNode group was failed (a node died, timed out or was cancelled)."""

    error_type = "group-failed"


class JobCanceled(LavamqError):
    """The job was canceled (by a user, a join deadline, or its dispatcher stopping)."""

    error_type = "canceled"


class InvalidMessage(LavamqError):
    """A message body that does not match its schema."""

    error_type = "invalid-message"


class Unauthorized(LavamqError):
    """A message whose sender may not send it: dead-lettered, never acted on."""

    error_type = "unauthorized"


class LavamqBug(LavamqError):
    """An unexpected exception: a bug in lavamq. Never retried."""

    error_type = "bug"


ERROR_TYPES: dict[str, type[LavamqError]] = {
    cls.error_type: cls
    for cls in (
        JobError,
        InfrastructureError,
        ConfigurationError,
        MultinodeTimeout,
        GroupFailed,
        JobCanceled,
        InvalidMessage,
        Unauthorized,
        LavamqBug,
    )
}


def error_from_dict(data: dict[str, Any]) -> LavamqError:
    """Rebuild an error that crossed the broker; unknown types become bugs."""
    cls = ERROR_TYPES.get(str(data.get("error_type")), LavamqBug)
    return cls(str(data.get("message", "")))


def classify(exc: BaseException) -> LavamqError:
    """Keep a known error's kind; turn anything else into a bug report."""
    if isinstance(exc, LavamqError):
        return exc
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    bug = LavamqBug(f"{type(exc).__name__}: {exc}", traceback=tb)
    bug.__cause__ = exc
    return bug
