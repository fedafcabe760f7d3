"""The embedded lab's boards and the progress lines of ``lavamq run``."""

from __future__ import annotations

from pathlib import Path

from device_agent.devices import create_device
from lavamq.embedded import boards_for_plan, host_config_for
from lavamq.progress import ProgressPrinter
from schemas.job import load_job_file

ROOT = Path(__file__).resolve().parents[2]


def test_one_board_per_subjob_emulating_the_jobs_device_types() -> None:
    plan = load_job_file(ROOT / "examples" / "seed-multinode-local.yaml")
    boards = boards_for_plan(plan)
    assert [(b["name"], b["settings"].get("emulates"), b["tags"]) for b in boards] == [
        ("panda-01", "panda", ["usb-flash"]),
        ("panda-02", "panda", ["usb-flash"]),
        ("beaglexm-01", "beaglexm", ["audio-loopback"]),
    ]
    assert all(b["device_type"] == "local" for b in boards)
    # a local board built from it registers and boots as the emulated type
    device = create_device(boards[0], "/tmp/lavamq-unit-board")
    assert device.device_type == "panda" and device.tags == ["usb-flash"]


def test_local_device_types_are_not_emulated_and_host_config_is_complete(tmp_path: Path) -> None:
    plan = load_job_file(ROOT / "examples" / "variable-clients.yaml")
    config = host_config_for(plan, tmp_path, "memory://")
    names = [d["name"] for d in config["device"]]
    assert names == ["local-01", "local-02", "local-03", "local-04"]
    assert all("emulates" not in d["settings"] for d in config["device"])
    assert config["host"]["workdir"] == str(tmp_path / "dispatcher")
    assert config["host"]["broker_url"] == "memory://"


def test_progress_lines_show_actions_syncs_results_and_states() -> None:
    lines: list[str] = []
    printer = ProgressPrinter(None, lines.append)
    batch = {
        "job": "7",
        "node": "panda-01",
        "records": [
            {"time": "t", "level": "info", "message": "start: 1 boot-panda (timeout 5m)"},
            {"time": "t", "level": "info", "message": "panda-01: lava-sync ready"},
            {"time": "t", "level": "input", "message": "<LAVA_SYNC_COMPLETE>"},
            {"time": "t", "level": "input", "message": "<LAVA_WAIT_COMPLETE nack>"},
            {"time": "t", "level": "results", "message": "smoke/ping: pass"},
            {"time": "t", "level": "target", "message": "console noise"},
        ],
    }
    printer.log_batch(batch)
    printer.log_batch({**batch, "job": "8"})
    assert lines == []  # held until the job is known
    printer.set_job(7)
    printer.event({"kind": "job", "state": "complete", "job_id": 7, "text": "job 7 complete"})
    printer.event({"kind": "job", "state": "complete", "job_id": 8, "text": "job 8 complete"})
    assert lines == [
        "[panda-01] 1 boot-panda",
        "[panda-01] lava-sync ready ...",
        "[panda-01] lava-sync released",
        "[panda-01] lava-wait FAILED (nack)",
        "[panda-01] result smoke/ping: pass",
        "* job 7 complete",
    ]
    assert printer.actions == {"panda-01": "boot-panda"}
