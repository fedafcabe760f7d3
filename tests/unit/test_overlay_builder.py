"""The overlay builder makes the whole test-shell tree in one pass."""

from __future__ import annotations

from pathlib import Path

from dispatcher.overlay import OverlaySpec, build_overlay


def inline(name: str, steps: list[str]) -> dict[str, object]:
    return {
        "from": "inline",
        "name": name,
        "path": "inline/x.yaml",
        "repository": {"metadata": {"name": name, "format": "Lava-Test"}, "run": {"steps": steps}},
    }


def test_one_pass_writes_helpers_context_one_run_sh_per_definition_and_results(
    tmp_path: Path,
) -> None:
    spec = OverlaySpec(
        job_id="7",
        subjob_id="70",
        node="n1",
        role="server",
        members={"n1": "server", "n2": "client"},
        definitions=[inline("first", ["true"]), inline("second", ["echo hi"])],
    )
    said: list[str] = []
    overlay = build_overlay(spec, tmp_path / "ov", deadline=None, say=said.append)
    root = tmp_path / "ov"
    assert sorted(overlay.tests) == ["0_first", "1_second"]
    for run_id in overlay.tests:
        assert (root / "tests" / run_id / "run.sh").is_file()
        assert (root / "tests" / run_id / "uuid").is_file()
    assert (root / "results").is_dir()
    assert (root / "bin" / "lava-test-runner").is_file()
    assert (root / "bin" / "lava-send").is_file()
    assert (root / "bin" / "multinode" / "group").read_text() == "n1\tserver\nn2\tclient\n"
    setup = overlay.setup_commands("/lava-70", "/tmp")
    assert "export LAVA_TEST_BIN=/lava-70/bin" in setup
    assert overlay.runner("/lava-70") == "/lava-70/bin/lava-test-runner"
