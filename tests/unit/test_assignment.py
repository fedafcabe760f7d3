"""The dispatcher's typed edge: a sub-job assignment loaded into an Assignment."""

from __future__ import annotations

from pathlib import Path

from device_agent.devices import device_types
from device_agent.devices.base import Capabilities
from dispatcher.assignment import Assignment, PlannedAction, load_assignment
from schemas.job import load_job_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_every_example_sub_job_loads_as_a_typed_assignment() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.json")):
        plan = load_job_file(path)
        for sub in plan.subjobs:
            body = {
                "job_id": 1,
                "subjob_id": 2,
                "node": "n1",
                "role": sub.role,
                "group": "g1",
                "device_type": sub.device_type or "local",
                "members": {"n1": sub.role},
                "timeouts": plan.timeouts.to_dict(),
                "plan": plan.subjob_dict(sub.role, sub.index),
            }
            a = load_assignment(body)
            assert isinstance(a, Assignment) and a.problems == (), path
            assert [x.kind for x in a.actions] == [x.kind for x in sub.actions], path
            assert all(isinstance(x, PlannedAction) for x in a.actions)
            assert a.timeouts.multinode == plan.timeouts.multinode


def test_a_plan_item_that_cannot_load_is_a_problem_not_a_crash() -> None:
    a = load_assignment(
        {"job_id": 1, "subjob_id": 2, "node": "n", "plan": {"actions": [{"kind": "boot"}, 7]}}
    )
    assert [x.kind for x in a.actions] == ["boot"]
    assert len(a.problems) == 1 and a.problems[0].startswith("actions[1]: not an action mapping")


def test_capabilities_are_declared_by_every_device_type() -> None:
    for cls in device_types().values():
        assert isinstance(cls.capabilities, Capabilities)
    assert device_types()["local"].capabilities.installs_packages is False
