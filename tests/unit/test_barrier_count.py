"""The barrier's counting (coordinator/barrier_count.py) as a pure function.

As labgrid tests its place scheduler: the same arrivals, shuffled, split into
batches at random, repeated (redeliveries) and with the counts reloaded from
the journal midway, must decide the same releases, each exactly once, and a
timeout must name exactly the nodes that are missing.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.barrier_count import (
    SEND,
    SYNC,
    WAIT_ALL,
    BarrierKey,
    GroupCounts,
    ReleaseKey,
    describe_missing,
)

ROLES = ("server", "client", "observer")

#: one arrival: (barrier kind, message id, generation, node)
Arrival = tuple[str, str, int, str]


@st.composite
def groups(draw: st.DrawFn) -> dict[str, str]:
    """A membership of 1 to 6 nodes over up to three roles."""
    size = draw(st.integers(1, 6))
    return {f"n{i}": draw(st.sampled_from(ROLES)) for i in range(size)}


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[str, str], list[Arrival]]:
    """A membership and the arrivals its nodes sent (each barrier: any subset of nodes)."""
    members = draw(groups())
    nodes = sorted(members)
    arrivals: list[Arrival] = []
    for message_id in ("a", "b"):
        for generation in (1, 2):
            for node in draw(st.lists(st.sampled_from(nodes), unique=True)):
                arrivals.append((SYNC, message_id, generation, node))
        for node in draw(st.lists(st.sampled_from(nodes), unique=True)):
            arrivals.append((SEND, message_id, 0, node))
    return members, arrivals


def expected_releases(members: dict[str, str], arrivals: Iterable[Arrival]) -> set[ReleaseKey]:
    """The releases the arrivals call for, worked out directly from their definition."""
    at: dict[BarrierKey, set[str]] = {}
    for kind, message_id, generation, node in arrivals:
        at.setdefault(BarrierKey(kind, message_id, generation), set()).add(node)
    everyone = set(members)
    out: set[ReleaseKey] = set()
    for key, nodes in at.items():
        if key.kind == SYNC and nodes >= everyone:
            out.add(ReleaseKey(SYNC, key.message_id, key.generation, ""))
        if key.kind == SEND:
            if nodes >= everyone:
                out.add(ReleaseKey(WAIT_ALL, key.message_id, 0, ""))
            for role in {members[n] for n in nodes}:
                if nodes >= {n for n, r in members.items() if r == role}:
                    out.add(ReleaseKey(WAIT_ALL, key.message_id, 0, role))
    return out


def count(
    counts: GroupCounts, batches: list[list[Arrival]], reload_after: int | None = None
) -> tuple[GroupCounts, list[ReleaseKey]]:
    """Feed the batches as the service does (senders grouped by barrier per batch)."""
    decided: list[ReleaseKey] = []
    for i, batch in enumerate(batches):
        touched: dict[BarrierKey, set[str]] = {}
        for kind, message_id, generation, node in batch:
            touched.setdefault(BarrierKey(kind, message_id, generation), set()).add(node)
        for key, senders in touched.items():
            decided.extend(counts.arrive(key, senders))
        if reload_after == i:
            # the service dropped its memory (a reconnect): reloaded from the journal
            counts = GroupCounts(
                dict(counts.members),
                counts.timeout,
                {k: set(v) for k, v in counts.arrived.items()},
                set(counts.released),
            )
    return counts, decided


def split(items: list[Arrival], rng: random.Random) -> list[list[Arrival]]:
    """The items in random batches (the prefetch cuts a stream anywhere)."""
    batches: list[list[Arrival]] = []
    i = 0
    while i < len(items):
        n = rng.randint(1, max(1, len(items) - i))
        batches.append(items[i : i + n])
        i += n
    return batches


@settings(max_examples=300, deadline=None)
@given(histories(), st.randoms(use_true_random=False), st.booleans())
def test_any_order_and_batching_decides_the_same_releases_once(
    history: tuple[dict[str, str], list[Arrival]], rng: random.Random, redeliver: bool
) -> None:
    members, arrivals = history
    stream = list(arrivals)
    if redeliver:  # a redelivery after a reconnect: some acknowledgements twice
        stream += rng.sample(arrivals, k=len(arrivals) // 2)
    rng.shuffle(stream)
    batches = split(stream, rng)
    reload_after = rng.randrange(len(batches)) if batches else None
    counts, decided = count(GroupCounts(dict(members), 60.0), batches, reload_after)
    assert len(decided) == len(set(decided)), "a release decided twice"
    assert set(decided) == expected_releases(members, arrivals)
    assert counts.released == set(decided)


@settings(max_examples=200, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_a_sync_timeout_names_exactly_the_missing_nodes(
    history: tuple[dict[str, str], list[Arrival]], rng: random.Random
) -> None:
    members, arrivals = history
    syncs = [a for a in arrivals if a[:3] == (SYNC, "a", 1)]
    rng.shuffle(syncs)
    counts, _ = count(GroupCounts(dict(members), 60.0), split(syncs, rng))
    body = {
        "operation": "lava-sync",
        "message_id": "a",
        "generation": 1,
        "role": "",
        "node": "n0",
        "timeout": 60.0,
    }
    verdict = counts.judge_timeout(body)
    arrived = {a[3] for a in syncs}
    missing = sorted(set(members) - arrived)
    if not missing:
        # released: a node timing out on it lost it, and gets it again
        assert verdict is not None
        assert verdict.resend == ReleaseKey(SYNC, "a", 1, "")
        return
    assert verdict is not None and verdict.resend is None and verdict.reason is not None
    assert describe_missing(members, missing) in verdict.reason
    assert f"{len(arrived)} of {len(members)} arrived" in verdict.reason


def test_a_wait_answered_by_anyone_is_not_a_failure() -> None:
    counts = GroupCounts({"a": "server", "b": "client", "c": "client"}, 60.0)
    body = {
        "operation": "lava-wait",
        "message_id": "ready",
        "generation": 0,
        "role": "",
        "node": "a",
        "timeout": 5.0,
    }
    verdict = counts.judge_timeout(body)
    assert verdict is not None and verdict.reason is not None
    assert verdict.reason == (
        "lava-wait 'ready': timed out after 5 s waiting for any of client (b), client (c); "
        "0 of 2 sent"
    )
    counts.arrive(BarrierKey(SEND, "ready", 0), ["c"])
    assert counts.judge_timeout(body) is None


def test_a_role_release_waits_for_every_node_of_that_role_only() -> None:
    counts = GroupCounts({"s": "server", "c1": "client", "c2": "client"}, 60.0)
    assert counts.arrive(BarrierKey(SEND, "up", 0), ["c1"]) == []
    assert counts.arrive(BarrierKey(SEND, "up", 0), ["c2"]) == [
        ReleaseKey(WAIT_ALL, "up", 0, "client")
    ]
    assert counts.arrive(BarrierKey(SEND, "up", 0), ["s"]) == [
        ReleaseKey(WAIT_ALL, "up", 0, ""),
        ReleaseKey(WAIT_ALL, "up", 0, "server"),
    ]
    assert counts.arrive(BarrierKey(SEND, "up", 0), ["s", "c1"]) == []
