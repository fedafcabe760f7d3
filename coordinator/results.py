"""One result bundle for a MultiNode group, and its exports.

The coordinator collects each node's outcome and test cases; this module turns
them into one bundle (plain data, JSON-safe), a text table for the terminal,
and JUnit XML that Jenkins and GitLab read. It does no I/O.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RESULT_VALUES = ("pass", "fail", "skip", "unknown")


@dataclass(frozen=True)
class NodeOutcome:
    """How one sub-job ended."""

    node: str
    role: str
    device: str
    state: str  # complete | incomplete | canceled | running | queued ...
    error_type: str | None = None
    message: str | None = None
    ended_at: float | None = None  # seconds since the epoch


@dataclass(frozen=True)
class CaseResult:
    """One ``lava-test-case`` (or MultiNode sync) result of one node."""

    node: str
    test_run: str
    case: str
    result: str
    measurement: float | None = None
    units: str | None = None
    #: what the test said about the case (test set, reference ...); in the bundle if any
    extra: Mapping[str, str] | None = None
    #: files attached to ``test_run`` (or to one of its cases): on the test run
    attachments: Sequence[Mapping[str, Any]] = ()


def build_bundle(
    job: dict[str, Any], nodes: Sequence[NodeOutcome], cases: Iterable[CaseResult]
) -> dict[str, Any]:
    """Aggregate node outcomes and test cases into the group's result bundle.

    ``job`` carries at least ``id`` and ``name``. The group passes when every
    node completed and no test case failed; the first failure (earliest end
    among nodes that ended with an error) is named at the top.
    """
    by_node: dict[str, dict[str, list[dict[str, Any]]]] = {n.node: {} for n in nodes}
    #: node → test run → the files attached to it (a test run's own result brings them)
    attached: dict[str, dict[str, list[dict[str, Any]]]] = {}
    summary = dict.fromkeys(RESULT_VALUES, 0)
    for case in cases:
        result = case.result if case.result in RESULT_VALUES else "unknown"
        summary[result] += 1
        runs = by_node.setdefault(case.node, {})
        entry: dict[str, Any] = {
            "name": case.case,
            "result": result,
            "measurement": case.measurement,
            "units": case.units,
        }
        if case.extra:
            entry["extra"] = dict(case.extra)
        runs.setdefault(case.test_run, []).append(entry)
        if case.attachments:
            # the files belong to the run the result is about (suite lava, case <run>)
            run = case.case if case.test_run == "lava" else case.test_run
            runs.setdefault(run, [])
            attached.setdefault(case.node, {}).setdefault(run, []).extend(
                dict(a) for a in case.attachments
            )
    failed_nodes = [n for n in nodes if n.state != "complete"]
    first = min(
        (n for n in failed_nodes if n.error_type or n.message),
        key=lambda n: (n.ended_at is None, n.ended_at or 0.0, n.node),
        default=None,
    )
    if failed_nodes:
        status = "canceled" if all(n.state == "canceled" for n in failed_nodes) else "incomplete"
    else:
        status = "complete"
    node_entries = []
    for n in sorted(nodes, key=lambda n: (n.role, n.node)):
        runs = by_node.get(n.node, {})
        node_entries.append(
            {
                "node": n.node,
                "role": n.role,
                "device": n.device,
                "state": n.state,
                "error_type": n.error_type,
                "message": n.message,
                "test_runs": [
                    _test_run(name, run_cases, attached.get(n.node, {}).get(name))
                    for name, run_cases in runs.items()
                ],
            }
        )
    return {
        "job": {
            **job,
            "status": status,
            "passed": status == "complete" and summary["fail"] == 0,
            "first_failure": (
                None
                if first is None
                else {
                    "node": first.node,
                    "role": first.role,
                    "error_type": first.error_type,
                    "message": first.message,
                }
            ),
        },
        "summary": summary,
        "nodes": node_entries,
    }


def bundle_table(bundle: dict[str, Any]) -> str:
    """The result table printed at the end of ``lavamq run`` and by ``lavamq results``."""
    rows: list[tuple[str, ...]] = [
        ("NODE", "ROLE", "TEST RUN", "TEST CASE", "RESULT", "MEASUREMENT")
    ]
    for node in bundle["nodes"]:
        if not node["test_runs"]:
            rows.append((node["node"], node["role"], "-", "-", node["state"], ""))
        for run in node["test_runs"]:
            for case in run["cases"]:
                measurement = ""
                if case["measurement"] is not None:
                    measurement = f"{case['measurement']:g} {case['units'] or ''}".rstrip()
                rows.append(
                    (
                        node["node"],
                        node["role"],
                        run["name"],
                        case["name"],
                        case["result"],
                        measurement,
                    )
                )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    job = bundle["job"]
    s = bundle["summary"]
    lines.append("")
    lines.append(
        f"job {job.get('id') or '(never submitted)'} {job.get('name', '')!s}: {job['status']}"
        f" — {s['pass']} pass, {s['fail']} fail, {s['skip']} skip, {s['unknown']} unknown"
    )
    first = job.get("first_failure")
    if first:
        lines.append(
            f"first failure: {first['node']} ({first['role']}): "
            f"{first['error_type'] or 'error'}: {first['message'] or ''}"
        )
    return "\n".join(lines) + "\n"


def bundle_junit(bundle: dict[str, Any]) -> bytes:
    """JUnit XML: one ``testsuite`` per node and test run, one ``testcase`` per case.

    A node that ended with an error and has no test cases gets one errored
    test case, so a failed boot shows up in the CI's report, not as silence.
    """
    job = bundle["job"]
    root = ET.Element("testsuites", name=str(job.get("name") or job.get("id") or "lavamq"))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for node in bundle["nodes"]:
        runs = list(node["test_runs"])
        if node["state"] != "complete":
            runs.append({"name": "lavamq", "cases": [], "_node_error": True})
        for run in runs:
            suite = ET.SubElement(root, "testsuite", name=f"{node['node']}/{run['name']}")
            counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
            classname = f"{node['role']}.{node['node']}.{run['name']}"
            for case in run["cases"]:
                tc = ET.SubElement(suite, "testcase", name=case["name"], classname=classname)
                counts["tests"] += 1
                if case["result"] == "fail":
                    counts["failures"] += 1
                    ET.SubElement(tc, "failure", message=f"{case['name']} failed")
                elif case["result"] in ("skip", "unknown"):
                    counts["skipped"] += 1
                    ET.SubElement(tc, "skipped", message=f"result: {case['result']}")
                if case["measurement"] is not None:
                    out = ET.SubElement(tc, "system-out")
                    out.text = (
                        f"measurement: {case['measurement']:g} {case['units'] or ''}".rstrip()
                    )
            if run.get("_node_error"):
                tc = ET.SubElement(suite, "testcase", name="sub-job", classname=classname)
                counts["tests"] += 1
                counts["errors"] += 1
                err = ET.SubElement(
                    tc,
                    "error",
                    type=node["error_type"] or node["state"],
                    message=node["message"] or f"sub-job {node['state']}",
                )
                err.text = node["message"] or ""
            for key, value in counts.items():
                suite.set(key, str(value))
                totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml


def _test_run(
    name: str, cases: list[dict[str, Any]], attachments: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """One test run of the bundle; ``attachments`` only when it has some."""
    run: dict[str, Any] = {"name": name, "cases": cases}
    if attachments:
        run["attachments"] = attachments
    return run
