"""Table tests of the pure all-or-nothing scheduler."""

# ruff: noqa: RUF001 (the multiplication sign is part of the user-facing messages)

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from coordinator.scheduler import (
    DeviceView,
    GroupRequest,
    SubJobRequest,
    check_fits,
    schedule,
)

NOW = 10_000.0


def dev(name: str, dtype: str, *tags: str, state: str = "idle", **kw: object) -> DeviceView:
    return DeviceView(name, dtype, frozenset(tags), state=state, **kw)  # type: ignore[arg-type]


def group(
    job_id: int,
    roles: Sequence[tuple[Any, ...]],
    *,
    priority: int = 50,
    submitted: float = NOW - 10,
) -> GroupRequest:
    """roles: (count, device_type, tags[, device]); sub-job ids are job_id*100 + n."""
    subs: list[SubJobRequest] = []
    n = 0
    for role in roles:
        count, dtype, tags = role[0], role[1], role[2]
        device = role[3] if len(role) > 3 else None
        for _ in range(count):
            n += 1
            subs.append(SubJobRequest(job_id * 100 + n, dtype, frozenset(tags), device))
    return GroupRequest(job_id, priority, submitted, tuple(subs))


SEED_LAB = [
    dev("panda01", "panda", "usb-flash"),
    dev("panda02", "panda", "usb-flash"),
    dev("beagle01", "beaglexm", "audio-loopback"),
]
SEED = [(2, "panda", ("usb-flash",)), (1, "beaglexm", ("audio-loopback",))]


def test_seed_group_starts_on_the_matching_devices() -> None:
    res = schedule(SEED_LAB, [group(1, SEED)], NOW)
    assert res.allocations == {1: {101: "panda01", 102: "panda02", 103: "beagle01"}}
    assert res.waiting_reasons == {}


def test_all_or_nothing_no_partial_allocation() -> None:
    lab = [*SEED_LAB[:1], SEED_LAB[2]]  # only one panda free
    lab.append(dev("panda02", "panda", "usb-flash", state="running", job_id=41))
    res = schedule(lab, [group(1, SEED)], NOW)
    assert res.allocations == {}
    assert (
        res.waiting_reasons[1] == "waiting: needs 2 × panda [usb-flash], 1 idle, 1 running job 41"
    )


def test_roles_sharing_a_class_are_summed() -> None:
    lab = [dev("p1", "panda"), dev("p2", "panda"), dev("p3", "panda")]
    two_roles = [(2, "panda", ()), (2, "panda", ())]
    assert check_fits(lab, group(1, two_roles).subjobs) == ["needs 4 × panda, the lab has 3"]
    lab.append(dev("p4", "panda", state="reserved", job_id=12))
    assert check_fits(lab, group(1, two_roles).subjobs) == []
    res = schedule(lab, [group(1, two_roles)], NOW)
    assert res.allocations == {}
    assert res.waiting_reasons[1] == "waiting: needs 4 × panda, 3 idle, 1 reserved job 12"


def test_overlapping_classes_are_matched_as_a_whole() -> None:
    # role A needs panda (any), role B needs panda [usb-flash]: the usb board must go to B.
    lab = [dev("p-a", "panda", "usb-flash"), dev("p-b", "panda")]
    g = group(1, [(1, "panda", ()), (1, "panda", ("usb-flash",))])
    res = schedule(lab, [g], NOW)
    assert res.allocations == {1: {101: "p-b", 102: "p-a"}}
    # Two "any panda" plus one usb-flash panda do not fit on two boards, even though
    # each class alone does.
    g2 = group(2, [(1, "panda", ()), (1, "panda", ()), (1, "panda", ("usb-flash",))])
    assert check_fits(lab, g2.subjobs) == [
        "needs 3 × panda in total (roles share the same devices), the lab has 2 that fit"
    ]


def test_matching_needs_augmenting_paths() -> None:
    # Greedy by fewest-extra-tags would give {x,y} to the [x] demand first in some
    # orders; the flow must still find the one assignment that works.
    lab = [dev("d-xy", "t", "x", "y"), dev("d-x", "t", "x"), dev("d-yz", "t", "y", "z")]
    g = group(1, [(1, "t", ("x",)), (1, "t", ("y",)), (1, "t", ("z",))])
    res = schedule(lab, [g], NOW)
    assert res.allocations == {1: {101: "d-x", 102: "d-xy", 103: "d-yz"}}


def test_impossible_group_is_rejected_with_what_is_missing() -> None:
    lab = [dev("panda01", "panda", "usb-flash"), SEED_LAB[2], dev("old", "panda", "usb-flash")]
    # the caller leaves retired devices out; offline and busy ones still count
    lab[0] = dev("panda01", "panda", "usb-flash", state="offline")
    assert check_fits(lab, group(1, SEED).subjobs) == []
    assert check_fits(lab[:1] + lab[1:2], group(1, SEED).subjobs) == [
        "needs 2 × panda [usb-flash], the lab has 1"
    ]
    assert check_fits([], group(1, [(1, "qemu", ())]).subjobs) == ["needs 1 × qemu, the lab has 0"]


