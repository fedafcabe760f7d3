"""The marks of LAVA's console grammar, shared by the room that reads a DUT's
console (``device_agent/signals.py``) and the rooms that read its log after
(the dispatcher's test shell, the server's group timeline)."""

from __future__ import annotations

import re

MULTINODE_MARK = "<LAVA_MULTI_NODE>"
SIGNAL_MARK = "<LAVA_SIGNAL_"
#: the test runner's last line
RUNNER_EXIT = "<LAVA_TEST_RUNNER EXIT>"
#: LAVA rejects MultiNode signals longer than this
MAX_SIGNAL_CHARS = 0xFFFE
#: LAVA's regular expressions for the two signal families
MULTINODE_RE = re.compile(r"<LAVA_MULTI_NODE> <LAVA_(\S+) ([^>]+)>")
SIGNAL_RE = re.compile(r"<LAVA_SIGNAL_(\S+?)(?: ([^>]*))?>")
