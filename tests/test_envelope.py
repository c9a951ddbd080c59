"""The event envelope at every edge and in the engine: subjects, ids and data that could break the
NATS protocol, pass for watchd's own events, or change on their way through JSON are refused with a
reason; an event that reached the stream without a valid id is given one and never dropped.
Property tests generate each class; a real daemon shows the engine's side."""

from __future__ import annotations

import json
import math
import os
import string
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd import bus
from watchd.agents.tools import Toolbox
from watchd.config import AnthropicAgent
from watchd.errors import EventRejected, NatsUnavailable
from watchd.limits import MAX_DATA_DEPTH, MAX_ID_CHARS, MAX_SUBJECT_CHARS, MAX_SUBJECT_TOKENS
from watchd.model import (
    Handoff,
    check_subject,
    decode_event,
    decode_stored_event,
    encode,
    id_problem,
    make_event,
    own_event,
    parse_data,
)

PROPERTY = settings(max_examples=300, deadline=None)
TIME = "2026-11-22T02:13:00Z"


def envelope(**fields: Any) -> bytes:
    return json.dumps({"subject": "raw.x", "time": TIME, **fields}).encode()


def deep(depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(depth - 1):
        data = {"a": data}
    return data


# ---- subjects ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "fragment"),
    [
        ("a" * (MAX_SUBJECT_CHARS + 1), "over 255 characters"),
        (".".join("t" * 17), "over 16 dot-separated tokens"),
        ("hook.x\n", "use dot-separated tokens"),
        ("hook.x\r\nPUB y 1", "use dot-separated tokens"),
        ("a..b", "use dot-separated tokens"),
        ("a.*", "use dot-separated tokens"),
        ("", "use dot-separated tokens"),
    ],
)
def test_bad_subjects_are_refused_with_the_reason_and_without_flooding_the_message(subject: str, fragment: str) -> None:
    with pytest.raises(EventRejected) as exc:
        make_event(subject)
    assert fragment in exc.value.message and exc.value.reason == "subject"
    assert len(exc.value.message) < 200 and "\n" not in exc.value.message


@pytest.mark.parametrize(
    "subject", ["watchd.job.backup.done", "watchd.job.canary.failed", "Watchd.config.reloaded", "watchd"]
)
def test_watchd_subjects_are_reserved_at_the_edge_and_open_to_watchd_itself(subject: str) -> None:
    with pytest.raises(EventRejected, match=r"watchd's own \(reserved\)"):
        make_event(subject, {"summary": "ok"})
    event = own_event(subject, {"summary": "ok"})
    assert event.subject == subject and event.source == "watchd"
    assert decode_event(encode(event)) == event  # the engine reads watchd's own events like any other


@PROPERTY
@given(st.text(max_size=300) | st.lists(st.text(string.ascii_letters + "_-", max_size=20), max_size=30).map(".".join))
def test_any_subject_check_subject_passes_fits_the_nats_control_line(subject: str) -> None:
    try:
        check_subject(subject)
    except EventRejected:
        return
    assert len(subject) <= MAX_SUBJECT_CHARS and subject.count(".") < MAX_SUBJECT_TOKENS
    assert set(subject) <= set(string.ascii_letters + string.digits + "_-.") and ".." not in subject
    assert len("watchd.events." + subject) < 300  # the control line is 4 KiB


# ---- ids -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_id", "fragment"),
    [
        ("", "id is missing"),
        ("k" * (MAX_ID_CHARS + 1), "over 128 characters"),
        ("k" * 5000, "over 128 characters"),
        ("a b", "or a space"),
        ("a\x00", "outside printable ASCII"),
        ("x\r\nNats-Msg-Id: y", "outside printable ASCII"),
        ("r\u00e9sum\u00e9", "outside printable ASCII"),
        ("seq-41", "watchd keeps for the ids it assigns"),
    ],
)
def test_bad_ids_are_refused_at_the_edge(event_id: str, fragment: str) -> None:
    with pytest.raises(EventRejected) as exc:
        make_event("job.done", id=event_id)
    assert fragment in exc.value.message and exc.value.reason == "id"