def test_named_device_gets_that_device() -> None:
    lab = [dev("p1", "panda"), dev("p2", "panda"), dev("p3", "panda")]
    g = group(1, [(1, "panda", (), "p2"), (2, "panda", ())])
    res = schedule(lab, [g], NOW)
    assert res.allocations == {1: {101: "p2", 102: "p1", 103: "p3"}}
    busy = [dev("p1", "panda"), dev("p2", "panda", state="running", job_id=7), dev("p3", "panda")]
    res = schedule(busy, [group(1, [(1, "panda", (), "p2")])], NOW)
    assert res.allocations == {}
    assert res.waiting_reasons[1] == "waiting: needs device p2, running job 7"
    assert check_fits(lab, group(1, [(1, "panda", (), "nope")]).subjobs) == [
        "needs device nope, the lab has no such device"
    ]


def test_bad_health_and_offline_devices_are_not_used() -> None:
    lab = [dev("p1", "panda", health="bad"), dev("p2", "panda", state="offline")]
    res = schedule(lab, [group(1, [(1, "panda", ())])], NOW)
    assert res.allocations == {}
    assert res.waiting_reasons[1] == "waiting: needs 1 × panda, 1 offline, 1 bad health"


def test_priority_first_then_fifo() -> None:
    lab = [dev("p1", "panda")]
    early_low = group(1, [(1, "panda", ())], priority=10, submitted=NOW - 50)
    late_high = group(2, [(1, "panda", ())], priority=90, submitted=NOW - 5)
    res = schedule(lab, [early_low, late_high], NOW)
    assert list(res.allocations) == [2]
    assert res.waiting_reasons[1] == "waiting: needs 1 × panda, 1 starting job 2"
    first = group(3, [(1, "panda", ())], submitted=NOW - 20)
    second = group(4, [(1, "panda", ())], submitted=NOW - 10)
    assert list(schedule(lab, [second, first], NOW).allocations) == [3]
    # same submit time: lower job id first
    a = group(6, [(1, "panda", ())], submitted=NOW - 10)
    b = group(5, [(1, "panda", ())], submitted=NOW - 10)
    assert list(schedule(lab, [a, b], NOW).allocations) == [5]


def test_small_groups_backfill_before_the_starvation_threshold() -> None:
    lab = [dev("p1", "panda"), dev("p2", "panda")]  # p3 is busy
    lab.append(dev("p3", "panda", state="running", job_id=9))
    big = group(1, [(3, "panda", ())], submitted=NOW - 100)
    small = group(2, [(1, "panda", ())], submitted=NOW - 1)
    res = schedule(lab, [big, small], NOW, starvation_seconds=300)
    assert list(res.allocations) == [2]
    assert res.claims == {}


def test_anti_starvation_old_group_blocks_later_ones_from_its_devices() -> None:
    lab = [
        dev("p1", "panda"),
        dev("p2", "panda"),
        dev("p3", "panda", state="running", job_id=9),
        dev("b1", "beagle"),
    ]
    big = group(1, [(3, "panda", ())], submitted=NOW - 400)
    small_panda = group(2, [(1, "panda", ())], submitted=NOW - 1)
    small_beagle = group(3, [(1, "beagle", ())], submitted=NOW - 1)
    res = schedule(lab, [big, small_panda, small_beagle], NOW, starvation_seconds=300)
    # backfill on devices the old group does not need is still allowed
    assert res.allocations == {3: {301: "b1"}}
    assert res.claims == {"p1": 1, "p2": 1}
    assert res.waiting_reasons[2] == "waiting: needs 1 × panda, 2 held for job 1, 1 running job 9"
    assert res.waiting_reasons[1] == "waiting: needs 3 × panda, 2 held for job 1, 1 running job 9"
    # when the running job ends, the old group starts before the later small one
    lab[2] = dev("p3", "panda")
    res = schedule(lab, [big, small_panda], NOW, starvation_seconds=300)
    assert list(res.allocations) == [1]


def test_a_stream_of_small_groups_cannot_starve_a_big_one_forever() -> None:
    """Simulate passes: small jobs keep arriving; the big one must start."""
    started_big_at = _when_big_group_starts(small_per_second=1, starvation_seconds=30)
    assert started_big_at is not None, "the big group starved"
    assert 30 <= started_big_at <= 40
    # without the rule it does starve in the same scenario
    assert _when_big_group_starts(small_per_second=2, starvation_seconds=float("inf")) is None


