"""Property: whatever the input, the loader returns a JobPlan or raises JobValidationError."""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from job_seeds import seed_2014, seed_yaml

from schemas.job import JobPlan, JobValidationError, load_job

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = st.sampled_from(
    [
        "role",
        "count",
        "device",
        "device_type",
        "tags",
        "timeout",
        "timeouts",
        "actions",
        "command",
        "parameters",
        "image",
        "images",
        "url",
        "compression",
        "definitions",
        "from",
        "repository",
        "path",
        "name",
        "minutes",
        "protocols",
        "lava-multinode",
        "roles",
        "deploy",
        "boot",
        "test",
        "testdef_repos",
        "git-repo",
        "testdef",
        "priority",
        "job_name",
        "device_group",
    ]
) | st.text(max_size=8)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["omap4", "omap3", "http://x/a.img.gz", "file:///a", "git", "inline", "zip"])
)

VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
)


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_DUMPER)


def _check(text: str | bytes) -> None:
    try:
        plan = load_job(text, source="fuzz")
    except JobValidationError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and p for p in exc.problems)
        return
    assert isinstance(plan, JobPlan)
    wire = json.loads(json.dumps(plan.to_dict(), allow_nan=False))
    assert JobPlan.from_dict(wire) == plan
    for sub in plan.subjobs:
        json.dumps(plan.subjob_dict(sub.role, sub.index), allow_nan=False)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.extend(_paths(value, (*prefix, i)))
    return out


def _containers(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if isinstance(doc, (dict, list)) else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.extend(_containers(value, (*prefix, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.extend(_containers(value, (*prefix, i)))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _mutate(doc: Any, data: st.DataObject) -> Any:
    """Replace or delete a value anywhere, or add a key/item to any mapping or list."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "add":
            parent = _at(doc, data.draw(st.sampled_from(_containers(doc))))
            if isinstance(parent, dict):
                parent[data.draw(KEYS)] = data.draw(VALUES)
            else:
                parent.append(data.draw(VALUES))
            continue
        paths = _paths(doc)
        if not paths:
            return doc
        path = data.draw(st.sampled_from(paths))
        parent = _at(doc, path[:-1])
        if action == "replace":
            parent[path[-1]] = data.draw(VALUES)
        else:
            del parent[path[-1]]
    return doc


@SETTINGS
@given(VALUES)
def test_random_documents(doc: Any) -> None:
    _check(json.dumps(doc))
    _check(_yaml(doc))


@SETTINGS
@given(st.data())
def test_mutated_2014_jobs(data: st.DataObject) -> None:
    _check(json.dumps(_mutate(seed_2014(), data)))


@SETTINGS
@given(st.data())
def test_mutated_yaml_jobs(data: st.DataObject) -> None:
    _check(_yaml(_mutate(seed_yaml(), data)))


@SETTINGS
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_random_text(text: str | bytes) -> None:
    _check(text)


@SETTINGS
@given(st.data())
def test_truncated_files(data: st.DataObject) -> None:
    text = data.draw(st.sampled_from([json.dumps(seed_2014(), indent=2), _yaml(seed_yaml())]))
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    _check(text[:cut])


NASTY = [None, True, False, -1, 0, 1.5, 10**30, "", "x", "omap4", [], [1], ["omap4"], {}, {"a": 1}]


def _known_keys() -> list[str]:
    from schemas import job_json, job_yaml, job_yaml_actions

    schemas = [
        job_json.Job2014Schema,
        job_json.DeviceGroupSchema,
        job_json.Action2014Schema,
        job_json.TestdefRepoSchema,
        *job_json.PARAMETER_SCHEMAS.values(),
        job_yaml.JobYamlSchema,
        job_yaml.TimeoutsSchema,
        job_yaml.MultinodeSchema,
        job_yaml.RoleSchema,
        job_yaml_actions.TestActionSchema,
        job_yaml_actions.CommandActionSchema,
        job_yaml_actions.DefinitionSchema,
    ]
    keys = {name for schema in schemas for name in schema().fields}
    keys |= {"url", "compression", "md5sum", "sha256sum", "to", "images", "method", "prompts"}
    keys |= {"commands", "deploy", "boot", "test", "command", "lava-multinode", "skip"}
    keys |= {"days", "hours", "minutes", "seconds", "device_type"}
    return sorted(keys)


def test_every_value_replaced_by_every_nasty_value() -> None:
    """Exhaustive, not random: each value of both seeds, swapped for each awkward value."""
    for seed, dump in ((seed_2014, json.dumps), (seed_yaml, _yaml)):
        base = seed()
        for path in _paths(base):
            for value in NASTY:
                doc = copy.deepcopy(base)
                _at(doc, path[:-1])[path[-1]] = value
                _check(dump(doc))


def test_every_known_key_added_at_the_top() -> None:
    """Each key any schema knows, with each awkward value, added to the top of both seeds."""
    keys = _known_keys()
    for seed, dump in ((seed_2014, json.dumps), (seed_yaml, _yaml)):
        base = seed()
        for key in keys:
            for value in NASTY:
                doc = copy.deepcopy(base)
                doc[key] = value
                _check(dump(doc))


@SETTINGS
@given(st.data())
def test_known_keys_added_anywhere(data: st.DataObject) -> None:
    """Keys the schemas know (not just random text), with random values, in any mapping."""
    keys = _known_keys()
    seed, dump = data.draw(st.sampled_from([(seed_2014, json.dumps), (seed_yaml, _yaml)]))
    doc = seed()
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        mappings = [p for p in _containers(doc) if isinstance(_at(doc, p), dict)]
        target = _at(doc, data.draw(st.sampled_from(mappings)))
        # a copy: a later step may add keys inside it, and NASTY's values are shared
        value = copy.deepcopy(data.draw(st.sampled_from(NASTY) | VALUES))
        target[data.draw(st.sampled_from(keys))] = value
    _check(dump(doc))
