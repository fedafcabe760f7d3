"""The overlay builder: the whole test-shell tree of one sub-job, made in one pass.

As LAVA's OverlayAction does, :func:`build_overlay` writes everything the
board needs before anything runs on it::

    bin/                 the lava-* helpers, lava-test-runner, multinode/ context
    secrets              the job's secrets: NAME=value lines, mode 0600
    tests/<n>_<name>/    each fetched definition, its uuid, run.sh (and install.sh),
                         its install git-repos, testdef.yaml, testdef_metadata
    results/             where lava-test-case keeps a copy of each result
    lava-test-runner.conf  the test runs in order

and returns an :class:`Overlay`, which knows the shell lines that set the
test shell up once the device has put the tree at its target. The test-shell
action only installs it, runs the runner and turns signals into results.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent import overlay as helpers
from dispatcher.testdef import FetchedTest, fetch_test, write_run_script, write_runner
from dispatcher.testdef_install import clone_git_repos, write_install_script

Logger = Callable[[str], Any]


@dataclass(frozen=True)
class OverlaySpec:
    """What one sub-job's overlay is made of."""

    job_id: str
    subjob_id: str
    node: str
    role: str
    #: node → role for the group (the node alone for a single-node job)
    members: Mapping[str, str]
    definitions: Sequence[Mapping[str, Any]]
    #: why the device may not run the board OS's package manager for ``install: deps``
    #: ("" when it may)
    packages_refused: str = "the device does not install the OS's packages"
    device_type: str = ""
    #: the board's distribution, from the deploy's ``os:`` (for ``install: deps-<distro>``)
    distro: str = ""
    #: the job's ``secrets:``, written to ``secrets`` (mode 0600) as ``NAME=value`` lines
    secrets: Mapping[str, str] = field(default_factory=dict)
    #: the job's ``environment:``, written to ``environment`` as ``export NAME=value`` lines
    environment: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Overlay:
    """A built overlay: its directory on this host and its test runs by run id."""

    root: Path
    spec: OverlaySpec
    tests: dict[str, FetchedTest] = field(default_factory=dict)

    def environment(self, target: str, cache_dir: str) -> dict[str, str]:
        """The variables of the test shell, for the overlay at ``target`` on the board."""
        return helpers.overlay_environment(
            target,
            cache_dir=cache_dir,
            extra={
                "LAVA_OVERLAY": target,
                "LAVA_JOB_ID": self.spec.job_id,
                "LAVA_SUBJOB_ID": self.spec.subjob_id,
                # what LAVA's overlay writes into its helpers and run.sh
                "LAVA_HOSTNAME": self.spec.node,
                "TARGET_ROLE": self.spec.role,
                "LAVA_DEVICE_TYPE": self.spec.device_type,
            },
        )

    def setup_commands(
        self, target: str, cache_dir: str, device_env: Mapping[str, str] | None = None
    ) -> list[str]:
        """The shell lines that prepare the test shell (exports, PATH, ``LAVA_GROUP``, and
        what the device tells the test: ``TARGET_DEVICE_IP``...)."""
        one_line = {k: v for k, v in (device_env or {}).items() if not {"\n", "\t"} & set(v)}
        lines = list(helpers.setup_commands({**self.environment(target, cache_dir), **one_line}))
        # LAVA's name<TAB>role lines
        group = dict(self.spec.members or {self.spec.node: self.spec.role})
        table = "\n".join(f"{node}\t{role}" for node, role in group.items())
        lines.append(printf_export("LAVA_GROUP", table))
        lines += [printf_export(k, v) for k, v in (device_env or {}).items() if k not in one_line]
        if self.spec.environment:
            # the job's environment:, as LAVA's test shell sources /lava-<id>/environment
            lines.append(f". {shlex.quote(target)}/environment")
        return lines

    def runner(self, target: str) -> str:
        """The command that runs every definition, as the board sees it."""
        return f"{target}/bin/lava-test-runner"


