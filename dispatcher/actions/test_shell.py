"""``lava-test-shell``: run the job's test definitions on the device's shell.

1. Build the overlay in one pass (``dispatcher/overlay.py``): the ``lava-*``
   helpers and this node's MultiNode context, each definition fetched and
   turned into ``tests/<n>_<name>/run.sh``, and ``bin/lava-test-runner``.
2. Put it on the device (``Device.install_overlay``: a local board uses the
   directory as it is; serial/QEMU types copy it in their own way).
3. Set up the shell (PATH, LAVA variables), start ``lava-test-runner``.
4. While it runs, the bridge answers MultiNode signals and a result tracker
   turns ``<LAVA_SIGNAL_TESTCASE ...>``, ``parse: pattern`` matches and the
   test-run frames into results; the action waits for
   ``<LAVA_TEST_RUNNER EXIT>``. The shell prompt coming back first, the
   console closing or the deadline passing fail the sub-job with a clear error.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device_agent import signals
from dispatcher.action import Action, ActionTimeout, JobContext, remaining
from dispatcher.attachments import AttachmentCollector
from dispatcher.joblog import mask_secrets, now_iso
from dispatcher.overlay import Overlay, OverlaySpec, build_overlay, joined_commands
from dispatcher.testdef import RUNNER_EXIT, FetchedTest, PatternParser, case_id, validate_spec
from schemas.errors import InfrastructureError, JobCanceled, JobError

log = logging.getLogger(__name__)

#: what a run.sh's EXIT trap prints when a step failed (dispatcher/testdef.py)
STOPPED_RE = re.compile(r"stopped (?P<run>\S+) step (?P<step>\d*) exit (?P<rc>\d+)$")
#: what the test runner prints when a definition's install.sh failed (its run.sh is skipped)
INSTALL_FAILED_RE = re.compile(r"install-failed (?P<run>\S+) exit (?P<rc>\d+)$")


class _Slot:
    """A result's place in console order; ``record`` once the result is known."""

    __slots__ = ("record",)

    def __init__(self) -> None:
        self.record: dict[str, Any] | None = None


