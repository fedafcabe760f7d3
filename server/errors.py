"""The server's error kinds and the one table that maps every error to its answer.

Handlers raise our errors (JobError from a job file, InfrastructureError from
the lab, the three below for who may do what); the XML-RPC edge turns them
into LAVA's fault codes and the REST edge into HTTP statuses, both from
:data:`ERROR_ANSWERS`.
"""

from __future__ import annotations

from schemas.errors import (
    ConfigurationError,
    InfrastructureError,
    JobError,
    LavamqError,
    classify,
)


class NotFound(JobError):
    """The job, device, worker or suite asked for does not exist (or is not visible)."""

    error_type = "not-found"


class LoginRequired(LavamqError):
    """The call needs a user and a token."""

    error_type = "login-required"


class PermissionDenied(LavamqError):
    """The user is known but may not do this."""

    error_type = "permission"


class BadRequest(LavamqError):
    """An argument has the wrong type or value."""

    error_type = "bad-request"


#: error kind → (XML-RPC fault code as LAVA uses it, REST HTTP status); first match wins
ERROR_ANSWERS: tuple[tuple[type[BaseException], int, int], ...] = (
    (LoginRequired, 401, 401),
    (PermissionDenied, 403, 403),
    (NotFound, 404, 404),
    (BadRequest, 400, 400),
    (JobError, 400, 400),
    (ConfigurationError, 400, 400),
    (InfrastructureError, 503, 503),
)
#: LAVA's "internal error" fault (linaro_django_xmlrpc FaultCodes.INTERNAL_XML_RPC_ERROR)
INTERNAL_FAULT = -32603


def answer_for(exc: BaseException) -> tuple[int, int, LavamqError]:
    """(fault code, HTTP status, the error as one of ours) for any exception."""
    err = classify(exc)
    for kind, fault, status in ERROR_ANSWERS:
        if isinstance(err, kind):
            return fault, status, err
    return INTERNAL_FAULT, 500, err
