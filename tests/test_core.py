"""The hot-path core: the compiled ``fastq._core`` and its pure-Python twin
``fastq._core_py`` must behave the same. Every test runs against both."""

from __future__ import annotations

import importlib
import os
import random
import time
import uuid

import pytest
import redis

from conftest import MAIN_REDIS, TEST_DB, wait_for

NO_EXTENSIONS = bool(os.environ.get("FASTQ_NO_EXTENSIONS"))


def _import_compiled():
    last = None
    for _ in range(5):  # the extension may be being rebuilt right now
        try:
            return importlib.import_module("fastq._core")
        except ImportError as exc:
            last = exc
            time.sleep(1)
    if NO_EXTENSIONS:
        pytest.skip(f"fastq._core is not built and FASTQ_NO_EXTENSIONS is set ({last})")
    pytest.fail(f"the compiled core fastq._core cannot be imported: {last}")


@pytest.fixture(params=["python", "compiled"])
def core(request):
    """One implementation of the core: ``_core_py`` or ``_core``."""
    if request.param == "python":
        return importlib.import_module("fastq._core_py")
    return _import_compiled()


@pytest.fixture
def both():
    return importlib.import_module("fastq._core_py"), _import_compiled()


# --- which core is in use ------------------------------------------------------------------


def test_speedups_uses_the_compiled_core_unless_disabled():
    # Given fastq as installed
    import fastq._speedups as speedups

    # Then the compiled core is in use, unless FASTQ_NO_EXTENSIONS asks otherwise
    if NO_EXTENSIONS:
        assert speedups.COMPILED is False
    else:
        assert speedups.COMPILED is True


def test_the_twins_say_which_they_are(core):
    # Given either implementation
    # Then COMPILED tells them apart
    assert core.COMPILED is (core.__name__ == "fastq._core")


def test_the_twins_have_the_same_names(both):
    # Given both implementations
    py, compiled = both
    # Then the compiled one has every public name of the Python one
    names = ["COMPILED", "Delivery", "Output", "Request", "Runner", "TokenBucket", "current_request", "pack_command",
             "parse_fetch_reply", "parse_xread_reply"]
    for name in names:
        assert hasattr(py, name), name
        assert hasattr(compiled, name), name


# --- pack_command ----------------------------------------------------------------------------


def test_pack_command_encodes_resp(core):
    # Given a command of bytes, str and int arguments
    # When it is packed
    packed = core.pack_command((b"SET", "key", b"value", 12))
    # Then it is a RESP array of bulk strings
    assert packed == b"*4\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n$2\r\n12\r\n"


@pytest.mark.parametrize(("arg", "encoded"), [
    (b"", b""),
    (b"a\r\nb\x00c", b"a\r\nb\x00c"),
    ("h\u00e9llo \u2603", "h\u00e9llo \u2603".encode()),
    (0, b"0"),
    (-42, b"-42"),
    (2**63 - 1, b"9223372036854775807"),
    (2.5, b"2.5"),
    (0.1, b"0.1"),
    (bytearray(b"ba"), b"ba"),
    (memoryview(b"mv"), b"mv"),
])
def test_pack_command_argument_types(core, arg, encoded):
    # Given one argument of a supported type
    # When it is packed
    packed = core.pack_command([b"ECHO", arg])
    # Then it is sent as its bytes, with their exact length
    assert packed == b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (len(encoded), encoded)


@pytest.mark.parametrize("arg", [None, object(), {"a": 1}, [1, 2]])
def test_pack_command_refuses_other_types(core, arg):
    # Given an argument Redis cannot take
    # When it is packed
    # Then TypeError says so
    with pytest.raises(TypeError, match="cannot send"):
        core.pack_command((b"ECHO", arg))


def test_pack_command_is_understood_by_redis(core, redis_url):
    # Given a raw connection to the test DB
    conn = redis.Connection(host="127.0.0.1", port=6379, db=TEST_DB, protocol=2)
    conn.connect()
    key = f"fastq-core-test:{uuid.uuid4()}"
    value = b"binary\r\n\x00value \xff"
    try:
        # When packed commands are sent in one write
        conn.send_packed_command((core.pack_command((b"SET", key, value)) + core.pack_command((b"GET", key))
                                  + core.pack_command((b"INCRBYFLOAT", key + ":n", 2.5)),))
        # Then Redis runs each of them
        assert conn.read_response() == b"OK"
        assert conn.read_response() == value
        assert conn.read_response() == b"2.5"
    finally:
        conn.disconnect()


