"""``lavamq validate FILE...``: check job files and show the group plan each one makes."""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from dispatcher.registry import role_pipelines
from schemas.job import ActionPlan, JobPlan, JobValidationError, load_job_file
from schemas.job_definitions import local_definition_problems

log = logging.getLogger(__name__)


def duration(seconds: float | None) -> str:
    """900 -> '15m', 5400 -> '1h30m', None -> 'none'."""
    if seconds is None:
        return "none"
    if seconds != int(seconds):
        return f"{seconds:g}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or not parts:
        parts.append(f"{secs}s")
    return "".join(parts)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _summary(action: ActionPlan) -> str:
    """A short description of what an action works on."""
    params = action.parameters
    if action.kind == "deploy":
        images = params.get("images") or {}
        text = ", ".join(f"{name}={image.get('url')}" for name, image in images.items())
        if params.get("to"):
            text = f"to {params['to']}" + (f": {text}" if text else "")
        return text
    if action.kind == "boot":
        return f"method {params['method']}" if params.get("method") else ""
    if action.kind == "test":
        parts = []
        for d in params.get("definitions") or []:
            where = d.get("repository") if d.get("from") != "inline" else "inline"
            path = f" {d['path']}" if d.get("path") and d.get("from") != "inline" else ""
            parts.append(f"{d.get('name')} ({d.get('from')} {where}{path})")
        return "; ".join(parts)
    if action.kind == "command":
        if "commands" in params:
            return "; ".join(str(c) for c in params["commands"])
        return str(params.get("name", ""))
    return ", ".join(f"{k}={v}" for k, v in params.items() if isinstance(v, str))


def render_plan(plan: JobPlan) -> list[str]:
    """The plan as the lines ``lavamq validate`` prints (without the file name line)."""
    t = plan.timeouts
    lines = [
        f"  job:       {plan.job_name}",
        f"  format:    {plan.format}",
        f"  priority:  {plan.priority}",
        f"  timeouts:  job {duration(t.job)}, action {duration(t.action)}, "
        f"multinode {duration(t.multinode)}, connection {duration(t.connection)}",
        f"  group:     {len(plan.subjobs)} sub-job{'s' if len(plan.subjobs) != 1 else ''}"
        f" in {len(plan.roles)} role{'s' if len(plan.roles) != 1 else ''}",
    ]
    for role in plan.roles:
        what = role.device_type if role.device is None else f"device {role.device}"
        tags = f" [{', '.join(role.tags)}]" if role.tags else ""
        lines.append(
            f"  role {role.name}: {role.count} x {what}{tags}"
            f"  (is_slave: {_yes(role.is_slave)}, essential: {_yes(role.essential)})"
        )
        mine = [a for a in plan.actions if a.applies_to(role.name)]
        if not mine:
            lines.append("    (no actions)")
        width = max((len(a.name) for a in mine), default=0)
        for action in mine:
            summary = _summary(action)
            lines.append(
                f"    {action.index:>2} {action.kind:<7} {action.name:<{width}}"
                f"  timeout {duration(action.timeout)}" + (f"  {summary}" if summary else "")
            )
    return lines


def render_pipelines(pipelines: dict[str, dict[str, Any]]) -> list[str]:
    """Each role's dispatcher pipeline as a tree of numbered actions (``--describe``)."""
    lines: list[str] = []

    def tree(actions: list[dict[str, Any]], depth: int) -> None:
        for action in actions:
            timeout = f"  timeout {duration(action['timeout'])}" if action["timeout"] else ""
            lines.append(
                f"    {'  ' * depth}{action['level']} {action['name']} ({action['class']}){timeout}"
            )
            tree(action.get("pipeline", []), depth + 1)

    for role, described in pipelines.items():
        lines.append(f"  pipeline of role {role} ({described['device_type'] or 'named device'}):")
        tree(described["pipeline"], 0)
        lines.extend(f"    problem: {problem}" for problem in described["problems"])
    return lines


def check_file(path: str) -> tuple[JobPlan | None, list[str]]:
    """Load one job file: (plan, []) or (None, problems); a test definition this
    machine can read (a local file or repository) is checked too."""
    try:
        plan = load_job_file(path)
    except JobValidationError as exc:
        return None, list(exc.problems)
    problems = local_definition_problems(plan)
    return (None, problems) if problems else (plan, [])


@click.command("validate")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, allow_dash=False)
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for all files.")
@click.option(
    "--describe",
    is_flag=True,
    help="Also print the pipeline a dispatcher builds for each role (JSON: 'pipelines').",
)
def validate_command(files: tuple[str, ...], as_json: bool, describe: bool) -> None:
    """Check job files (LAVA 2014 JSON or LAVA YAML) and print each one's group plan.

    Exit status: 0 if every file is valid, 1 if any is not.
    """
    report: list[dict[str, Any]] = []
    human: list[str] = []
    any_invalid = False
    for path in files:
        plan, problems = check_file(path)
        if plan is not None:
            shown = plan.to_dict()
            if "secrets" in shown:
                # what the job's secrets are named, never their values
                shown["secrets"] = dict.fromkeys(shown["secrets"], "*****")
            entry: dict[str, Any] = {"file": path, "valid": True, "plan": shown}
            report.append(entry)
            human.append(f"{path}: valid")
            human.extend(f"{path}: warning: {warning}" for warning in plan.warnings)
            human.extend(render_plan(plan))
            if describe:
                entry["pipelines"] = role_pipelines(plan)
                human.extend(render_pipelines(entry["pipelines"]))
        else:
            any_invalid = True
            report.append({"file": path, "valid": False, "errors": problems})
            count = len(problems)
            human.append(f"{path}: invalid ({count} problem{'s' if count != 1 else ''})")
            human.extend(f"{path}: {problem}" for problem in problems)
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(human))
    if any_invalid:
        raise click.exceptions.Exit(1)


COMMANDS = [validate_command]
