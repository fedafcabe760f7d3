"""The job loaders are bounded: no job file, however built, takes the machine.

A 2 KB YAML alias bomb nested in a ``boot:`` block took ``lavamq validate``
more than 90 s and 4.4 GB (and the coordinator 4.3 GB). Now the loader
counts the values a document holds once its aliases are expanded, and its
depth, before building anything (``schemas/job.py``: ``MAX_JOB_VALUES``,
``MAX_JOB_DEPTH``, ``MAX_JOB_BYTES``), and refuses with the line of the node
past the limit.

Hypothesis fuzzes the loaders (YAML and JSON; shapes, aliases and bytes),
each example under a memory and a time ceiling (tests/limits.py): no
example may pass them, raise anything but ``JobValidationError``, or be
refused with a problem that does not say where.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from job_seeds import seed_2014, seed_yaml
from limits import (
    LimitExceeded,
    hog,
    limit_child,
    memory_ceiling,
    sleeper,
    time_ceiling,
    within_limits,
)

from schemas.job import MAX_JOB_DEPTH, MAX_JOB_VALUES, JobPlan, JobValidationError, load_job

ROOT = Path(__file__).resolve().parents[2]
#: far above what any example needs (the seeds load in a few ms and a few MB)
MEMORY = 256 << 20
SECONDS = 10.0
#: what one fuzzed example may allocate at its peak (measured: the seeds under 100 KB,
#: a refused alias bomb under 40 KB, a 400 KB YAML list of 100,000 values 39 MB)
PEAK = 64 << 20
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: ``location: message``, the location one line (a path, ``file``, ``line L, column C``)
LOCATED = re.compile(r"^[^\n:][^\n]*?: \S")


def alias_bomb(width: int = 9, levels: int = 10, *, under: str = "boot") -> str:
    """A MultiNode job with an alias bomb inside its ``under`` action: each level
    an anchored list of ``width`` aliases of the level before (width ** levels values)."""
    lines = [
        "job_name: bomb",
        "timeouts: {job: {minutes: 5}}",
        "protocols:",
        "  lava-multinode:",
        "    roles:",
        "      a: {device_type: qemu, count: 1}",
        "actions:",
        f"- {under}:",
        "    method: qemu",
        "    x0: &x0 [" + ", ".join(["lol"] * width) + "]",
    ]
    for i in range(1, levels):
        lines.append(f"    x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def check(text: str | bytes) -> JobPlan | None:
    """Load ``text`` within the limits (``within_limits``: its peak and its time
    asserted): a plan, or every problem located."""
    try:
        return within_limits(load_job, text, "fuzz", memory_bytes=PEAK, seconds=SECONDS)[0]
    except JobValidationError as exc:
        problems = exc.problems
    assert problems
    for problem in problems:
        assert LOCATED.match(problem), f"not located: {problem!r}"
    return None


def test_an_alias_bomb_in_a_boot_block_is_refused_at_its_line() -> None:
    text = alias_bomb()
    assert len(text) < 2048
    with (
        pytest.raises(JobValidationError) as info,
        memory_ceiling(MEMORY),
        time_ceiling(SECONDS),
    ):
        load_job(text, "bomb.yaml")
    assert info.value.problems == [
        f"line 15, column 9: holds more than {MAX_JOB_VALUES} values once its aliases "
        "are expanded (a job file repeats what it means with YAML aliases only a few times)"
    ]


def test_lavamq_validate_refuses_the_bomb_within_a_memory_limit(tmp_path: Path) -> None:
    """The real command, in a process capped at 1 GB (before: MemoryError, exit 2)."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    proc = subprocess.run(
        [sys.executable, "-c", "from lavamq.cli import main; main()", "validate", str(bomb)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        preexec_fn=lambda: limit_child(1 << 30),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{bomb}: line 15, column 9: holds more than {MAX_JOB_VALUES} values" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def _spike(text: str, source: str) -> object:
    """Allocates 100 MB once, frees it, and returns: within the address-space guard."""
    held = bytearray(100 << 20)
    del held
    return load_job(text, source)


@pytest.mark.parametrize(
    ("loader", "why"),
    [
        (hog, "needed more than"),
        (sleeper, "ran more than 1 s"),
        (_spike, "bytes at its peak, over"),
    ],
)
def test_an_example_over_its_limits_fails(loader: Any, why: str) -> None:
    """The fuzz tests' limits are real: an example that allocates without end, runs
    without end, or peaks over the limit and returns fails the test."""
    text = alias_bomb(width=3, levels=4)
    with pytest.raises(LimitExceeded, match=why):
        within_limits(loader, text, "x", memory_bytes=PEAK, seconds=1.0)
    plan, peak = within_limits(load_job, text, "x", memory_bytes=PEAK, seconds=1.0)
    assert plan.job_name == "bomb" and 0 < peak < PEAK


def test_aliases_used_a_few_times_are_fine() -> None:
    plan = check(alias_bomb(width=3, levels=4))
    assert plan is not None and plan.job_name == "bomb"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("&a [*a]", "line 1, column 1: refers to itself"),
        ("job_name: x\nmetadata: &m {again: *m}\n", "line 2, column 11: refers to itself"),
        ("- " * (MAX_JOB_DEPTH + 5) + "x", f"is nested more than {MAX_JOB_DEPTH} levels deep"),
        ('{"a": ' * (MAX_JOB_DEPTH + 5) + "1" + "}" * (MAX_JOB_DEPTH + 5),
         f"file: is nested more than {MAX_JOB_DEPTH} levels deep"),
        ("[" + ",".join(["0"] * (MAX_JOB_VALUES + 1)) + "]",
         f"file: holds more than {MAX_JOB_VALUES} values"),
    ],
)  # fmt: skip
def test_self_reference_depth_and_count_are_refused(text: str, problem: str) -> None:
    with (
        pytest.raises(JobValidationError) as info,
        memory_ceiling(MEMORY),
        time_ceiling(SECONDS),
    ):
        load_job(text, "x")
    assert any(p.startswith(problem) or problem in p for p in info.value.problems), info.value