# --- cluster routing ---------------------------------------------------------------------------


def test_key_slot_matches_redis_clusters_hash(core):
    from redis.crc import key_slot as redis_key_slot

    # Given keys with and without hash tags, empty tags, odd bytes and long keys
    rng = random.Random(7)
    keys = [b"", b"a", b"foo", b"{user1000}.following", b"foo{}{bar}", b"foo{{bar}}zap", b"foo{bar}{zap}",
            b"{}", b"}{", b"fastq:{default~3}:s", "\u00fc{k}".encode(), b"k" * 10000]
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(2000)]
    # Then the slot is the one Redis Cluster computes
    for key in keys:
        assert core.key_slot(key) == redis_key_slot(key), key


def test_split_packed_finds_each_commands_span_and_routing_key(core):
    pack = core.pack_command
    # Given packed commands of every routing kind
    commands = [
        (b"SET", b"fastq:r:1", b"v\r\n*2\r\n"),  # a value that looks like RESP
        (b"xack", b"fastq:{default}:s", b"g", b"1-0"),
        (b"EVALSHA", b"sha", 2, b"fastq:{q}:s", b"fastq:{q}:d", b"arg"),
        (b"evalsha", b"sha", 0, b"arg"),
        (b"EVALSHA_RO", b"sha", b"x", b"k"),  # numkeys not a number: no key
        (b"XREADGROUP", b"GROUP", b"g", b"c", b"COUNT", 10, b"streams", b"fastq:{a}:s", b"fastq:{a}:s1", b">", b">"),
        (b"XREAD", b"STREAMS"),  # no stream named
        (b"PUBLISH", b"fastq:events", b"x"),
        (b"WAIT", 1, 100),
        (b"PING",),
        (b"GET",),
    ]
    data = b"".join(pack(c) for c in commands)
    # When they are split
    spans = core.split_packed(data)
    # Then each span is one command, with the key and slot a cluster routes it by
    assert [data[s:e] for s, e, _, _ in spans] == [pack(c) for c in commands]
    keys = [k for _, _, k, _ in spans]
    assert keys == [b"fastq:r:1", b"fastq:{default}:s", b"fastq:{q}:s", None, None, b"fastq:{a}:s", None,
                    None, None, None, None]
    slots = [slot for _, _, _, slot in spans]
    assert slots[:3] == [core.key_slot(k) for k in keys[:3]]
    assert slots[8] == core.WAIT_SLOT
    assert slots[9] == core.KEYLESS


@pytest.mark.parametrize("data", [b"GET x\r\n", b"*1\r\n$3\r\nGE", b"*2\r\n$3\r\nGET\r\n", b"*x\r\n",
                                  b"*1\r\n$-1\r\n", b"*1\r\n$3\r\nGETXX"])
def test_split_packed_refuses_what_is_not_packed_commands(core, data):
    # Given bytes that are not whole packed commands
    # When they are split
    # Then ValueError says so
    with pytest.raises(ValueError, match="packed command"):
        core.split_packed(data)


def test_the_twins_split_the_same_way(both):
    py, compiled = both
    # Given random commands (random names, arities, keys and binary values)
    rng = random.Random(11)
    names = [b"SET", b"get", b"EVALSHA", b"EVAL_RO", b"XREADGROUP", b"xread", b"WAIT", b"PING", b"INFO", b"ZADD"]
    words = [b"STREAMS", b"streams", b"0", b"2", b"{t}", b"", b"\r\n", b"k{x}y"]

    def word():
        return rng.choice(words) if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(rng.randrange(8)))

    for _ in range(300):
        data = b"".join(py.pack_command([rng.choice(names), *(word() for _ in range(rng.randrange(6)))])
                        for _ in range(rng.randrange(1, 6)))
        # Then both find the same spans, keys and slots
        assert py.split_packed(data) == compiled.split_packed(data)


# --- parsing fetched batches -------------------------------------------------------------------


