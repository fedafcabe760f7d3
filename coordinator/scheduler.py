"""The all-or-nothing group scheduler: a pure function, no I/O, no clock.

``schedule(devices, queue, now)`` decides which queued groups start now and on
which devices, and why every other group waits. The store layer
(``coordinator/service.py``) reads its inputs and writes its decisions.

Rules (see docs/scheduler.md):

* **All or nothing.** A group starts only when every sub-job gets an idle,
  healthy device of its type carrying all of its tags (or the very device the
  plan names). No device is ever held in the store for a group that cannot
  start.
* **Shared classes are summed.** Sub-jobs of a group are matched to devices
  as a whole (a max-flow over demand classes by device classes), so two roles
  asking for ``panda`` and ``panda [usb-flash]`` compete for the same boards.
* **Order.** Groups are considered by priority (high first), then submit
  time, then job id: FIFO within a priority.
* **Anti-starvation.** A group that cannot start and has waited at least
  ``starvation_seconds`` *claims*, for the rest of this pass only, the idle
  devices it could use (up to what it needs). Later groups may still start
  on devices it does not need (backfill), but never on the ones it is waiting
  for, so idle matching devices accumulate until the old group fits. Claims
  are recomputed each pass and never written to the store; a group that can
  never fit the lab claims nothing.
* **Determinism.** Inputs are sorted internally, so any permutation of the
  same devices and queue gives the same result. Devices are picked from the
  matching class with the fewest extra tags, then by name, so richly tagged
  boards stay free for the sub-jobs that need those tags.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_STARVATION_SECONDS = 300.0
TIMES = "\N{MULTIPLICATION SIGN}"
#: how many device states a waiting reason lists before summarising the rest
MAX_DETAILS = 6


@dataclass(frozen=True)
class DeviceView:
    """One device as the scheduler sees it (retired devices are left out by the caller)."""

    name: str
    device_type: str
    tags: frozenset[str] = frozenset()
    state: str = "idle"  # idle | reserved | running | offline
    health: str = "good"  # good | bad | unknown | maintenance
    job_id: int | None = None  # the job holding it, if reserved/running

    @property
    def usable(self) -> bool:
        """Free to be allocated: idle and not known to be unhealthy."""
        return self.state == "idle" and self.health not in ("bad", "maintenance")


@dataclass(frozen=True)
class SubJobRequest:
    """One sub-job of a queued group: the device type and tags it needs."""

    subjob_id: int
    device_type: str
    tags: frozenset[str] = frozenset()
    device: str | None = None  # a device named directly in the plan


@dataclass(frozen=True)
class GroupRequest:
    """A queued job: one group of sub-jobs that must start together."""

    job_id: int
    priority: int
    submit_time: float
    subjobs: tuple[SubJobRequest, ...]


@dataclass
class ScheduleResult:
    """What one scheduling pass decided: allocations, reasons to wait, claims."""

    #: job id → {sub-job id: device name}, in the order the groups start
    allocations: dict[int, dict[int, str]] = field(default_factory=dict)
    #: job id → a reason a user can read, for every group left waiting
    waiting_reasons: dict[int, str] = field(default_factory=dict)
    #: device → job id whose anti-starvation claim kept it idle this pass
    claims: dict[str, int] = field(default_factory=dict)


DemandKey = tuple[str, frozenset[str]]  # (device type, required tags)
ClassKey = tuple[str, frozenset[str]]  # (device type, exact tags of the devices)


def describe_class(device_type: str, tags: Iterable[str]) -> str:
    """``panda [usb-flash]`` — how a demand class is written in messages."""
    tags = sorted(tags)
    return f"{device_type} [{', '.join(tags)}]" if tags else device_type


# ----------------------------------------------------------------- helpers


class _Pool:
    """Free devices indexed by class; taking is O(1) amortised per device."""

    def __init__(self, devices: Iterable[DeviceView]) -> None:
        by_class: dict[ClassKey, list[str]] = defaultdict(list)
        self.class_of: dict[str, ClassKey] = {}
        for dev in devices:
            key = (dev.device_type, dev.tags)
            by_class[key].append(dev.name)
            self.class_of[dev.name] = key
        self.free: dict[ClassKey, deque[str]] = {
            k: deque(sorted(v)) for k, v in sorted(by_class.items(), key=_class_sort)
        }
        self.count: dict[ClassKey, int] = {k: len(v) for k, v in self.free.items()}
        self.gone: set[str] = set()
        self.by_type: dict[str, list[ClassKey]] = defaultdict(list)
        for key in self.free:
            self.by_type[key[0]].append(key)
        self._match_cache: dict[DemandKey, list[ClassKey]] = {}

    def matching(self, demand: DemandKey) -> list[ClassKey]:
        """Device classes that can serve ``demand``: fewest extra tags first."""
        found = self._match_cache.get(demand)
        if found is None:
            dtype, need = demand
            found = [k for k in self.by_type.get(dtype, ()) if need <= k[1]]
            found.sort(key=lambda k: (len(k[1]) - len(need), sorted(k[1])))
            self._match_cache[demand] = found
        return found

    def has(self, name: str) -> bool:
        return name in self.class_of and name not in self.gone

    def take_named(self, name: str) -> None:
        self.gone.add(name)
        self.count[self.class_of[name]] -= 1

    def take(self, key: ClassKey, n: int) -> list[str]:
        out: list[str] = []
        queue = self.free[key]
        while len(out) < n:
            name = queue.popleft()
            if name in self.gone:
                continue
            self.gone.add(name)
            out.append(name)
        self.count[key] -= n
        return out


def _class_sort(item: tuple[ClassKey, object]) -> tuple[str, list[str]]:
    return (item[0][0], sorted(item[0][1]))


def _max_flow(
    needs: dict[DemandKey, int], pool: _Pool, extra_taken: dict[ClassKey, int] | None = None
) -> tuple[int, dict[DemandKey, dict[ClassKey, int]]]:
    """Match summed demand classes to device classes; returns (matched, flow).

    A tiny bipartite transport problem solved with BFS augmenting paths; the
    graph has one node per demand class of the group and per matching device
    class, so it stays small whatever the size of the lab.
    """
    extra_taken = extra_taken or {}
    demands = sorted(needs, key=lambda d: (-len(d[1]), d[0], sorted(d[1])))
    cap_left: dict[ClassKey, int] = {}
    for d in demands:
        for c in pool.matching(d):
            cap_left.setdefault(c, pool.count.get(c, 0) - extra_taken.get(c, 0))
    flow: dict[DemandKey, dict[ClassKey, int]] = {d: {} for d in demands}
    left = dict(needs)
    matched = 0
    # Greedy first (exact for most inputs), then augmenting paths for the rest.
    for d in demands:
        for c in pool.matching(d):
            if left[d] == 0:
                break
            n = min(left[d], cap_left[c])
            if n > 0:
                flow[d][c] = flow[d].get(c, 0) + n
                cap_left[c] -= n
                left[d] -= n
                matched += n
    for d in demands:
        while left[d] > 0:
            path = _augment(d, demands, flow, cap_left, pool)
            if path is None:
                break
            # path alternates demand, class, demand, class ... ending at a class with room
            for i in range(0, len(path) - 1, 2):
                dem, cls = path[i], path[i + 1]
                flow[dem][cls] = flow[dem].get(cls, 0) + 1
                if i + 2 < len(path):
                    nxt = path[i + 2]
                    flow[nxt][cls] -= 1
            cap_left[path[-1]] -= 1
            left[d] -= 1
            matched += 1
    return matched, flow


def _augment(
    start: DemandKey,
    demands: list[DemandKey],
    flow: dict[DemandKey, dict[ClassKey, int]],
    cap_left: dict[ClassKey, int],
    pool: _Pool,
) -> list[tuple[str, frozenset[str]]] | None:
    """BFS for demand → class (room) or demand → class → other demand using it → ..."""
    Node = tuple[str, tuple[str, frozenset[str]]]
    prev: dict[Node, Node | None] = {("d", start): None}
    todo: deque[DemandKey] = deque([start])
    while todo:
        d = todo.popleft()
        for c in pool.matching(d):
            if ("c", c) in prev:
                continue
            prev[("c", c)] = ("d", d)
            if cap_left[c] > 0:
                path: list[tuple[str, frozenset[str]]] = []
                node: Node | None = ("c", c)
                while node is not None:
                    path.append(node[1])
                    node = prev[node]
                path.reverse()
                return path
            for other in demands:
                if flow[other].get(c, 0) > 0 and ("d", other) not in prev:
                    prev[("d", other)] = ("c", c)
                    todo.append(other)
    return None


def _signature(group: GroupRequest) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    return tuple(
        sorted((s.device_type, tuple(sorted(s.tags)), s.device or "") for s in group.subjobs)
    )


def _needs(subjobs: Iterable[SubJobRequest]) -> dict[DemandKey, int]:
    needs: dict[DemandKey, int] = defaultdict(int)
    for s in subjobs:
        if s.device is None:
            needs[(s.device_type, s.tags)] += 1
    return dict(needs)


# ------------------------------------------------------------------ public


def check_fits(devices: Iterable[DeviceView], subjobs: Sequence[SubJobRequest]) -> list[str]:
    """Why this group can never run in this lab (empty list: it can).

    ``devices`` are all non-retired devices, whatever their state: a busy or
    offline device may come back; a retired one does not.
    """
    devs = list(devices)
    return _never_fits(subjobs, _Pool(devs), {d.name: d for d in devs})


def _never_fits(
    subjobs: Sequence[SubJobRequest], lab: _Pool, by_name: dict[str, DeviceView]
) -> list[str]:
    problems: list[str] = []
    named: dict[str, int] = defaultdict(int)
    for s in subjobs:
        if s.device is None:
            continue
        named[s.device] += 1
        dev = by_name.get(s.device)
        if dev is None:
            problems.append(f"needs device {s.device}, the lab has no such device")
        elif s.device_type and dev.device_type != s.device_type:
            problems.append(
                f"needs device {s.device} as a {s.device_type}, but it is a {dev.device_type}"
            )
        elif not s.tags <= dev.tags:
            missing = ", ".join(sorted(s.tags - dev.tags))
            problems.append(f"needs device {s.device} with tags [{missing}], it lacks them")
    for name, n in sorted(named.items()):
        if n > 1:
            problems.append(f"names device {name} {n} times; a device runs one sub-job")
    if problems:
        return problems
    extra: dict[ClassKey, int] = defaultdict(int)
    for name in named:
        extra[lab.class_of[name]] += 1
    needs = _needs(subjobs)
    for demand, n in sorted(needs.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))):
        have = sum(lab.count[c] - extra.get(c, 0) for c in lab.matching(demand))
        if have < n:
            problems.append(f"needs {n} {TIMES} {describe_class(*demand)}, the lab has {have}")
    if problems:
        return problems
    total = sum(needs.values())
    matched, _ = _max_flow(needs, lab, extra)
    if matched < total:
        by_type: dict[str, int] = defaultdict(int)
        for (dtype, _tags), n in needs.items():
            by_type[dtype] += n
        for dtype, n in sorted(by_type.items()):
            have = sum(lab.count[c] - extra.get(c, 0) for c in lab.by_type.get(dtype, ()))
            problems.append(
                f"needs {n} {TIMES} {dtype} in total (roles share the same devices), the lab has "
                f"{have} that fit"
            )
    return problems


def schedule(
    devices: Iterable[DeviceView],
    queue: Iterable[GroupRequest],
    now: float,
    *,
    starvation_seconds: float = DEFAULT_STARVATION_SECONDS,
) -> ScheduleResult:
    """One scheduling pass. ``devices``: every non-retired device; ``queue``: queued groups."""
    devs = sorted(devices, key=lambda d: d.name)
    groups = sorted(queue, key=lambda g: (-g.priority, g.submit_time, g.job_id))
    pool = _Pool(d for d in devs if d.usable)
    lab = _Pool(devs)
    by_name = {d.name: d for d in devs}
    result = ScheduleResult()
    failed_signatures: set[object] = set()
    fits_cache: dict[object, list[str]] = {}
    waiting: list[GroupRequest] = []

    for group in groups:
        sig = _signature(group)
        starving = now - group.submit_time >= starvation_seconds
        if sig in failed_signatures and not starving:
            # Free devices only shrink during a pass: what failed once fails again.
            waiting.append(group)
            continue
        placed = _try_place(group, pool)
        if placed is not None:
            result.allocations[group.job_id] = placed
            continue
        failed_signatures.add(sig)
        waiting.append(group)
        if starving:
            if sig not in fits_cache:
                fits_cache[sig] = _never_fits(group.subjobs, lab, by_name)
            if not fits_cache[sig]:
                for name in _claim(group, pool):
                    result.claims[name] = group.job_id

    explain = _Explainer(devs, result)
    for group in waiting:
        sig = _signature(group)
        if sig not in fits_cache:
            fits_cache[sig] = _never_fits(group.subjobs, lab, by_name)
        never = fits_cache[sig]
        if never:
            result.waiting_reasons[group.job_id] = "waiting: can never fit: " + "; ".join(never)
        else:
            result.waiting_reasons[group.job_id] = explain.reason(group)
    return result


def _try_place(group: GroupRequest, pool: _Pool) -> dict[int, str] | None:
    named = [s for s in group.subjobs if s.device is not None]
    seen: set[str] = set()
    for s in named:
        assert s.device is not None
        if not pool.has(s.device) or s.device in seen:
            return None
        cls = pool.class_of[s.device]
        if (s.device_type and cls[0] != s.device_type) or not s.tags <= cls[1]:
            return None
        seen.add(s.device)
    extra: dict[ClassKey, int] = defaultdict(int)
    for name in seen:
        extra[pool.class_of[name]] += 1
    needs = _needs(group.subjobs)
    total = sum(needs.values())
    # Quick reject before the flow: each demand class alone must fit.
    for demand, n in needs.items():
        if sum(pool.count[c] - extra.get(c, 0) for c in pool.matching(demand)) < n:
            return None
    matched, flow = _max_flow(needs, pool, extra)
    if matched < total:
        return None
    out: dict[int, str] = {}
    for s in named:
        assert s.device is not None
        pool.take_named(s.device)
        out[s.subjob_id] = s.device
    by_demand: dict[DemandKey, list[SubJobRequest]] = defaultdict(list)
    for s in sorted(group.subjobs, key=lambda s: s.subjob_id):
        if s.device is None:
            by_demand[(s.device_type, s.tags)].append(s)
    for demand, subs in by_demand.items():
        names: list[str] = []
        for cls, n in sorted(
            flow[demand].items(), key=lambda kv: pool.matching(demand).index(kv[0])
        ):
            if n > 0:
                names.extend(pool.take(cls, n))
        for s, name in zip(subs, names, strict=True):
            out[s.subjob_id] = name
    return dict(sorted(out.items()))


def _claim(group: GroupRequest, pool: _Pool) -> list[str]:
    """Take, for this pass only, the free devices the starving group could use."""
    claimed: list[str] = []
    for s in group.subjobs:
        if s.device is not None and pool.has(s.device):
            pool.take_named(s.device)
            claimed.append(s.device)
    needs = _needs(group.subjobs)
    _, flow = _max_flow(needs, pool)
    for demand in sorted(flow, key=lambda d: (d[0], sorted(d[1]))):
        for cls, n in flow[demand].items():
            if n > 0:
                claimed.extend(pool.take(cls, n))
    return sorted(claimed)


class _Explainer:
    """Builds ``waiting: needs 2 {TIMES} panda [usb-flash], 1 idle, 1 running job 41``."""

    def __init__(self, devices: list[DeviceView], result: ScheduleResult) -> None:
        self.devices = {d.name: d for d in devices}
        self.by_type: dict[str, list[DeviceView]] = defaultdict(list)
        for d in devices:
            self.by_type[d.device_type].append(d)
        self.starting = {n: j for j, alloc in result.allocations.items() for n in alloc.values()}
        self.claims = result.claims
        self._cache: dict[DemandKey, dict[str, int]] = {}
        self._detail: dict[DemandKey, str] = {}

    def _status(self, dev: DeviceView) -> str:
        if dev.name in self.starting:
            return f"starting job {self.starting[dev.name]}"
        if dev.name in self.claims:
            return f"held for job {self.claims[dev.name]}"
        if dev.state == "idle":
            if dev.health == "maintenance":
                return "in maintenance"
            return "idle" if dev.health != "bad" else "bad health"
        if dev.state in ("running", "reserved") and dev.job_id is not None:
            return f"{dev.state} job {dev.job_id}"
        return dev.state

    def _census(self, demand: DemandKey) -> dict[str, int]:
        found = self._cache.get(demand)
        if found is None:
            found = defaultdict(int)
            for dev in self.by_type.get(demand[0], ()):
                if demand[1] <= dev.tags:
                    found[self._status(dev)] += 1
            self._cache[demand] = found
        return found

    def reason(self, group: GroupRequest) -> str:
        parts: list[str] = []
        for s in sorted(group.subjobs, key=lambda s: s.subjob_id):
            if s.device is not None:
                dev = self.devices[s.device]
                if self._status(dev) != "idle":
                    parts.append(f"needs device {s.device}, {self._status(dev)}")
        for demand, n in sorted(
            _needs(group.subjobs).items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))
        ):
            census = self._census(demand)
            if census.get("idle", 0) >= n and len(_needs(group.subjobs)) > 1:
                continue
            detail = self._detail.get(demand)
            if detail is None:
                items = sorted(census.items(), key=lambda kv: _status_order(kv[0]))
                shown = [f"{count} {status}" for status, count in items[:MAX_DETAILS]]
                if len(items) > MAX_DETAILS:
                    rest = sum(count for _status, count in items[MAX_DETAILS:])
                    shown.append(f"{rest} more busy")
                detail = self._detail[demand] = ", ".join(shown)
            parts.append(f"needs {n} {TIMES} {describe_class(*demand)}, {detail or 'none'}")
        if not parts:
            parts.append("roles share the same idle devices and not enough are idle together")
        return "waiting: " + "; ".join(parts)


def _status_order(status: str) -> tuple[int, str]:
    order = ("idle", "starting", "held", "reserved", "running", "offline", "bad")
    for i, prefix in enumerate(order):
        if status.startswith(prefix):
            return (i, _natural(status))
    return (len(order), status)


def _natural(status: str) -> str:
    head, _, tail = status.rpartition(" ")
    return f"{head} {int(tail):012d}" if tail.isdigit() else status