class ResultTracker:
    """Turns the console's signals into results while the test runner runs.

    It subscribes to the console's signal reader (``device_agent/signals.py``),
    which the bridge reads too: one reassembly and one parse of the stream.
    A signal preceded by ``echo`` on its line is the shell's echo of a typed
    command that *prints* a signal and is never counted. Lines without a
    signal are read only while a run with a ``parse: pattern`` is in progress.
    """

    def __init__(
        self,
        tests: dict[str, FetchedTest],
        emit: Callable[[dict[str, Any]], None],
        say: Callable[[str], Any],
        on_raise: Callable[[Exception], None] | None = None,
    ) -> None:
        self.tests = tests
        self.emit = emit
        self.say = say
        self.on_raise = on_raise
        #: the test set in progress (``lava-test-set start NAME``)
        self.test_set: str | None = None
        self.current: str | None = None
        self.started: list[str] = []
        self.ended: list[str] = []
        #: runs in which a MultiNode call failed: they fail at their end (as on LAVA)
        self.failed_runs: set[str] = set()
        #: run id → where its run.sh stopped (``step N exit RC``, from its EXIT trap)
        self.stopped: dict[str, str] = {}
        #: run id → the exit status of its failed install.sh (its run.sh did not run)
        self.install_failed: dict[str, str] = {}
        self.cases = 0
        #: run id → the cases it reported (for its ``expected`` list)
        self.reported: dict[str, set[str]] = {}
        #: files attached by the test (they go with each test run's own result)
        self.files = AttachmentCollector(say)
        self._lock = threading.Lock()
        #: results in console order: a MultiNode call printed before a result holds
        #: that result back until the call's own result is in (see :meth:`reserve`)
        self._order: deque[_Slot] = deque()
        self._parsers = {
            run_id: PatternParser(t.definition.parse_pattern, t.definition.fixupdict)
            for run_id, t in tests.items()
            if t.definition.parse_pattern
        }

    def attach(self, console: Any) -> None:
        """Read ``console``'s signals (before the bridge: a run's start comes first)."""
        console.signals.subscribe(self.on_signal, every_line=self.reads_lines)

    def detach(self, console: Any) -> None:
        """Stop reading the console's signals; results held back go out now."""
        console.signals.unsubscribe(self.on_signal)
        with self._lock:
            while self._order:
                held = self._order.popleft().record
                if held is not None:
                    self.emit(held)

    def reads_lines(self) -> bool:
        """True while plain lines can give a result (a ``parse: pattern`` is active)."""
        return self.current is not None and self.current in self._parsers

    def on_signal(self, line: str, event: signals.Event | None) -> None:
        """A console line from the signal reader (its thread): handled under the lock."""
        with self._lock:
            self.handle(line.strip(), event)

    def handle(self, line: str, event: signals.Event | None) -> None:
        """One console line and the event it carries (None: a plain line)."""
        at = signals.signal_start(line)
        if event is not None and at > 0 and "echo" in line[:at]:
            return
        if isinstance(event, signals.StartRun):
            self.current = event.run_id
            self.test_set = None
            self.started.append(event.run_id)
            self.say(f"test run {event.run_id} started (uuid {event.uuid})")
        elif isinstance(event, signals.EndRun):
            self.ended.append(event.run_id)
            self.test_set = None
            self.say(f"test run {event.run_id} ended")
            self._fail_missing(event.run_id)
            result = "fail" if event.run_id in self.failed_runs else "pass"
            test = self.tests.get(event.run_id)
            self._result(
                "lava",
                event.run_id,
                result,
                extra={**(test.run_extra() if test else {}), "uuid": event.uuid},
                attachments=self.files.take(event.run_id),
            )
            self.current = None
        elif isinstance(event, signals.TestEvent) and STOPPED_RE.match(event.text):
            stop = STOPPED_RE.match(event.text)
            assert stop is not None
            self.stopped[stop["run"]] = f"step {stop['step']} (exit {stop['rc']})"
            self.say(f"test run {stop['run']} stopped at {self.stopped[stop['run']]} (set -e)")
        elif isinstance(event, signals.TestEvent) and INSTALL_FAILED_RE.match(event.text):
            failed = INSTALL_FAILED_RE.match(event.text)
            assert failed is not None
            self.install_failed[failed["run"]] = failed["rc"]
            self.say(
                f"test run {failed['run']}: install.sh exited {failed['rc']}: "
                "its run steps are skipped (as LAVA's test runner does)"
            )
        elif isinstance(event, signals.TestEvent):
            self.say(f"test event: {event.text}")
        elif isinstance(event, (signals.AttachStart, signals.AttachData, signals.AttachEnd)):
            self.files.handle(event, self.current)
        elif isinstance(event, signals.TestSet):
            self.test_set = event.name
            self.say(f"test set {event.name} started" if event.name else "test set stopped")
        elif isinstance(event, signals.TestReference):
            self._result(
                self.current or "lava", event.case, event.result, extra={"reference": event.url}
            )
        elif isinstance(event, signals.TestRaise):
            # LAVA's TestError: the job ends here
            self.say(f"lava-test-raise: {event.message}")
            if self.on_raise is not None:
                self.on_raise(JobError(f"lava-test-raise: {event.message}"))
        elif isinstance(event, signals.Invalid) and event.api is None:
            self.say(f"{event.reason}: ignored")
        elif isinstance(event, signals.TestCase):
            if event.bad_measurement is not None:
                self.say(f"test case {event.case}: measurement {event.bad_measurement!r} ignored")
            result = event.result
            expected = self.expected(self.current)
            if expected and event.case not in expected and result != "fail":
                # as LAVA: a case the definition does not expect fails
                self.say(f"test case {event.case} is not in the expected list: {result} -> fail")
                result = "fail"
            self._result(
                self.current or "lava",
                event.case,
                result,
                measurement=event.measurement,
                units=event.units,
            )
        elif event is None and self.reads_lines():
            assert self.current is not None
            parsed = self._parsers[self.current].parse(line)
            if parsed is not None:
                self._result(
                    self.current,
                    parsed["case"],
                    parsed["result"],
                    measurement=parsed.get("measurement"),
                    units=parsed.get("units"),
                )

    def expected(self, run_id: str | None) -> list[str]:
        """The run's ``expected`` test cases (the job's list over the definition's)."""
        test = self.tests.get(run_id or "")
        if test is None:
            return []
        listed = test.spec.get("expected") or test.definition.document.get("expected") or []
        return [str(x) for x in listed] if isinstance(listed, list) else []

    def report_missing(self, run_id: str) -> None:
        """Each expected case that ``run_id`` (which did not end) did not report fails."""
        with self._lock:
            self._fail_missing(run_id)

    def _fail_missing(self, run_id: str) -> None:
        # each expected case that the run did not report fails, as on LAVA
        missing = sorted(set(self.expected(run_id)) - self.reported.get(run_id, set()))
        for case in missing:
            self._result(
                run_id,
                case,
                "fail",
                extra={"reason": "an expected test case that was not reported fails"},
            )

    def _result(
        self,
        suite: str,
        case: str,
        result: str,
        *,
        measurement: float | None = None,
        units: str | None = None,
        extra: dict[str, str] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        slot: _Slot | None = None,
    ) -> None:
        self.cases += 1
        self.reported.setdefault(suite, set()).add(case)
        if self.test_set is not None:
            extra = {**(extra or {}), "set": self.test_set}
        rec: dict[str, Any] = {
            "suite": suite,
            "case": case_id(case),
            "result": result,
            "measurement": measurement,
            "units": units,
            "extra": extra or {},
        }
        if attachments:
            rec["attachments"] = attachments
        if slot is None and self._order:
            slot = _Slot()
            self._order.append(slot)
        if slot is None:
            self.emit(rec)
            return
        slot.record = rec
        if slot not in self._order:
            self.emit(rec)  # reserved before a detach that let the rest go
        while self._order and self._order[0].record is not None:
            held = self._order.popleft().record
            assert held is not None
            self.emit(held)

    def reserve(self) -> _Slot:
        """A place, in console order, for the result of a MultiNode call just printed.

        The bridge answers a call in its own thread: a ``lava-send`` returns at once
        on the board, so the case printed after it may be read before the send is
        done. LAVA handles each signal before it reads the next: its results are in
        console order, and so are these (the later ones wait for the call's).
        """
        with self._lock:
            slot = _Slot()
            self._order.append(slot)
            return slot

    def call_result(self, rec: dict[str, Any]) -> None:
        """The bridge's ``multinode-<call>-<id>`` result, in the test run in progress."""
        with self._lock:
            suite = str(rec.get("suite") or self.current or "lava")
            if rec["result"] == "fail" and suite != "lava":
                self.failed_runs.add(suite)
            slot = rec.get("slot")
            self._result(
                suite,
                str(rec["case"]),
                str(rec["result"]),
                slot=slot if isinstance(slot, _Slot) else None,
            )

    def unfinished(self) -> list[str]:
        """Test runs that started but never printed their end signal."""
        return [r for r in self.started if r not in self.ended]


