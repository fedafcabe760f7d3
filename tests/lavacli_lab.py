"""A lab server for tests: ``lavamq server`` as a real process and the real lavacli against it.

``server_process`` starts ``lavamq server`` on an ephemeral port (its ready
line names the port); ``Lavacli`` runs the real ``lavacli`` as a subprocess
with its configuration in a private ``XDG_CONFIG_HOME``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from lab import LAVAMQ, ServiceProcess

READY = "lavamq server ready on"


def make_user(db_url: str, name: str, *, admin: bool = False, cwd: Path) -> str:
    """``lavamq user add`` then ``lavamq token create``; the token (the last line printed)."""
    args = ["user", "add", name, "--db", db_url, *(["--admin"] if admin else [])]
    subprocess.run([*LAVAMQ, *args], check=True, capture_output=True, cwd=cwd, timeout=60)
    out = subprocess.run(
        [*LAVAMQ, "token", "create", name, "--db", db_url],
        check=True,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )
    return out.stdout.strip().splitlines()[-1]


def server_process(*args: str, cwd: Path) -> ServiceProcess:
    """``lavamq server --listen 127.0.0.1:0 ARGS`` (not started)."""
    return ServiceProcess(["server", "--listen", "127.0.0.1:0", *args], READY, cwd=cwd)


def server_url(proc: ServiceProcess) -> str:
    match = re.search(r"lavamq server ready on (http://\S+)", proc.text())
    assert match, proc.text()
    return match.group(1)


class Lavacli:
    """The real lavacli, with identities kept under ``home``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(home)}
        self.env.pop("FORCE_COLOR", None)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "lavacli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, f"lavacli {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "lavacli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )

    def add_identity(self, name: str, url: str, user: str | None, token: str | None) -> None:
        args = ["identities", "add", name, "--uri", f"{url}/RPC2"]
        if user and token:
            args += ["--username", user, "--token", token]
        self(*args)
