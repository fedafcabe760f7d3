"""docs/architecture.md's module map is the tree: every product module named, none
that is gone, and the rooms import only what its room table says."""

from __future__ import annotations

import re
from pathlib import Path

from test_import_graph import ROOMS, import_graph

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def _section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("## Rooms and modules")
    return text[start : text.index("\n## ", start + 1)]


def _modules() -> set[str]:
    return {
        str(p.relative_to(ROOT))
        for room in ROOMS
        for p in (ROOT / room).rglob("*.py")
        if "migrations" not in p.parts and p.name != "__init__.py"
    }


def _named() -> set[str]:
    """Every ``room/…/x.py`` (or ``room/…/``) the map's first column names."""
    names: set[str] = set()
    for line in _section().splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) >= 2:
            names.update(re.findall(r"`([a-z_]+/[a-z_0-9/]*(?:\.py|/))`", cells[0]))
    return names


def test_every_product_module_is_in_the_map() -> None:
    missing = sorted(_modules() - _named())
    assert not missing, f"modules docs/architecture.md does not name: {missing}"


def test_the_map_names_nothing_that_is_gone() -> None:
    gone = sorted(n for n in _named() if not (ROOT / n).exists())
    assert not gone, f"docs/architecture.md names what the tree no longer has: {gone}"


def test_rooms_import_only_what_the_room_table_lists() -> None:
    allowed: dict[str, set[str]] = {}
    for line in _section().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].strip("`") in ROOMS:
            listed = cells[2]
            allowed[cells[0].strip("`")] = (
                set(ROOMS) if listed == "every room" else set(re.findall(r"[a-z_]+", listed))
            )
    assert set(allowed) == set(ROOMS), f"rooms without a row: {set(ROOMS) - set(allowed)}"
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if (a := module.split(".")[0]) != (b := target.split(".")[0]) and b not in allowed[a]
    )
    assert not wrong, f"imports docs/architecture.md's room table does not list: {wrong}"