@PROPERTY
@given(st.text(max_size=200) | st.text(string.printable, max_size=200))
def test_an_id_make_event_accepts_is_safe_as_a_nats_header(event_id: str) -> None:
    try:
        event = make_event("job.done", id=event_id)
    except EventRejected:
        assert id_problem(event_id) is not None
        return
    assert event.id == event_id and 0 < len(event_id) <= MAX_ID_CHARS
    assert all(0x21 <= ord(c) <= 0x7E for c in event_id)


# ---- data ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"x": float("nan")}, "a number JSON cannot represent (nan)"),
        ({"x": [1, float("inf")]}, "a number JSON cannot represent (inf)"),
        (deep(MAX_DATA_DEPTH + 1), "nested deeper than 64 levels"),
        ({"x": "\ud800"}, "cannot be written as JSON"),
        ({"\udc00": 1}, "cannot be written as JSON"),
    ],
)
def test_data_that_json_would_change_or_cannot_hold_is_refused(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(EventRejected) as exc:
        make_event("job.done", data)
    assert fragment in exc.value.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=30,
)


@PROPERTY
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.integers(1, 80))
def test_any_event_make_event_accepts_crosses_json_unchanged(data: dict[str, Any], depth: int) -> None:
    data = {"nested": deep(depth), **data}
    try:
        event = make_event("job.done", data, id="ev-1", time_s=1_790_000_000.0)
    except EventRejected:
        return
    assert decode_event(encode(event)) == event


@PROPERTY
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_body_parse_data_accepts_makes_an_event_that_crosses_json_unchanged(raw: bytes) -> None:
    try:
        data = parse_data(raw)
    except EventRejected as exc:
        assert exc.message.startswith("body ")
        return
    event = make_event("hook.x", data, id="ev-2", time_s=1_790_000_000.0)
    assert decode_event(encode(event)) == event


def test_parse_data_refuses_what_pythons_json_would_accept() -> None:
    for raw, fragment in [
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": "\\ud800"}', "not valid JSON"),
        (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "nested deeper than 64 levels"),
        (b"[" * 100_000, "nested deeper than 64 levels"),
    ]:
        with pytest.raises(EventRejected, match=fragment):
            parse_data(raw, what="--json")


# ---- the engine's decoder: raw publishers bypass the edges -------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({}, "id is missing"),
        ({"id": ""}, "id is missing"),
        ({"id": None}, "id is missing"),
        ({"id": 42}, "id is not a string"),
        ({"id": "k" * 5000}, "id is over 128 characters"),
        ({"id": "a\x01b"}, "outside printable ASCII"),
        ({"id": "seq-7"}, "watchd keeps"),
    ],
)
def test_a_stored_event_without_a_valid_id_gets_one_from_its_sequence(fields: dict[str, Any], why: str) -> None:
    event, note = decode_stored_event(envelope(**fields, data={"n": 1}), 1234)
    assert event.id == "seq-1234" and event.subject == "raw.x" and event.data == {"n": 1}
    assert note is not None and note.startswith("id seq-1234 assigned by watchd: the publisher's") and why in note
    with pytest.raises(EventRejected, match="malformed event"):
        decode_event(envelope(**fields))  # the strict decoder (a JSONL backtest) refuses it instead


