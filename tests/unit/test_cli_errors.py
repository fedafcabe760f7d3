"""The CLI's one map from error kind to exit code (lavamq/exit_codes.py).

Every kind a service can reply with comes back through the real path: a
coordinator (memory://) whose handler raises it, its reply, the client's
``error_from_dict`` and the CLI's exit code. Before, ``invalid-message`` and
``unauthorized`` replies (and a cancel) were rebuilt as bugs: "lavamq bug",
exit 2.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from lab import memory_coordinator

from coordinator.service import CoordinatorService
from lavamq.cli import main
from lavamq.exit_codes import ERROR_KINDS
from schemas.errors import ERROR_TYPES, JobCanceled, LavamqError, error_from_dict

PRODUCT = ("schemas", "broker_config", "coordinator", "dispatcher", "device_agent", "lavamq")


def _subclasses(cls: type[LavamqError]) -> Iterator[type[LavamqError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_error_kind_of_lavamq_has_an_exit_code_and_a_hint() -> None:
    for package in PRODUCT:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if ".migrations" not in info.name:
                importlib.import_module(info.name)
    kinds = {cls.error_type for cls in _subclasses(LavamqError)} | set(ERROR_TYPES)
    missing = sorted(kinds - set(ERROR_KINDS))
    assert not missing, f"error kinds with no exit code: {missing}"
    assert all(hint for kind, (_, hint) in ERROR_KINDS.items() if kind != "lavamq")


def test_every_kind_sent_as_data_comes_back_as_itself() -> None:
    for kind, cls in ERROR_TYPES.items():
        back = error_from_dict({"error_type": kind, "message": "m"})
        assert type(back) is cls, kind


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorService]:
    with memory_coordinator(tmp_path) as service:
        yield service


@pytest.mark.parametrize("kind", sorted(ERROR_TYPES))
def test_a_reply_of_each_kind_ends_with_its_exit_code(
    coordinator: CoordinatorService, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    def refuse(body: dict[str, Any]) -> Any:
        raise ERROR_TYPES[kind]("the coordinator says no")

    monkeypatch.setattr(coordinator, "_rpc_jobs", refuse)
    result = CliRunner().invoke(main, ["jobs", "--broker", "memory://"])
    code, hint = ERROR_KINDS[kind]
    assert result.exit_code == code, result.output
    if kind == "bug":
        assert "lavamq bug: the coordinator says no" in result.stderr
    else:
        assert f"error ({kind}): the coordinator says no" in result.stderr
        assert "lavamq bug" not in result.stderr
    assert f"hint: {hint}" in result.stderr


def test_json_output_uses_the_same_exit_codes(
    coordinator: CoordinatorService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(body: dict[str, Any]) -> Any:
        raise JobCanceled("job 7 canceled")

    monkeypatch.setattr(coordinator, "_rpc_job_show", refuse)
    result = CliRunner().invoke(main, ["job", "show", "7", "--json", "--broker", "memory://"])
    assert result.exit_code == 1, result.output
    assert '"error_type": "canceled"' in result.stdout
