"""Exit codes of the ``lavamq`` command, one per error kind, with a hint each.

0 ok, 1 a known error (the job's, the lab's, a refused message...), 2 a bug
or a usage error. Every kind in ``schemas.errors.ERROR_TYPES`` (what the
services reply with) has its row; tests/unit/test_cli_errors.py checks that
no error class of lavamq is missing.
"""

from __future__ import annotations

from schemas.errors import LavamqBug, LavamqError

#: every error kind lavamq raises or a service replies with: (exit code, hint)
ERROR_KINDS: dict[str, tuple[int, str]] = {
    "job": (1, "fix the job file; `lavamq validate FILE` lists every problem"),
    "infrastructure": (1, "the lab is at fault: check the broker, the coordinator and the hosts"),
    "configuration": (1, "check the lavamq configuration or the host's device dictionary"),
    "multinode-timeout": (1, "a MultiNode call timed out: see the job log of the node it names"),
    "group-failed": (1, "another node of the group failed: see that node's job log"),
    "canceled": (1, "the job was canceled; `lavamq jobs show ID` says by whom and why"),
    "invalid-message": (
        1,
        "a message did not fit its schema: do the client and the services run "
        "the same lavamq version?",
    ),
    "unauthorized": (
        1,
        "this broker user may not do that: use an operator account, not a host's or a service's",
    ),
    "not-found": (1, "no job, node, device or host of that name: see `lavamq jobs`"),
    "login-required": (
        1,
        "the lab server needs a token: `lavamq token create NAME`, then set $LAVAMQ_TOKEN",
    ),
    "permission": (1, "this user may not do that: ask an admin of the lab server"),
    "bad-request": (1, "an argument has the wrong type or value: see the command's --help"),
    "lavamq": (1, ""),
    "bug": (2, "please report it with the traceback above"),
}


def exit_code_and_hint(err: LavamqError) -> tuple[int, str]:
    """The exit code and the hint for an error (a kind not listed: 1, no hint)."""
    kind = "bug" if isinstance(err, LavamqBug) else err.error_type
    return ERROR_KINDS.get(kind, (1, ""))