def test_a_stored_event_with_a_good_id_keeps_it() -> None:
    assert decode_stored_event(envelope(id="ev-9"), 5) == (decode_event(envelope(id="ev-9")), None)
    assert decode_stored_event(envelope(id="ev-9"), 5)[0].id == "ev-9"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (envelope(subject="a" * 300, id="x"), "over 255 characters"),
        (envelope(subject="a\nb", id="x"), "bad subject"),
        (envelope(id="x", data=deep(MAX_DATA_DEPTH + 1)), "nested deeper than 64 levels"),
        (b'{"id": "x", "subject": "a", "time": "' + TIME.encode() + b'", "data": ' + b"[" * 50_000, "malformed"),
        (b'{"id": "x", "subject": "a", "time": "2026-11-22T02:13:00Z", "data": {"v": NaN}}', "not valid JSON"),
    ],
)
def test_stored_events_that_cannot_be_judged_are_rejected_with_a_reason(raw: bytes, fragment: str) -> None:
    with pytest.raises(EventRejected) as exc:
        decode_stored_event(raw, 1)
    assert fragment in exc.value.message


@PROPERTY
@given(
    st.binary(max_size=300)
    | st.dictionaries(
        st.sampled_from(["id", "subject", "time", "source", "data", "x"]),
        json_values | st.just(TIME) | st.just("a.b"),
        max_size=6,
    ).map(lambda d: json.dumps(d).encode())
)
def test_any_stored_bytes_decode_to_a_valid_event_or_a_rejection(raw: bytes) -> None:
    try:
        event, note = decode_stored_event(raw, 77)
    except EventRejected:
        return
    assert id_problem(event.id) is None or (event.id == "seq-77" and note is not None)
    check_subject(event.subject)
    assert all(math.isfinite(v) for v in _floats(event.data))


def _floats(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return [value] if isinstance(value, float) else []


# ---- the engine: every id-less event fires on its own, and says why its id is what it is ------------------------

RAW_WATCH = """
[[watch]]
id = "raw"
kind = "match"
on = { subject = "raw.>" }
then = ["notify.console"]
"""


async def test_events_without_valid_ids_each_fire_and_their_decisions_say_why(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    """Four distinct events with an empty id fired four times but left one handoff (three dropped
    silently): each now gets `seq-<stream seq>`, and so its own handoff."""
    d = await daemon_factory({"raw.toml": RAW_WATCH}).start()
    bodies = [envelope(id="", data={"n": n}) for n in range(4)]
    bodies += [envelope(data={"n": 4}), envelope(id="k" * 5000, data={"n": 5}), envelope(id="a\x01", data={"n": 6})]
    acks = [await d.publish_raw("watchd.events.raw.x", body) for body in bodies]
    handoffs = await until(lambda: len(d.handoffs("raw")) == len(bodies) and d.handoffs("raw"), what="7 handoffs")
    assert sorted(h["evidence"][0]["data"]["n"] for h in handoffs) == list(range(7))
    assert sorted(h["evidence"][0]["id"] for h in handoffs) == sorted(f"seq-{a.seq}" for a in acks)
    fired = d.decisions("raw", "fired")
    assert len(fired) == 7 and all("assigned by watchd: the publisher's id" in f["reason"] for f in fired)
    assert {f["event_id"] for f in fired} == {f"seq-{a.seq}" for a in acks}
    r = await d.cli("explain", "--event", f"seq-{acks[0].seq}")
    assert r.returncode == 0 and "id is missing" in r.stdout, r.stdout + r.stderr


# ---- the other edges: `watchd emit` and an agent's emit tool ------------------------------------------------------


def emit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "watchd", "emit", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["watchd.job.backup.done", "summary=ok"],
            "error: bad subject 'watchd.job.backup.done': subjects under watchd.",
        ),
        (["a" * 5000], "error: bad subject 'aaaa"),
        (["job.done", "--id", "has space"], "error: bad event id 'has space'"),
        (["job.done", "--id", "k" * 300], "over 128 characters"),
        (["job.done", "--json", '{"a": NaN}'], "error: --json is not valid JSON"),
        (["job.done", "--json", '{"a": ' * 100 + "1" + "}" * 100], "error: --json is nested deeper than 64 levels"),
    ],
)
def test_watchd_emit_refuses_with_one_line_before_connecting(tmp_path: Path, args: list[str], fragment: str) -> None:
    r = emit(tmp_path, *args)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert fragment in lines[0], r.stderr
    assert len(lines) <= 2 and len(lines[0]) < 300