# --------------------------------------------------------------------------- fuzzing

KEYS = st.sampled_from(
    ["job_name", "actions", "boot", "deploy", "test", "definitions", "roles", "timeouts",
     "protocols", "lava-multinode", "device_group", "parameters", "count", "minutes"]
) | st.text(max_size=6)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
SHAPES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=30,
)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@FUZZ
@given(SHAPES)
def test_fuzz_shapes_in_json_and_yaml(doc: Any) -> None:
    check(json.dumps(doc))
    check(yaml.dump(doc, Dumper=_DUMPER))


@FUZZ
@given(
    width=st.integers(1, 12),
    levels=st.integers(1, 14),
    under=st.sampled_from(["boot", "deploy", "test", "command"]),
)
def test_fuzz_alias_trees_anywhere_in_an_action(width: int, levels: int, under: str) -> None:
    plan_or_none = check(alias_bomb(width, levels, under=under))
    expanded = sum(width**i for i in range(1, levels + 1))
    if expanded > MAX_JOB_VALUES:
        assert plan_or_none is None


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A seed job's bytes with bytes inserted, removed or replaced anywhere."""
    text = draw(
        st.sampled_from([json.dumps(seed_2014(), indent=1), yaml.dump(seed_yaml(), Dumper=_DUMPER)])
    ).encode()
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        chunk = draw(st.binary(max_size=8) | st.sampled_from([b"&a ", b"*a", b"- ", b"{", b"["]))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            text = text[:at] + chunk + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + len(chunk) :]
        else:
            text = text[:at] + chunk + text[at + len(chunk) :]
    return text


@FUZZ
@given(damaged())
def test_fuzz_damaged_bytes(raw: bytes) -> None:
    check(raw)