def _when_big_group_starts(small_per_second: int, starvation_seconds: float) -> float | None:
    """Four pandas, two busy at first; a group needing all four waits while
    ``small_per_second`` one-panda groups arrive each second and run 3 s.
    The second at which the big group starts, or None if not in 200 s."""
    names = [f"p{i}" for i in range(4)]
    busy: dict[str, int] = {"p0": 100, "p1": 101}  # device -> job running on it
    ends: dict[int, float] = {100: 5.0, 101: 15.0}
    queue = {1: group(1, [(4, "panda", ())], submitted=0.0)}
    next_id = 2
    for step in range(200):
        now = float(step)
        for _ in range(small_per_second):
            queue[next_id] = group(next_id, [(1, "panda", ())], submitted=now)
            next_id += 1
        for name, job in list(busy.items()):
            if ends[job] <= now:
                del busy[name]
        lab = [
            dev(n, "panda", state="running", job_id=busy[n]) if n in busy else dev(n, "panda")
            for n in names
        ]
        res = schedule(lab, list(queue.values()), now, starvation_seconds=starvation_seconds)
        for job, alloc in res.allocations.items():
            del queue[job]
            for name in alloc.values():
                busy[name] = job
            ends[job] = now + 3.0  # small jobs run 3 s
            if job == 1:
                return now
    return None


def test_group_that_can_never_fit_claims_nothing() -> None:
    lab = [dev("p1", "panda"), dev("p2", "panda")]
    huge = group(1, [(5, "panda", ())], submitted=NOW - 1000)
    small = group(2, [(1, "panda", ())], submitted=NOW - 1)
    res = schedule(lab, [huge, small], NOW, starvation_seconds=1)
    assert list(res.allocations) == [2]
    assert res.claims == {}
    assert res.waiting_reasons[1] == "waiting: can never fit: needs 5 × panda, the lab has 2"


def test_competing_groups_over_overlapping_devices_never_deadlock() -> None:
    # A needs x+y, B needs y+x in the opposite role order; only one can run at a time.
    lab = [dev("dx", "t", "x"), dev("dy", "t", "y")]
    a = group(1, [(1, "t", ("x",)), (1, "t", ("y",))], submitted=NOW - 20)
    b = group(2, [(1, "t", ("y",)), (1, "t", ("x",))], submitted=NOW - 10)
    res = schedule(lab, [b, a], NOW)
    assert list(res.allocations) == [1]  # one of them starts; nothing is half-held
    assert res.claims == {}
    held = {n for alloc in res.allocations.values() for n in alloc.values()}
    assert held == {"dx", "dy"}
    # after A ends, B starts
    res2 = schedule(lab, [b], NOW)
    assert list(res2.allocations) == [2]
    # even with both starving, the older one starts and the younger gets nothing partial
    res3 = schedule(lab, [a, b], NOW + 10_000, starvation_seconds=1)
    assert list(res3.allocations) == [1]
    assert res3.claims == {}


@pytest.mark.parametrize("seed", range(20))
def test_permuted_input_gives_the_same_allocation(seed: int) -> None:
    rng = random.Random(seed)
    types = ["panda", "beagle", "qemu"]
    tags = ["usb", "audio", "net"]
    lab = []
    for i in range(30):
        t = rng.choice(types)
        ts = rng.sample(tags, rng.randint(0, 2))
        state = rng.choice(["idle", "idle", "idle", "running", "offline"])
        lab.append(
            dev(f"{t}{i:02d}", t, *ts, state=state, job_id=500 if state == "running" else None)
        )
    queue = []
    for j in range(1, 25):
        roles = [
            (rng.randint(1, 3), rng.choice(types), tuple(rng.sample(tags, rng.randint(0, 1))))
            for _ in range(rng.randint(1, 3))
        ]
        queue.append(
            group(j, roles, priority=rng.choice([10, 50]), submitted=NOW - rng.randint(0, 600))
        )
    base = schedule(lab, queue, NOW, starvation_seconds=300)
    assert base.allocations or base.waiting_reasons
    for _ in range(5):
        lab2 = lab[:]
        q2 = queue[:]
        rng.shuffle(lab2)
        rng.shuffle(q2)
        other = schedule(lab2, q2, NOW, starvation_seconds=300)
        assert other.allocations == base.allocations
        assert list(other.allocations) == list(base.allocations)
        assert other.waiting_reasons == base.waiting_reasons
        assert other.claims == base.claims
    # invariants: every allocation is complete, devices are idle, matching, used once
    by_name = {d.name: d for d in lab}
    used: set[str] = set()
    subs = {s.subjob_id: s for g in queue for s in g.subjobs}
    for job, alloc in base.allocations.items():
        g = next(g for g in queue if g.job_id == job)
        assert set(alloc) == {s.subjob_id for s in g.subjobs}
        for sid, name in alloc.items():
            d = by_name[name]
            assert d.usable and d.device_type == subs[sid].device_type
            assert subs[sid].tags <= d.tags
            assert name not in used
            used.add(name)
