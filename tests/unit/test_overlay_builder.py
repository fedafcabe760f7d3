"""The overlay builder makes the whole test-shell tree in one pass."""

from __future__ import annotations

import stat
from pathlib import Path

from dispatcher.overlay import OverlaySpec, build_overlay, write_secrets


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


def test_setup_commands_joined_set_what_they_set_one_by_one_and_stop_at_a_failure(
    tmp_path: Path,
) -> None:
    import subprocess

    from dispatcher.overlay import joined_commands, printf_export

    commands = [f"export V{i}=value-{i}" for i in range(40)]
    commands.append(printf_export("GROUP", "n1\tserver\nn2\tclient"))
    lines = joined_commands(commands, limit=200)
    assert 1 < len(lines) < len(commands) and all(len(line) <= 200 for line in lines)
    script = "\n".join(f"{line}; echo rc=$?" for line in lines)
    script += '\necho "$V0 $V39"; printf "%s" "$GROUP" | od -c | head -1'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.count("rc=0") == len(lines)
    assert "value-0 value-39" in out.stdout and "\\t" in out.stdout
    # a failing command: the line's status is not 0 and what follows it did not run
    (failing,) = joined_commands(["export A=1", "false", "export B=2"])
    out = subprocess.run(
        ["sh", "-c", f'{failing}; echo "rc=$? A=$A B=$B"'], capture_output=True, text=True
    )
    assert out.stdout.strip() == "rc=1 A=1 B="
    # a command longer than the limit goes alone
    long = "export L=" + "x" * 300
    assert joined_commands(["export A=1", long, "export B=2"], limit=100) == [
        "{ export A=1; }",
        f"{{ {long}; }}",
        "{ export B=2; }",
    ]


def test_the_secrets_file_is_private_and_lava_shaped(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    write_secrets(path, {"API_KEY": "abc", "SPACED": "a b"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "API_KEY=abc\nSPACED='a b'\n"


def test_the_jobs_environment_is_exported_as_lavas_overlay_writes_it() -> None:
    from dispatcher.overlay import environment_lines

    assert environment_lines({"A": "x y", "N": {"P": 80, "L": ["a", True]}, "E": None}) == [
        "export A='x y'",
        "export N_P=80",
        "export N_L_0=a",
        "export N_L_1=1",
        "export E=''",
    ]