async def test_watchd_emit_reads_field_values_strictly(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = await daemon_factory({"raw.toml": RAW_WATCH}).start()
    r = await d.cli("emit", "raw.fields", "nan=NaN", "inf=Infinity", "n=5", "ok=true", "--id", "fields-1")
    assert r.returncode == 0, r.stderr
    (h,) = await until(lambda: d.handoffs("raw"), what="the emitted event to fire")
    assert h["evidence"][0]["data"] == {"nan": "NaN", "inf": "Infinity", "n": 5, "ok": True}


async def _publish_as(url: str, subject: str) -> str:
    nc = await bus.connect(url, name="outside-tool")
    try:
        ack = await bus.publish_raw(nc.jetstream(), subject, envelope(id="forged-1"), "forged-1", timeout_s=1)
        return f"stored as seq {ack.seq}"
    except NatsUnavailable as exc:
        return exc.message
    finally:
        await nc.close()


async def test_the_publish_role_cannot_forge_watchd_events_and_watchd_backup_still_can(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"raw.toml": RAW_WATCH}).start()
    r = await d.cli("nats", "url", "--role", "publish")
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip()
    before = await d.stream_last_seq()
    for subject in ("watchd.events.watchd.job.backup.done", "watchd.events.watchd.job.canary.failed"):
        assert "did not store" in await _publish_as(url, subject)
    assert await d.stream_last_seq() == before
    assert (await _publish_as(url, "watchd.events.raw.ok")).startswith("stored")
    r = await d.cli("backup", "--json")  # the command publishes watchd.job.backup.done for the daemon
    assert r.returncode == 0 and json.loads(r.stdout)["published"] == "watchd.job.backup.done", r.stderr


def tool_use(subject: Any, data: Any = None) -> dict[str, Any]:
    args: dict[str, Any] = {"subject": subject} if data is None else {"subject": subject, "data": data}
    return {"type": "tool_use", "name": "emit", "id": "tu_1", "input": args}


HANDOFF = msgspec.convert(
    {
        "id": "h_1",
        "watch": "w",
        "watch_version": 1,
        "kind": "match",
        "key": None,
        "target": "agent.triage",
        "trigger": "watch",
        "reason": "r",
        "fired_at": TIME,
    },
    Handoff,
)


async def test_the_agent_emit_tool_checks_as_every_edge_does(nats_client: Client) -> None:
    js = nats_client.jetstream()
    await bus.ensure_streams(js)
    tools = Toolbox(AnthropicAgent(model="m", tools=["emit"]), agent="agent.triage", js=js)
    refused = [
        (tool_use("WATCHD.job.canary.failed"), "reserved"),
        (tool_use("watchd"), "reserved"),
        (tool_use("a.b", {"x": float("nan")}), "a number JSON cannot represent"),
        (tool_use("a.b", deep(MAX_DATA_DEPTH + 1)), "nested deeper than 64 levels"),
        (tool_use("a.b", {"x": "\ud800"}), "cannot be written as JSON"),
        (tool_use("a.b\n"), "bad subject"),
    ]
    for n, (block, fragment) in enumerate(refused):
        outcome = await tools.run(HANDOFF, n, block, 1_790_000_000.0)
        assert outcome.block.get("is_error") is True and fragment in outcome.block["content"], outcome.block
    assert (await js.stream_info(bus.EVENTS_STREAM)).state.messages == 0
    outcome = await tools.run(HANDOFF, 9, tool_use("mail.triaged", {"ok": True}), 1_790_000_000.0)
    assert "published mail.triaged" in outcome.block["content"]
    assert (await js.stream_info(bus.EVENTS_STREAM)).state.messages == 1
