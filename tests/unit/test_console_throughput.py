"""The per-chunk fast paths of the console path give what the per-line code gave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from device_agent.console import ScriptedConsole, strip_escapes
from device_agent.signals import MultinodeCall, SignalReader
from dispatcher.joblog import JobLog, format_record, mask_secrets, may_hold_secret, read_records
from dispatcher.logstore import write_batch
from dispatcher.publisher import BatchEnvelope, _encode_records, batch_payload
from lavamq.cli import main
from lavamq.commands.logs import json_lines
from schemas.messages.base import InvalidMessage, decode, encode
from schemas.messages.console import LogBatchSchema


def _file_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_batch_listener_gets_each_chunks_lines_in_order(tmp_path: Path) -> None:
    jl = JobLog(tmp_path / "job.log")
    batches: list[list[dict[str, Any]]] = []
    singles: list[dict[str, Any]] = []
    jl.add_batch_listener(batches.append)
    jl.add_listener(singles.append)
    jl.target_bytes(b"one\r\ntwo\r\nthr")
    jl.target_bytes(b"ee\r\n")
    jl.info("an action")
    jl.close()
    assert [[r["message"] for r in b] for b in batches] == [
        ["one", "two"],
        ["three"],
        ["an action"],
    ]
    assert [r["message"] for r in singles] == ["one", "two", "three", "an action"]
    assert [r["message"] for r in read_records(tmp_path / "job.log")] == [
        "one",
        "two",
        "three",
        "an action",
    ]


@pytest.mark.parametrize(
    "chunk",
    [
        b"plain line\nanother\n",
        b'a "quoted" word\nback\\slash\n',
        b"tab\there\nnul\x00byte\n",
        "caf\u00e9 \u20ac\n".encode(),
        b"\x1b[1mbold\x1b[0m\n",
    ],
)
def test_file_lines_are_exactly_json_dumps_of_each_record(tmp_path: Path, chunk: bytes) -> None:
    jl = JobLog(tmp_path / "job.log")
    jl.target_bytes(chunk)
    jl.close()
    lines = _file_lines(tmp_path / "job.log")
    expected = chunk.decode().split("\n")[:-1]
    assert [json.loads(line)["message"] for line in lines] == expected
    for line in lines:
        assert line == json.dumps(json.loads(line), ensure_ascii=False)


def test_secrets_are_masked_in_a_long_chunk_and_only_on_their_line(tmp_path: Path) -> None:
    jl = JobLog(tmp_path / "job.log", secrets=["hunter2"])
    lines = [f"line {i}" for i in range(500)]
    lines[250] = "git clone https://bob:pw1@example.org/x PASSWORD=pw2 echo hunter2"
    jl.target_bytes(("\r\n".join(lines) + "\r\n").encode())
    jl.close()
    text = (tmp_path / "job.log").read_text()
    assert "pw1" not in text and "pw2" not in text and "hunter2" not in text
    got = [r["message"] for r in read_records(tmp_path / "job.log")]
    assert got[250] == mask_secrets(lines[250], ["hunter2"])
    assert got[:250] == lines[:250] and got[251:] == lines[251:]


def test_may_hold_secret_never_misses_what_mask_secrets_masks() -> None:
    for text in ["Token: abc", "PASSWD=x", "secret=1", "api-key=2", "ftp://a:b@c", "x hunter2"]:
        assert mask_secrets(text, ["hunter2"]) != text
        assert may_hold_secret(text, ["hunter2"])
    assert not may_hold_secret("nothing to see\nhere\n", ["hunter2"])


def test_long_lines_are_cut_after_masking_in_a_chunk() -> None:
    got: list[dict[str, Any]] = []
    jl = JobLog(max_message=40)
    jl.add_listener(got.append)
    jl.target_bytes(b"short\n" + b"y" * 100 + b"\n" + b"x" * 30 + b" token=abcdefgh\n")
    assert got[0]["message"] == "short"
    assert got[1]["message"] == "y" * 40 + " [cut 60 characters]"
    assert got[2]["message"] == ("x" * 30 + " token=*****")[:40] + " [cut 2 characters]"


def test_a_character_split_between_reads_stays_whole() -> None:
    got: list[dict[str, Any]] = []
    jl = JobLog()
    jl.add_listener(got.append)
    data = "caf\u00e9\n".encode()
    jl.target_bytes(data[:4])
    jl.target_bytes(data[4:])
    assert got[0]["message"] == "caf\u00e9"
    jl.target_bytes(b"end \xc3")
    jl.close()
    assert got[-1]["message"] == "end \ufffd"


def test_strip_escapes_fast_path_matches_the_regexes() -> None:
    assert strip_escapes("a\r\nb\x07c\x7f\td") == "a\nbc\td"
    assert strip_escapes("\x1b[6n# \x1b[1;32mok\x1b[0m\r\n") == "# ok\n"
    assert strip_escapes("\x9b2Jx") == "x"


def test_expect_finds_a_pattern_after_more_than_twice_max_buffer() -> None:
    con = ScriptedConsole()
    con.max_buffer = 1000
    for i in range(50):
        con.feed_output(f"{i:04d}" + "x" * 96 + "\n")
    con.feed_output("DONE\n")
    index, match = con.expect("DONE", timeout=1)
    assert index == 0 and match.group(0) == "DONE"
    assert len(con.before) <= 1000
    assert con.before.endswith("0049" + "x" * 96 + "\n")
    con.feed_output("z" * 5000)
    assert len(con.flush()) == 1000


def test_the_signal_reader_skips_chunks_without_signals_but_sees_a_split_signal() -> None:
    reader = SignalReader()
    seen: list[tuple[str, Any]] = []
    reader.subscribe(lambda line, event: seen.append((line, event)))
    reader.feed("noise\n" * 100 + "<LAVA_MULTI")
    assert seen == []
    reader.feed("_NODE> <LAVA_SEND ready>\nmore noise\n")
    assert seen == [("<LAVA_MULTI_NODE> <LAVA_SEND ready>", MultinodeCall("SEND", "ready"))]


def _batch(records: list[Any]) -> dict[str, Any]:
    return {"job": "j1", "subjob": "1", "node": "n", "seq": 0, "records": records}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"time": "t", "level": "loud", "message": "m"}, "[2].level: must be one of"),
        ({"time": "t", "level": "info"}, "[2].message: must be a string"),
        ({"time": "t", "level": "info", "message": "m", "x": 1}, "[2]: unknown keys ['x']"),
        ({"time": "t", "level": "info", "message": "m", "action": 3}, "[2].action: must be"),
        ("text", "[2]: must be an object"),
    ],
)
def test_log_records_fast_pass_still_names_the_bad_record(bad: Any, message: str) -> None:
    good = {"time": "t", "level": "target", "message": "m"}
    with pytest.raises(InvalidMessage) as exc:
        encode(LogBatchSchema(), _batch([good, good, bad, good]))
    assert message in exc.value.message


def test_log_records_round_trip_with_and_without_action() -> None:
    records = [
        {"time": "t", "level": "target", "message": "m"},
        {"time": "t", "level": "info", "message": "start", "action": "deploy-image"},
        {"time": "t", "level": "info", "message": "none", "action": None},
    ]
    body = decode(LogBatchSchema(), encode(LogBatchSchema(), _batch(records)))
    assert body["records"] == records


def test_json_listener_gets_the_file_bytes_and_only_wire_keys(tmp_path: Path) -> None:
    jl = JobLog(tmp_path / "job.log", secrets=["hunter2"])
    got: list[tuple[str, int]] = []
    jl.add_json_listener(lambda text, count: got.append((text, count)))
    jl.target_bytes(b'one\r\ntwo "quoted" \\ hunter2\nthr')
    jl.info("deploy", action="deploy-image", local_only=3)
    jl.close()
    file_lines = _file_lines(tmp_path / "job.log")
    assert [c for _, c in got] == [2, 1, 1]
    assert got[0][0] + got[2][0] == "".join(
        f"{line}\n" for line in [*file_lines[:2], file_lines[3]]
    )
    assert "hunter2" not in "".join(t for t, _ in got)
    # the extra key stays in the file only
    assert json.loads(file_lines[2])["local_only"] == 3
    assert json.loads(got[1][0]) == {
        k: v for k, v in json.loads(file_lines[2]).items() if k != "local_only"
    }


def test_batch_payload_splices_json_lines_into_a_valid_log_batch() -> None:
    records: list[dict[str, Any]] = [
        {"time": "t1", "level": "target", "message": 'a "q" \\ \x1b é\u2028'},
        {"time": "t2", "level": "info", "message": "x", "action": "boot", "other": 1},
    ]
    body = {"job": "j", "subjob": "1", "node": "n", "seq": 3, "records": [], "final": True}
    payload = batch_payload(body, [_encode_records(records[:1]), _encode_records(records[1:])])
    got = decode(LogBatchSchema(), payload)
    assert got["records"] == [records[0], {k: v for k, v in records[1].items() if k != "other"}]
    assert (got["seq"], got["final"], got["node"]) == (3, True, "n")
    assert decode(LogBatchSchema(), batch_payload(body, []))["records"] == []
    with pytest.raises(InvalidMessage):
        batch_payload(dict(body, seq=-1), [])


def test_batch_envelope_gives_the_bytes_batch_payload_gives() -> None:
    """The envelope validated once, then seq and final written in, is the same message."""
    lines = [_encode_records([{"time": "t", "level": "target", "message": 'a "seq": 0 é'}])]
    envelope = BatchEnvelope('j "seq": 0', "1", "n", LogBatchSchema())
    for seq, final, chunk in ((0, False, lines), (7, True, []), (12345, False, lines * 3)):
        body = {"job": 'j "seq": 0', "subjob": "1", "node": "n", "seq": seq, "records": [],
                "final": final}  # fmt: skip
        assert envelope.payload(seq, final, chunk) == batch_payload(body, chunk)
        assert decode(LogBatchSchema(), envelope.payload(seq, final, chunk))["seq"] == seq
    with pytest.raises(InvalidMessage):
        envelope.payload(-1, False, [])


LOG_RECORDS: list[Any] = [
    {"time": "t1", "level": "target", "message": 'a "q" \\ \x1b\t é\u2028 }, {x'},
    {"time": "t2", "level": "info", "message": "start", "action": "deploy-image"},
    {"time": "t3", "level": "info", "message": "none", "action": None},
    {"level": "target", "time": "t4", "message": "other key order"},
    {"time": "t5", "level": "target", "message": ""},
]


@pytest.mark.parametrize("records", [LOG_RECORDS, LOG_RECORDS[:1] * 3, LOG_RECORDS[2:3], []])
def test_follower_json_lines_are_exactly_json_dumps_with_the_node(records: list[Any]) -> None:
    assert json_lines('n"1', records) == [
        json.dumps({"node": 'n"1', **rec}, ensure_ascii=False) for rec in records
    ]


def test_follower_json_lines_takes_any_stored_value_like_json_dumps() -> None:
    # a store file is not validated: numbers and nested values are printed as they are
    records: list[Any] = [{"time": 3, "level": "target", "message": ["a", {"b": 1}]}]
    assert json_lines("n", records) == [json.dumps({"node": "n", **records[0]})]
    with pytest.raises(TypeError):
        json_lines("n", ["not a record"])  # type: ignore[list-item]


def test_logs_prints_the_stored_log_plain_and_as_json(tmp_path: Path) -> None:
    for seq, records in enumerate([LOG_RECORDS[:2], LOG_RECORDS[2:]]):
        write_batch(tmp_path, {**_batch(records), "seq": seq, "final": seq == 1})
    plain = CliRunner().invoke(main, ["logs", "j1", "--dir", str(tmp_path)])
    assert plain.exit_code == 0, plain.output
    # (split on newlines only: a message may hold U+2028, which splitlines() splits on)
    assert plain.output.split("\n") == [*(format_record(r, node="n") for r in LOG_RECORDS), ""]
    as_json = CliRunner().invoke(main, ["logs", "j1", "--dir", str(tmp_path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert [json.loads(line) for line in as_json.output.split("\n")[:-1]] == [
        {"node": "n", **r} for r in LOG_RECORDS
    ]