def _fields(d) -> tuple:
    return d.stream, d.entry_id, d.field, d.payload, d.dc, d.message


def test_parse_fetch_reply(core):
    # Given fetch.lua's reply shape: [[key_index, [[id, [field, value, ...]], ...]], ...]
    streams = ["q:ret", "q:s9", "q:s"]
    reply = [
        [1, [[b"1-0", [b"p", b"payload-1", b"dc", b"2"]]]],
        [3, [[b"2-0", [b"j", b"payload-2"]], [b"3-0", []]]],
    ]
    # When it is parsed
    out = core.parse_fetch_reply(reply, streams)
    # Then each entry is a Delivery naming its stream, id, field, payload and delivery count
    assert [_fields(d) for d in out] == [
        ("q:ret", b"1-0", b"p", b"payload-1", 2, None),
        ("q:s", b"2-0", b"j", b"payload-2", 0, None),
        ("q:s", b"3-0", b"", b"", 0, None),  # an entry deleted while pending
    ]


@pytest.mark.parametrize("empty", [None, []])
def test_parse_fetch_reply_of_nothing(core, empty):
    # Given an empty reply
    # Then there are no deliveries
    assert core.parse_fetch_reply(empty, ["q:s"]) == []


def test_parse_xread_reply(core):
    # Given an XREADGROUP reply shape: [[key, [[id, [field, value, ...]], ...]], ...]
    by_name = {b"q:s": "q:s", b"q:s5": "q:s5"}
    reply = [
        [b"q:s5", [[b"5-1", [b"p", b"x", b"dc", b"7"]]]],
        [b"q:s", [[b"6-0", [b"p", b"y"]]]],
    ]
    # When it is parsed
    out = core.parse_xread_reply(reply, by_name)
    # Then the stream names are mapped back to str keys
    assert [_fields(d) for d in out] == [
        ("q:s5", b"5-1", b"p", b"x", 7, None),
        ("q:s", b"6-0", b"p", b"y", 0, None),
    ]
    assert core.parse_xread_reply(None, by_name) == []
    assert core.parse_xread_reply([], by_name) == []


def test_parse_real_fetch_and_xread_replies(core, redis_url):
    # Given a queue with two messages, read through fastq's fetch script and XREADGROUP
    from fastq.broker.keys import CONSUMER_GROUP, Keys
    from fastq.broker.scripts import SCRIPTS

    client = redis.Redis.from_url(f"{MAIN_REDIS}/{TEST_DB}")
    qk = Keys("fastq:").queue("coretest")
    for key in qk.fetch_order:
        client.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
    id1 = client.xadd(qk.streams[3], {"p": b"three"})
    id2 = client.xadd(qk.streams[0], {"j": b"zero", "dc": 1})
    id3 = client.xadd(qk.streams[0], {"p": b"later"})
    # When the fetch script takes two and XREADGROUP (raw reply) the rest
    reply = SCRIPTS.fetch(client, qk.fetch_order, [CONSUMER_GROUP, "consumer-1", 2])
    fetched = core.parse_fetch_reply(reply, qk.fetch_order)
    conn = redis.Connection(host="127.0.0.1", port=6379, db=TEST_DB, protocol=2)
    conn.connect()
    try:
        conn.send_packed_command((core.pack_command(
            (b"XREADGROUP", b"GROUP", CONSUMER_GROUP, b"consumer-2", b"COUNT", 10, b"STREAMS", qk.streams[0], b">")),))
        raw = conn.read_response(disable_decoding=True)
    finally:
        conn.disconnect()
    read = core.parse_xread_reply(raw, {k.encode(): k for k in qk.fetch_order})
    # Then the higher priority came first, and every field is parsed
    assert [_fields(d) for d in fetched] == [
        (qk.streams[3], id1, b"p", b"three", 0, None),
        (qk.streams[0], id2, b"j", b"zero", 1, None),
    ]
    assert [_fields(d) for d in read] == [(qk.streams[0], id3, b"p", b"later", 0, None)]


# --- TokenBucket ------------------------------------------------------------------------------


