"""``lavamq validate``: the plan or every problem, JSON output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from lavamq.cli import main

ROOT = Path(__file__).resolve().parents[2]
SEED_JSON = str(ROOT / "examples" / "seed-simple-multinode.json")
SEED_YAML = str(ROOT / "examples" / "seed-simple-multinode.yaml")

BAD = {
    "timeout": 900,
    "device_group": [
        {"role": "omap4", "count": 2, "device_type": "panda"},
        {"role": "omap3", "count": 0, "device_type": "beaglexm"},
    ],
    "actions": [
        {"command": "lava_test_shell", "parameters": {"testdef_urls": ["http://x/t.yaml"]}},
        {"command": "boot_linaro_image", "parameters": {"role": "omap5"}},
    ],
}


def _bad_file(tmp_path: Path) -> str:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(BAD, indent=2))
    return str(path)


def test_valid_file_prints_the_plan() -> None:
    result = CliRunner().invoke(main, ["validate", SEED_JSON])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{SEED_JSON}: valid"
    assert "  job:       simple multinode job" in lines
    assert "  format:    lava-2014-json" in lines
    assert "  priority:  50" in lines
    assert "  timeouts:  job none, action 15m, multinode 15m, connection none" in lines
    assert "  group:     3 sub-jobs in 2 roles" in lines
    assert "  role omap4: 2 x panda [usb-flash]  (is_slave: no, essential: no)" in lines
    assert "  role omap3: 1 x beaglexm [audio-loopback]  (is_slave: no, essential: no)" in lines
    omap3 = lines.index(
        "  role omap3: 1 x beaglexm [audio-loopback]  (is_slave: no, essential: no)"
    )
    steps = lines[omap3 + 1 : omap3 + 4]
    assert steps[0].startswith("     1 deploy  deploy_linaro_image  timeout 15m  image=file://")
    assert steps[0].endswith("beagle-ubuntu-desktop.img.gz")
    assert steps[1] == "     3 boot    boot_linaro_image    timeout 15m"
    assert steps[2].startswith("     4 test    lava_test_shell      timeout 30m  smoke-tests-basic")


def test_invalid_file_prints_every_problem_prefixed_by_the_file(tmp_path: Path) -> None:
    bad = _bad_file(tmp_path)
    result = CliRunner().invoke(main, ["validate", SEED_YAML, bad])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert f"{SEED_YAML}: valid" in lines
    start = lines.index(f"{bad}: invalid (2 problems)")
    assert lines[start + 1 :] == [
        f"{bad}: device_group[1].count: must be at least 1",
        f"{bad}: actions[1].parameters.role: no role named 'omap5' (roles: omap3, omap4)",
    ]


def test_json_output(tmp_path: Path) -> None:
    bad = _bad_file(tmp_path)
    result = CliRunner().invoke(main, ["validate", "--json", SEED_JSON, bad])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert [entry["file"] for entry in report] == [SEED_JSON, bad]
    assert report[0]["valid"] is True
    assert "errors" not in report[0]
    assert len(report[0]["plan"]["subjobs"]) == 3
    assert report[1] == {
        "file": bad,
        "valid": False,
        "errors": [
            "device_group[1].count: must be at least 1",
            "actions[1].parameters.role: no role named 'omap5' (roles: omap3, omap4)",
        ],
    }


def test_describe_prints_each_roles_pipeline_as_a_tree() -> None:
    """``--describe``: each role's pipeline, nested actions indented under their parent
    (the JSON form is what tests/unit/test_example_pipelines.py keeps as goldens)."""
    result = CliRunner().invoke(main, ["validate", "--describe", SEED_JSON])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("  pipeline of role omap4 (panda):")
    assert lines[start + 1 : start + 6] == [
        "    1 deploy-image (DeployImagesAction)  timeout 15m",
        "      1.1 download-retry (RetryAction)",
        "        1.1.1 file-download (DownloadAction)",
        "    2 boot-panda (BootAction)  timeout 15m",
        "    3 lava-test-shell (LavaTestShellAction)  timeout 30m",
    ]
    assert "  pipeline of role omap3 (beaglexm):" in lines
    plain = CliRunner().invoke(main, ["validate", SEED_JSON])
    assert "pipeline of role" not in plain.output


def test_all_valid_json_exit_zero() -> None:
    result = CliRunner().invoke(main, ["validate", "--json", SEED_JSON, SEED_YAML])
    assert result.exit_code == 0
    assert [entry["valid"] for entry in json.loads(result.output)] == [True, True]


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("job_name: x\nactions:\n  - deploy: {to: tmpfs\n")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == f"{path}: invalid (1 problem)"
    assert lines[1].startswith(f"{path}: line 4, column 1: ")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["validate"]).exit_code == 2
    assert runner.invoke(main, ["validate", str(tmp_path / "missing.json")]).exit_code == 2
    assert runner.invoke(main, ["validate", str(tmp_path)]).exit_code == 2


def test_installed_command_runs_the_seed() -> None:
    """The real entry point, as a user runs it: no traceback, exit 0."""
    proc = subprocess.run(
        [sys.executable, "-c", "from lavamq.cli import main; main()", "validate", SEED_JSON],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "group:     3 sub-jobs in 2 roles" in proc.stdout
