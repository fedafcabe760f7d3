"""The group's result bundle, its table and its JUnit XML (parsed, not string-matched)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from coordinator.results import CaseResult, NodeOutcome, build_bundle, bundle_junit, bundle_table

NODES = [
    NodeOutcome("panda-01", "omap4", "panda-01", "complete", ended_at=10.0),
    NodeOutcome("panda-02", "omap4", "panda-02", "complete", ended_at=11.0),
    NodeOutcome("beagle-01", "omap3", "beagle-01", "complete", ended_at=12.0),
]
CASES = [
    CaseResult("panda-01", "smoke", "uname", "pass"),
    CaseResult("panda-01", "smoke", "throughput", "pass", 941.5, "Mb/s"),
    CaseResult("panda-02", "smoke", "uname", "fail"),
    CaseResult("beagle-01", "multinode", "multinode-sync-ready", "pass"),
    CaseResult("beagle-01", "smoke", "audio", "skip"),
]


def test_bundle_groups_cases_per_node_and_run_and_counts_them() -> None:
    bundle = build_bundle({"id": 7, "name": "seed"}, NODES, CASES)
    assert bundle["summary"] == {"pass": 3, "fail": 1, "skip": 1, "unknown": 0}
    assert bundle["job"]["status"] == "complete"
    assert bundle["job"]["passed"] is False  # a failed test case fails the result, not the job
    assert bundle["job"]["first_failure"] is None
    nodes = {n["node"]: n for n in bundle["nodes"]}
    assert [r["name"] for r in nodes["beagle-01"]["test_runs"]] == ["multinode", "smoke"]
    throughput = nodes["panda-01"]["test_runs"][0]["cases"][1]
    assert throughput == {
        "name": "throughput",
        "result": "pass",
        "measurement": 941.5,
        "units": "Mb/s",
    }
    json.dumps(bundle)  # JSON-safe


def test_first_failure_is_the_earliest_failed_node() -> None:
    nodes = [
        NodeOutcome("a", "server", "qemu-01", "incomplete", "group-failed", "peer b failed", 20.0),
        NodeOutcome("b", "client", "qemu-02", "incomplete", "infrastructure", "boot failed", 5.0),
        NodeOutcome("c", "client", "qemu-03", "complete", ended_at=30.0),
    ]
    bundle = build_bundle({"id": 1, "name": "x"}, nodes, [])
    assert bundle["job"]["status"] == "incomplete"
    assert bundle["job"]["passed"] is False
    assert bundle["job"]["first_failure"] == {
        "node": "b",
        "role": "client",
        "error_type": "infrastructure",
        "message": "boot failed",
    }
    table = bundle_table(bundle)
    assert "first failure: b (client): infrastructure: boot failed" in table


def test_all_passing_group_passes() -> None:
    cases = [c for c in CASES if c.result == "pass"]
    bundle = build_bundle({"id": 2, "name": "ok"}, NODES, cases)
    assert bundle["job"]["passed"] is True
    assert "job 2 ok: complete" in bundle_table(bundle)


def test_junit_parses_and_counts() -> None:
    nodes = [
        *NODES[:2],
        NodeOutcome(
            "beagle-01",
            "omap3",
            "beagle-01",
            "incomplete",
            "infrastructure",
            "no prompt after boot",
            3.0,
        ),
    ]
    root = ET.fromstring(bundle_junit(build_bundle({"id": 3, "name": "seed"}, nodes, CASES)))
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {
        "panda-01/smoke",
        "panda-02/smoke",
        "beagle-01/multinode",
        "beagle-01/smoke",
        "beagle-01/lavamq",
    }
    assert suites["panda-02/smoke"].get("failures") == "1"
    assert suites["panda-02/smoke"].find("testcase/failure") is not None
    assert suites["beagle-01/smoke"].get("skipped") == "1"
    error = suites["beagle-01/lavamq"].find("testcase/error")
    assert error is not None
    assert error.get("type") == "infrastructure"
    assert error.get("message") == "no prompt after boot"
    out = suites["panda-01/smoke"].find("testcase[@name='throughput']/system-out")
    assert out is not None and out.text == "measurement: 941.5 Mb/s"
    assert root.get("tests") == "6"
    assert root.get("failures") == "1"
    assert root.get("errors") == "1"
