"""The DUT side of MultiNode: helpers and the node's context in an overlay directory.

:func:`write_overlay` puts the ``lava-*`` helper scripts in ``<dest>/bin`` and
the node's MultiNode context (its name, its role, the group table) in
``<dest>/bin/multinode/``, where ``lava-self``, ``lava-role`` and
``lava-group`` read it: no broker call is needed to answer them.
:func:`overlay_environment` and :func:`setup_commands` give the variables and
the shell lines (``export ...``) that put the helpers on the test shell's
PATH once the overlay is on the device at ``target``.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import JobError

HELPERS_DIR = Path(__file__).parent / "helpers"
COMMON = "lava-multi-node-common"
#: the helpers' shared code, sourced (not run) by the others
SOURCED = frozenset({COMMON, "lava-common-functions"})


@dataclass(frozen=True)
class MultinodeContext:
    """What a node knows about its group without asking anyone."""

    self_name: str
    role: str
    #: node → role, in the group's order
    group: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_client(cls, client: Any) -> MultinodeContext:
        """From a ``MultinodeClient`` (``self_name``, ``role``, ``group_members()``)."""
        return cls(str(client.self_name), str(client.role), dict(client.group_members()))

    def check(self) -> None:
        """Refuse node and role names the helpers could not pass on (JobError)."""
        for node, role in {self.self_name: self.role, **self.group}.items():
            for what, value in (("node", node), ("role", role)):
                if not value or any(ch in value for ch in "\t\n<> "):
                    raise JobError(f"MultiNode context: bad {what} name {value!r}")
        if self.group and self.group.get(self.self_name) != self.role:
            raise JobError(
                f"MultiNode context: {self.self_name} is not in its group as role {self.role}"
            )


def helper_names() -> list[str]:
    """Every ``lava-*`` helper shipped to the board."""
    return sorted(p.name for p in HELPERS_DIR.iterdir() if p.name.startswith("lava-"))


def write_overlay(dest: str | Path, context: MultinodeContext | None = None) -> Path:
    """Write the helpers (and the context, for a MultiNode job) under ``dest``.

    Returns the helpers' directory (``dest/bin``). Existing files are replaced.
    """
    dest = Path(dest)
    bin_dir = dest / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in helper_names():
        target = bin_dir / name
        shutil.copyfile(HELPERS_DIR / name, target)
        target.chmod(0o644 if name in SOURCED else 0o755)
    if context is not None:
        context.check()
        ctx_dir = bin_dir / "multinode"
        ctx_dir.mkdir(exist_ok=True)
        (ctx_dir / "self").write_text(context.self_name)
        (ctx_dir / "role").write_text(context.role)
        (ctx_dir / "group").write_text(
            "".join(f"{node}\t{role}\n" for node, role in context.group.items())
        )
    return bin_dir


def overlay_environment(
    target: str, *, cache_dir: str | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables the helpers read, for an overlay that is at ``target`` on the DUT.

    ``cache_dir`` holds the MultiNode cache files (default ``/tmp``, as in
    LAVA; a ``local`` board passes its own tmp directory).
    """
    cache = cache_dir or "/tmp"
    env = {
        "LAVA_TEST_BIN": f"{target}/bin",
        "LAVA_MULTI_NODE_CONTEXT": f"{target}/bin/multinode",
        "LAVA_MULTI_NODE_CACHE": f"{cache}/lava_multi_node_cache.txt",
        "LAVA_MULTI_NODE_NETWORK_CACHE": f"{cache}/lava_multi_node_network_cache.txt",
        "LAVA_RESULT_DIR": f"{target}/results",
    }
    env.update(extra or {})
    return env


def setup_commands(env: Mapping[str, str]) -> list[str]:
    """Shell lines that export ``env`` and put ``$LAVA_TEST_BIN`` first on PATH."""
    lines = [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    if "LAVA_TEST_BIN" in env:
        lines.append(f'export PATH={shlex.quote(env["LAVA_TEST_BIN"])}:"$PATH"')
    return lines