def test_token_bucket_starts_full_and_empties(core):
    # Given a bucket of 3 tokens refilling at 1 per second
    b = core.TokenBucket(1.0, 3)
    assert b.rate == 1.0 and b.capacity == 3.0
    # When tokens are taken
    taken = [b.consume() for _ in range(4)]
    # Then three are there, the fourth is not
    assert taken == [True, True, True, False]
    wait = b.expected_wait()
    assert 0 < wait <= 1.0


def test_token_bucket_refills_over_time(core):
    # Given an empty bucket refilling quickly
    b = core.TokenBucket(1000.0, 1)
    assert b.consume()
    # When time passes
    # Then a token comes back, and never more than the capacity
    wait_for(lambda: b.consume(), 10, interval=0.01, message="a refilled token")
    time.sleep(0.05)
    assert b.consume()
    assert not b.consume(1.5)
    assert b.tokens <= b.capacity


def test_token_bucket_with_zero_rate_waits_forever(core):
    # Given a bucket that never refills
    b = core.TokenBucket(0, 1)
    assert b.consume()
    # Then it stays empty
    assert not b.consume()
    assert b.expected_wait() == float("inf")


def test_token_bucket_without_refill_takes_added_tokens(core):
    # Given a bucket without refill (the local side of a cluster-wide limit)
    b = core.TokenBucket(100.0, 5, refill=False)
    # Then it starts empty
    assert b.tokens == 0.0
    assert not b.consume()
    assert b.expected_wait(1) == pytest.approx(0.01)
    # When tokens are added, never beyond its capacity
    b.add(2)
    assert b.consume() and b.consume() and not b.consume()
    b.add(50)
    assert b.tokens == 5.0
    assert b.expected_wait(5) == 0.0
    assert b.consume(5)


@pytest.mark.parametrize(("rate", "capacity"), [(-1, 1), (1, 0), (1, -2)])
def test_token_bucket_refuses_bad_arguments(core, rate, capacity):
    # Given / When a bucket with a negative rate or no capacity
    # Then it is refused
    with pytest.raises(ValueError):
        core.TokenBucket(rate, capacity)


# --- Output ------------------------------------------------------------------------------------


def test_output_collects_acks_and_commands(core):
    # Given an empty Output
    out = core.Output()
    assert not out
    assert (out.acks, out.commands, out.replies, out.count) == ({}, [], 0, 0)
    # When acks and commands are added
    out.ack("q:s", b"1-0")
    out.ack("q:s", b"2-0")
    out.ack("q:s5", b"3-0")
    out.add_command(b"*1\r\n$4\r\nPING\r\n")
    out.add_command(b"cmd2", 2)
    # Then they are grouped by stream and counted
    assert out
    assert out.acks == {"q:s": [b"1-0", b"2-0"], "q:s5": [b"3-0"]}
    assert out.commands == [b"*1\r\n$4\r\nPING\r\n", b"cmd2"]
    assert out.replies == 3
    assert out.count == 3


def test_a_final_state_is_one_result_list_with_its_expiry(core, r):
    """The one spelling of the final-result write (pack_result, Output.store_result):
    what AsyncResult waits on (BLMOVE) and what expires."""
    out = core.Output()
    out.store_result(b"fastq-test:r:t1", b"blob", 60)
    assert out.results == core.pack_result(b"fastq-test:r:t1", b"blob", 60)
    assert out.result_replies == 2
    r.delete("fastq-test:r:t1")
    conn = r.connection_pool.get_connection()
    try:
        conn.send_packed_command(out.results)
        assert [conn.read_response() for _ in out.results] == [1, 1]
    finally:
        r.connection_pool.release(conn)
    assert r.lrange("fastq-test:r:t1", 0, -1) == [b"blob"]
    assert 0 < r.ttl("fastq-test:r:t1") <= 60
    r.delete("fastq-test:r:t1")


def test_output_take_hands_over_and_empties(core):
    # Given an Output with content
    out = core.Output()
    out.ack("q:s", b"1-0")
    out.add_command(b"cmd")
    # When its content is taken
    taken = out.take()
    # Then the new Output has it all and the old one is empty
    assert isinstance(taken, core.Output)
    assert taken.acks == {"q:s": [b"1-0"]} and taken.commands == [b"cmd"]
    assert (taken.replies, taken.count) == (1, 1)
    assert not out
    assert (out.acks, out.commands, out.replies, out.count) == ({}, [], 0, 0)
    # ... and the old one is reusable
    out.ack("q:s", b"9-0")
    assert out.acks == {"q:s": [b"9-0"]}
    assert taken.acks == {"q:s": [b"1-0"]}