#: the longest line of joined setup commands typed at the board's prompt: well under
#: busybox's line editor (1024) and a tty's canonical buffer (4096)
SETUP_LINE_LIMIT = 480


def joined_commands(commands: Sequence[str], limit: int = SETUP_LINE_LIMIT) -> list[str]:
    """``commands`` in as few shell lines as fit ``limit``: ``{ a; } && { b; }``.

    Each line typed at a prompt costs a round trip to the board (a serial line, a
    VM under TCG: ~20 ms each); joined, the test shell's setup takes one or two.
    Braces keep exports in the shell and ``&&`` makes a line's status that of its
    first failing command (the rest not run); a command longer than ``limit``
    goes on a line of its own.
    """
    lines: list[str] = []
    for command in commands:
        part = f"{{ {command}; }}"
        if lines and len(lines[-1]) + 4 + len(part) <= limit:
            lines[-1] = f"{lines[-1]} && {part}"
        else:
            lines.append(part)
    return lines


def printf_export(name: str, text: str) -> str:
    """``export NAME`` of a value with newlines or TABs, made by printf on the board: no
    newline (a continuation prompt) nor TAB (completion) is typed at the prompt."""
    escaped = text.replace("\\", "\\\\").replace("%", "%%")
    escaped = escaped.replace("\n", "\\n").replace("\t", "\\t")
    return f'{name}="$(printf {shlex.quote(escaped)})"; export {name}'


def environment_lines(data: Any, prefix: str = "") -> list[str]:
    """``export NAME=value`` lines of the job's ``environment:`` as LAVA's overlay writes
    them: a mapping or list flattened into ``NAME_KEY``/``NAME_0``, booleans 1/0."""
    if isinstance(data, Mapping):
        return [
            line
            for key, value in data.items()
            for line in environment_lines(value, f"{prefix}_{key}" if prefix else str(key))
        ]
    if isinstance(data, (list, tuple)):
        return [
            line
            for index, value in enumerate(data)
            for line in environment_lines(value, f"{prefix}_{index}" if prefix else str(index))
        ]
    if isinstance(data, bool):
        text = "1" if data else "0"
    elif data is None:
        text = "''"
    else:
        text = shlex.quote(str(data))
    return [f"export {prefix}={text}"]


def write_secrets(path: Path, secrets: Mapping[str, str]) -> None:
    """LAVA's ``secrets`` file: one ``NAME=value`` line each, for the test to source
    (a value the shell would split is quoted), readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.writelines(f"{name}={shlex.quote(value)}\n" for name, value in secrets.items())


def build_overlay(spec: OverlaySpec, dest: Path, *, deadline: float | None, say: Logger) -> Overlay:
    """Write the overlay of ``spec`` into ``dest`` (helpers, definitions, run scripts)."""
    (dest / "tests").mkdir(parents=True, exist_ok=True)
    (dest / "results").mkdir(exist_ok=True)
    helpers.write_overlay(
        dest,
        helpers.MultinodeContext(
            spec.node, spec.role, dict(spec.members or {spec.node: spec.role})
        ),
    )
    if spec.environment:
        lines = environment_lines(spec.environment)
        (dest / "environment").write_text("".join(f"{line}\n" for line in lines), "utf-8")
        say(f"environment: {len(lines)} variable(s) exported in the test shell")
    if spec.secrets:
        write_secrets(dest / "secrets", spec.secrets)
        say(f"secrets: {', '.join(spec.secrets)} written to the overlay's secrets file")
    overlay = Overlay(dest, spec)
    for i, definition in enumerate(spec.definitions):
        test = fetch_test(dict(definition), i, dest / "tests", deadline=deadline, say=say)
        clone_git_repos(test, deadline=deadline, say=say)
        write_install_script(test, refused=spec.packages_refused, say=say, distro=spec.distro)
        write_run_script(test)
        overlay.tests[test.testrun_id] = test
    write_runner(dest, list(overlay.tests))
    return overlay