def result_body(ctx: JobContext, rec: dict[str, Any]) -> dict[str, Any]:
    """A ``test-result`` message body for one tracked result (the job's secrets masked in
    what the test named: case, units, extra)."""

    def masked(text: str) -> str:
        return mask_secrets(text, ctx.secrets.values()) if ctx.secrets else text

    units = rec.get("units")
    return {
        "id": str(uuid.uuid4()),
        "job": ctx.job_id,
        "subjob": ctx.subjob_id,
        "node": ctx.node,
        "role": ctx.role,
        "suite": rec["suite"],
        "case": masked(rec["case"]),
        "result": rec["result"],
        "measurement": rec.get("measurement"),
        "units": masked(units) if isinstance(units, str) else units,
        "time": now_iso(),
        "extra": {str(k): masked(str(v)) for k, v in (rec.get("extra") or {}).items()},
        "attachments": list(rec.get("attachments") or []),
    }


def record_result(ctx: JobContext, rec: dict[str, Any]) -> None:
    """Log one result (level ``results``) and hand it to the publisher."""
    measure = ""
    if rec.get("measurement") is not None:
        measure = f" {rec['measurement']}{' ' + rec['units'] if rec.get('units') else ''}"
    ctx.log.results(f"{rec['suite']}/{rec['case']}: {rec['result']}{measure}")
    if ctx.publish_result is not None:
        ctx.publish_result(result_body(ctx, rec))


