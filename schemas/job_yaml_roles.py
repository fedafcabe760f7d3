"""What each role's actions ask of its device, checked when the job file is loaded:
a deploy its device type can do, and a boot before its tests.

Both are checked per role, so ``validate``, ``submit`` and ``run`` refuse the
job before anything starts, naming the action, the role and its nodes.
"""

from __future__ import annotations

from schemas.deploys import NO_URL_DEPLOYS, deploy_refused
from schemas.job_checks import Problems
from schemas.jobmodel import ActionPlan, RolePlan


def _nodes(role: RolePlan) -> str:
    names = ", ".join(f"{role.name} #{i}" for i in range(min(role.count, 3)))
    more = f" and {role.count - 3} more" if role.count > 3 else ""
    return f"node{'s' if role.count > 1 else ''} {names}{more}"


def check_role_actions(
    roles: list[RolePlan], actions: list[ActionPlan], problems: Problems
) -> None:
    """Each role's deploys without images are ones its device type can do; each of its
    test actions comes after a boot (an ``is_slave`` role is booted by its master, a
    ``docker:`` test runs in a container of the dispatcher)."""
    for role in roles:
        booted = role.is_slave
        for action in (a for a in actions if a.applies_to(role.name)):
            where = f"actions[{action.index}].{action.kind}"
            params = action.parameters
            if action.kind == "deploy" and not params.get("images"):
                _check_deploy(role, params, where, problems)
            elif action.kind == "boot":
                booted = True
            elif action.kind == "test" and not booted and "docker" not in params:
                problems.add(
                    where,
                    f"role {role.name} ({_nodes(role)}) is never booted before this test: "
                    "add a boot action for it before the test",
                )


def _check_deploy(
    role: RolePlan, params: dict[str, object], where: str, problems: Problems
) -> None:
    method = str(params.get("to") or "")
    if method not in NO_URL_DEPLOYS:
        return
    if method == "docker":
        image = params.get("image")
        name = image.get("name") if isinstance(image, dict) else image
        if not isinstance(name, str) or not name:
            problems.add(
                f"{where}.image",
                "to: docker needs the container image: 'image: NAME' or 'image: {name: NAME}'",
            )
            return
    why = deploy_refused(method, role.device_type or "")
    if why:
        problems.add(
            where,
            f"to: {method} is not supported on device type {role.device_type} "
            f"(role {role.name}): {why}",
        )