def test_output_with_only_commands_is_truthy(core):
    # Given an Output with a command but no ack
    out = core.Output()
    out.add_command(b"cmd", 0)
    # Then it still has something to send
    assert out
    assert out.replies == 0 and out.count == 0


# --- the twins agree ------------------------------------------------------------------------


def test_the_twins_pack_the_same_bytes(both):
    # Given many commands
    py, compiled = both
    commands = [
        (b"PING",),
        ("XADD", "fastq:{default}:s", "*", b"p", b"\x93\x01\x02"),
        [b"EVALSHA", "abc", 3, -1, 0.25, 1e-07, 1e20, bytearray(b"x"), memoryview(b"y"), "\u00fc"],
        (b"SET", b"k" * 10000, b"v" * 100000),
    ]
    # Then both pack them identically
    for cmd in commands:
        assert py.pack_command(cmd) == compiled.pack_command(cmd)


def test_the_twins_parse_the_same_deliveries(both):
    # Given fetch and xread replies
    py, compiled = both
    fetch_reply = [[2, [[b"1-1", [b"p", b"a", b"dc", b"3"]], [b"1-2", [b"j", b"b", b"x", b"y"]]]]]
    xread_reply = [[b"k2", [[b"9-9", [b"p", b"c"]], [b"9-10", []]]]]
    # Then both produce the same deliveries
    for mod_a, mod_b in [(py, compiled)]:
        a = [_fields(d) for d in mod_a.parse_fetch_reply(fetch_reply, ["k1", "k2"])]
        b = [_fields(d) for d in mod_b.parse_fetch_reply(fetch_reply, ["k1", "k2"])]
        assert a == b
        a = [_fields(d) for d in mod_a.parse_xread_reply(xread_reply, {b"k2": "k2"})]
        b = [_fields(d) for d in mod_b.parse_xread_reply(xread_reply, {b"k2": "k2"})]
        assert a == b


def test_request_shows_celerys_fields_from_the_message(core):
    from fastq.messages import Message

    # Given a message sent with app_id and reply_to, replaced twice, and one with malformed headers
    msg = Message("id-1", "t", priority=3, options={"reply_to": "box"},
                  headers={"app_id": "web", "replaced_task_nesting": 2})
    req = core.Request(msg, "host", delivery=None)
    # Then the request reads them as Celery's does
    assert (req.replaced_task_nesting, req.reply_to, req.is_eager) == (2, "box", False)
    assert req.properties == {"correlation_id": "id-1", "reply_to": "box", "priority": 3, "delivery_mode": 2,
                              "app_id": "web"}
    assert core.Request(msg, "eager").is_eager
    bad = core.Request(Message("id-2", "t", headers={"replaced_task_nesting": "x"}), "host")
    assert (bad.replaced_task_nesting, bad.reply_to, bad.properties["app_id"]) == (0, None, None)


def test_request_reads_stamps_and_survives_malformed_ones(core):
    from fastq.messages import Message

    # Given a stamped message (fastq.stamping), one naming a stamp it lacks, and malformed ones
    req = core.Request(Message("id-1", "t", headers={"stamped_headers": ["m", "n"], "stamps": {"m": "42", "x": 1}}),
                       "host")
    # Then the request shows the named stamps, None for a missing value, as Celery's
    assert (req.stamped_headers, req.stamps) == (["m", "n"], {"m": "42", "n": None})
    for headers in ({"stamped_headers": "m", "stamps": {"m": 1}}, {"stamped_headers": [1, None], "stamps": []},
                    {"stamps": {"m": 1}}, None):
        bad = core.Request(Message("id-2", "t", headers=headers), "host")
        assert (bad.stamped_headers, bad.stamps) == ([], {})
    odd = core.Request(Message("id-3", "t", headers={"stamped_headers": ["m"], "stamps": "not a dict"}), "host")
    assert (odd.stamped_headers, odd.stamps) == (["m"], {"m": None})
