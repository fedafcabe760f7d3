"""A test definition's ``install:`` as LAVA does it: git-repos cloned on the dispatcher
into the test's directory, everything else written into its ``install.sh``.

LAVA's install.sh holds the parameters, then ``lava-add-keys``,
``lava-add-sources`` and ``lava-install-packages`` lines for ``keys``,
``sources`` and ``deps``, then ``cd`` into the test's directory, ``pwd`` and
the ``steps``. The runner runs it with ``/bin/sh`` (no ``-e``) before run.sh;
a non-zero status skips that definition's run.sh. The package lines are
written only where the device may run the board OS's package manager: on a
board that is the dispatcher host they are skipped with a log line.
``skip_install`` leaves parts out, as on LAVA.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from dispatcher.testdef import FetchedTest, Logger, git_clone, parameter_lines, skipped_install
from schemas.errors import JobError

log = logging.getLogger(__name__)


def repo_target(entry: str | dict[str, str], test: FetchedTest) -> tuple[str, str | None, str]:
    """(url, branch, destination) of one ``git-repos`` entry.

    A mapping's ``url``, ``branch`` and ``destination`` may name a parameter:
    the definition's default, or the job's value over it, is used (LAVA's
    ``_lookup_params``). Without ``destination`` the repository goes into the
    URL's last part without ``.git``.
    """
    if isinstance(entry, str):
        url, branch, destination = entry, None, None
    else:
        values = {key: test.parameters.get(value, value) for key, value in entry.items()}
        url, branch, destination = values["url"], values.get("branch"), values.get("destination")
    if not destination:
        destination = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    if not destination or "/" in destination or destination in (".", ".."):
        raise JobError(
            f"test definition {test.name}: install.git-repos {url}: destination "
            f"{destination!r} is not a directory name inside the test's directory"
        )
    return url, branch, destination


def clone_git_repos(test: FetchedTest, *, deadline: float | None, say: Logger) -> None:
    """Clone each ``install: git-repos`` entry into the test's directory."""
    if "git-repos" in skipped_install(test.spec):
        if test.definition.install_git_repos:
            say(f"test definition {test.name}: install git-repos skipped (skip_install)")
        return
    for entry in test.definition.install_git_repos:
        url, branch, destination = repo_target(entry, test)
        dest = test.directory / destination
        if dest.exists():
            raise JobError(
                f"test definition {test.name}: install.git-repos {url}: {destination} "
                "already exists in the test's directory (two entries for one directory?)"
            )
        say(
            f"test definition {test.name}: cloning install git-repo {url}"
            + (f" (branch {branch})" if branch else "")
            + f" into {destination}/"
        )
        git_clone(url, dest, revision=None, branch=branch, deadline=deadline)


def distro_deps(test: FetchedTest, distro: str, say: Logger) -> list[str]:
    """``install: deps-<distro>`` for the board's distribution (LAVA adds them to
    ``deps``); with no distribution known, none, saying so."""
    install = test.definition.document.get("install")
    if not isinstance(install, dict):
        return []
    if not distro:
        named = sorted(k for k in map(str, install) if k.startswith("deps-"))
        if named:
            say(
                f"test definition {test.name}: install {', '.join(named)} skipped: the deploy "
                "names no os: (the board's distribution)"
            )
        return []
    listed = install.get(f"deps-{distro}") or []
    return [str(x) for x in listed] if isinstance(listed, list) else []


#: LAVA's deploy ``os:`` values whose distribution has another name
OS_DISTRO = {"centos_installer": "centos", "debian_installer": "debian"}


def write_install_script(
    test: FetchedTest, *, refused: str, say: Logger, distro: str = ""
) -> Path | None:
    """Write ``install.sh`` (None when the definition installs nothing on the board).

    ``refused`` says why the device may not run the OS's package manager ("" when
    it may): then ``keys``, ``sources`` and ``deps`` are skipped, with a log line.
    ``distro`` (the deploy's ``os:``) adds ``deps-<distro>`` to ``deps``, as LAVA.
    """
    d = test.definition
    skip = skipped_install(test.spec)
    lines: list[str] = []
    distro = OS_DISTRO.get(distro, distro)
    packages = {
        "keys": ("lava-add-keys", d.install_keys),
        "sources": ("lava-add-sources", d.install_sources),
        "deps": ("lava-install-packages", d.install_deps + distro_deps(test, distro, say)),
    }
    for part, (helper, items) in packages.items():
        if not items:
            continue
        if part in skip:
            say(f"test definition {test.name}: install {part} skipped (skip_install)")
        elif refused:
            listed = ", ".join(items)
            say(f"test definition {test.name}: install {part} ({listed}) skipped: {refused}")
        elif part == "deps":
            lines.append(f"{helper} {' '.join(shlex.quote(i) for i in items)}")
        else:
            lines += [f"{helper} {item}" for item in items]
    if d.install_steps and "steps" not in skip:
        lines += ['cd "$(dirname "$0")"', "pwd", *d.install_steps]
    elif d.install_steps:
        say(f"test definition {test.name}: install steps skipped (skip_install)")
    if not lines:
        return None
    path = test.directory / "install.sh"
    text = ["#!/bin/sh", *parameter_lines(test), *lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    path.chmod(0o755)
    return path
