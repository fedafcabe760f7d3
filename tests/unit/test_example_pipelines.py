"""Every example job's pipeline, as ``lavamq validate --describe`` prints it, against
its golden file (as LAVA keeps a pipeline reference per sample job).

A change to what a dispatcher builds shows up here as a diff of the goldens in
``tests/unit/pipelines/``. After an intended change, regenerate them and review
the diff::

    LAVAMQ_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_example_pipelines.py

A new example job fails here until its golden is written the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lavamq.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(__file__).with_name("pipelines")
UPDATE = bool(os.environ.get("LAVAMQ_UPDATE_GOLDEN"))

#: the job files: examples' own and the conformance jobs (test definitions beside them are not)
JOBS = sorted(
    [
        *(ROOT / "examples").glob("*.yaml"),
        *(ROOT / "examples").glob("*.json"),
        *(ROOT / "examples").glob("*/job.yaml"),
        *(ROOT / "tests" / "lava_jobs").glob("*.yaml"),
    ]
)


def golden_of(job: Path) -> Path:
    """``examples/qemu-lava/job.yaml`` -> ``pipelines/examples/qemu-lava/job.yaml.json``."""
    return GOLDEN_DIR / f"{job.relative_to(ROOT)}.json"


def described(job: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["validate", "--describe", "--json", str(job)])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    pipelines: dict[str, Any] = entry["pipelines"]
    # a job naming files of this checkout: the description must not depend on where it is
    assert str(ROOT) not in json.dumps(pipelines), "a golden would name this checkout"
    return pipelines


@pytest.mark.parametrize("job", JOBS, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_pipeline_is_its_golden(job: Path) -> None:
    got = described(job)
    golden = golden_of(job)
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(got, indent=2) + "\n")
    assert golden.exists(), f"no golden for {job.relative_to(ROOT)}: see this module's docstring"
    assert got == json.loads(golden.read_text())
    for role, pipeline in got.items():
        assert pipeline["pipeline"], f"role {role} has an empty pipeline"
        assert pipeline["problems"] == [], f"role {role}: {pipeline['problems']}"


def test_every_golden_has_its_example() -> None:
    stale = {p for p in GOLDEN_DIR.rglob("*.json")} - {golden_of(job) for job in JOBS}
    assert not stale, f"goldens of jobs that are gone: {sorted(map(str, stale))}"