class LavaTestShellAction(Action):
    """``lava-test-shell``: install the overlay, run its definitions, turn signals into results."""

    name = "lava-test-shell"
    description = "run the test definitions with the lava-* helpers on the device"

    def __init__(self, parameters: dict[str, Any], timeout: float | None = None) -> None:
        super().__init__(timeout=timeout, parameters=parameters)
        defs = parameters.get("definitions")
        self.definitions: list[Any] = list(defs) if isinstance(defs, list) else []
        #: the overlay built before boot (prepare_overlay), used by run instead of a new one
        self._prepared: Overlay | None = None

    def validate(self, ctx: JobContext) -> list[str]:
        """The test shell needs definitions, each one valid."""
        problems = super().validate(ctx)
        if not self.definitions:
            problems.append(f"{self.name}: no test definitions (parameters.definitions is empty)")
        for i, spec in enumerate(self.definitions):
            problems.extend(f"{self.name}: {p}" for p in validate_spec(spec, f"definitions[{i}]"))
        return problems

    def describe(self) -> dict[str, Any]:
        """The action as data, with its definitions' names."""
        out = super().describe()
        out["definitions"] = [
            d.get("name") if isinstance(d, dict) else None for d in self.definitions
        ]
        return out

    # --- running ------------------------------------------------------------
    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Install the overlay, run it, and record the results its signals give."""
        if connection is None:
            raise JobError(f"{self.name}: no console: the device was not booted before the test")
        overlay, self._prepared = self._prepared, None
        if overlay is None:
            overlay = self._build_overlay(ctx, deadline)
        tests = overlay.tests
        left = remaining(deadline)
        target = ctx.device.install_overlay(
            overlay.root, 300.0 if left is None else left, job_id=str(ctx.subjob_id)
        )
        ctx.log.info(f"overlay installed on {ctx.device.name} at {target}")
        device_env = ctx.device.test_shell_environment()
        setup = overlay.setup_commands(target, ctx.device.cache_dir(), device_env)
        for line in joined_commands(setup):
            self._run_checked(connection, line, deadline, ctx)

        failures: list[Exception] = []
        tracker = ResultTracker(
            tests, lambda rec: record_result(ctx, rec), ctx.log.info, on_raise=failures.append
        )
        # the tracker listens first: it has seen a run's start before the bridge acts on a
        # lava-sync printed after it, so the sync result lands in that run
        tracker.attach(connection)
        bridge = self._start_bridge(ctx, connection, tracker, failures)
        try:
            connection.sendline(overlay.runner(target))
            self._wait_for_runner(connection, deadline, ctx, failures)
        finally:
            tracker.detach(connection)
            if bridge is not None:
                bridge.close()
            self._remove_secrets(overlay, target, ctx)
        # a lava-test-raise (or the group's failure) seen as the runner ended
        if failures:
            raise failures[0]
        # the runner's last line is in; let the shell settle at its prompt
        left = remaining(deadline)
        connection.read_until_prompt(30.0 if left is None else min(left + 0.001, 30.0))
        missing = [run_id for run_id in tests if run_id not in tracker.started]
        unfinished = tracker.unfinished()
        for run_id in unfinished + missing:
            tracker.report_missing(run_id)
            reason = tracker.stopped.get(run_id)
            extra = {"reason": f"ended at {reason} before its last step"} if reason else {}
            if run_id in tracker.install_failed:
                rc = tracker.install_failed[run_id]
                extra = {"reason": f"install.sh exited {rc}: its run steps did not run"}
            record_result(
                ctx,
                {
                    "suite": "lava",
                    "case": run_id,
                    "result": "fail",
                    "extra": extra,
                    "attachments": tracker.files.take(run_id),
                },
            )
        # a definition that a failing step ended (set -e) is a failed test run, as on
        # LAVA; one that never started or stopped without saying where is the job's error
        installs = [r for r in missing if r in tracker.install_failed]
        unexplained = [r for r in unfinished if r not in tracker.stopped]
        unexplained += [r for r in missing if r not in tracker.install_failed]
        if installs:
            # LAVA's TestError "Unable to start test stage": the job is incomplete
            raise JobError(
                f"{self.name}: the install of test run(s) {', '.join(installs)} failed "
                "(install.sh exited non-zero), so their steps did not run"
            )
        if unexplained:
            raise JobError(
                f"{self.name}: test run(s) {', '.join(unexplained)} "
                "did not finish (no <LAVA_SIGNAL_ENDRUN>)"
            )
        ctx.log.info(f"{self.name}: {len(tests)} test run(s), {tracker.cases} result(s)")
        return connection

    @staticmethod
    def _remove_secrets(overlay: Overlay, target: str, ctx: JobContext) -> None:
        """The secrets file is the job's only while its tests run: removed from the
        overlay and from a board whose filesystem is on this host once they ended."""
        places = [overlay.root]
        workdir = getattr(ctx.device, "workdir", None)
        if workdir is not None and Path(target).resolve().is_relative_to(Path(workdir).resolve()):
            places.append(Path(target))
        for place in places:
            (place / "secrets").unlink(missing_ok=True)

    def prepare_overlay(self, ctx: JobContext, deadline: float | None) -> Path:
        """Build the overlay now (the boot action asks, for a device that boots with it)."""
        self._prepared = self._build_overlay(ctx, deadline)
        return self._prepared.root

    def _build_overlay(self, ctx: JobContext, deadline: float | None) -> Overlay:
        spec = OverlaySpec(
            job_id=ctx.job_id,
            subjob_id=ctx.subjob_id,
            node=ctx.node,
            role=ctx.role,
            members=dict(ctx.members),
            definitions=self.definitions,
            packages_refused=ctx.device.packages_refused(),
            secrets=dict(ctx.secrets),
            environment=dict(ctx.environment),
            device_type=ctx.device.device_type,
            distro=str(ctx.data.get("os") or ""),
        )
        return build_overlay(spec, ctx.workdir / "overlay", deadline=deadline, say=ctx.log.info)

    def _run_checked(
        self, console: Any, command: str, deadline: float | None, ctx: JobContext
    ) -> None:
        left = remaining(deadline)
        output, rc = console.run(command, 60.0 if left is None else left)
        if rc != 0:
            raise InfrastructureError(
                f"{self.name}: setting up the test shell on {ctx.device.name} failed: "
                f"{command!r} exited with {rc}: {output[-300:]}"
            )

    def _start_bridge(
        self, ctx: JobContext, console: Any, tracker: ResultTracker, failures: list[Exception]
    ) -> Any:
        """The bridge answers MultiNode signals and hands the ``lava-sync`` results
        (the only results it produces) to the tracker, which records every result."""
        if ctx.multinode is None:
            return None
        from device_agent.bridge import Bridge

        bridge = Bridge(
            console,
            ctx.multinode,
            log=ctx.log,
            timeout=ctx.timeouts.multinode,
            on_result=tracker.call_result,
            reserve=tracker.reserve,
            run_of=lambda: tracker.current,
            on_failure=failures.append,
        )
        bridge.start()
        return bridge

    def _wait_for_runner(
        self, console: Any, deadline: float | None, ctx: JobContext, failures: list[Exception]
    ) -> None:
        from device_agent.console import ConsoleClosed, ConsoleTimeout

        exit_re = re.compile(re.escape(RUNNER_EXIT))
        # a prompt counts only at the start of a line: a test that prints its
        # environment (``PS1=...``) has not returned to the prompt
        prompts = [re.compile(f"(?m)^(?:{p})") for p in getattr(ctx.device, "prompts", []) or []]
        patterns: list[Any] = [exit_re, *prompts]
        while True:
            if ctx.cancelled():
                raise JobCanceled(f"{self.name}: cancelled while the tests ran")
            if failures:
                # the group failed (or a MultiNode call timed out): stop at once
                raise failures[0]
            left = remaining(deadline)
            step = 1.0 if left is None else min(1.0, left)
            try:
                index, _ = console.expect(patterns, step)
            except ConsoleTimeout:
                if left is not None and left <= 1.0:
                    raise ActionTimeout(
                        f"{self.name} timed out waiting for {RUNNER_EXIT} on "
                        f"{ctx.device.name}; last output: {console.recent_output(300)!r}"
                    ) from None
                continue
            except ConsoleClosed as exc:
                raise JobError(
                    f"{self.name}: the test shell on {ctx.device.name} exited before the "
                    f"test runner finished ({exc.message})"
                ) from None
            if index == 0:
                return
            raise JobError(
                f"{self.name}: the test shell on {ctx.device.name} returned to its prompt "
                f"before {RUNNER_EXIT}; last output: {console.recent_output(300)!r}"
            )
