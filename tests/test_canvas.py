"""Workflows (canvas): signatures, chains, groups, chords, callbacks, map/starmap/
chunks and subtasks, run by real ``fastq worker`` processes on Redis.

Run: FASTQ_TEST_DB=13 FASTQ_TEST_LEDGER_DB=14 python -m pytest tests/test_canvas.py -q
"""

from __future__ import annotations

import time

import msgspec
import pytest

from conftest import wait_for
from fastq import GroupResult, chain, chord, group, signature, states
from fastq.canvas import Signature
from fastq.exceptions import NotRegistered

# --- building (no worker) -------------------------------------------------------------------


def test_signature_forms_and_options(capp):
    add = capp.add
    # Given the signature forms
    s = add.s(2, 2)
    si = add.si(2, 2)
    full = add.signature((1,), {"y": 2}, {"queue": "other"})
    by_name = signature("canvas.add", args=(3,), kwargs={"y": 4})
    # Then they carry what they were given
    assert (s.task, s.args, s.immutable) == ("canvas.add", (2, 2), False)
    assert si.immutable
    assert (full.args, full.kwargs, full.options) == ((1,), {"y": 2}, {"queue": "other"})
    assert (by_name.task, by_name.args, by_name.kwargs) == ("canvas.add", (3,), {"y": 4})
    # ... partial application prepends, and an immutable signature ignores the parent's result
    assert add.s(2).clone((5,)).args == (5, 2)
    assert si.clone((5,)).args == (2, 2)
    # ... set() updates options in place; clone() copies
    c = s.clone()
    assert s.set(queue="q1", countdown=5) is s and s.options == {"queue": "q1", "countdown": 5}
    assert c.options == {}
    # ... and a whole workflow survives msgpack, the wire format
    flow = chain(add.s(1, 1), group(add.s(1), capp.mul.s(2)), capp.tsum.s())
    again = Signature.from_dict(msgspec.msgpack.decode(msgspec.msgpack.encode(flow.as_dict())), app=capp.app)
    assert again.as_dict() == flow.as_dict()


def test_set_takes_immutable_as_celerys_does(capp):
    sig = capp.add.s(1).set(immutable=True, queue="q")
    assert sig.immutable and sig.options == {"queue": "q"}
    assert not sig.set(immutable=False).immutable


def test_composing_something_that_is_not_a_signature_raises_type_error(capp):
    add = capp.add
    # When a workflow is built from something that is not a signature, it fails at once
    with pytest.raises(TypeError, match="signature"):
        add.s(1, 1) | 5
    with pytest.raises(TypeError, match="signature"):
        chain(add.s(1, 1), "canvas.add")
    with pytest.raises(TypeError, match="signature"):
        group([add.s(1, 1), lambda: 1])
    with pytest.raises(TypeError, match="signature"):
        chord([add.s(1, 1)], 42)
    with pytest.raises(TypeError, match="signature"):
        chord([add.s(1, 1)])(object())
    with pytest.raises(TypeError, match="signature"):
        group([add.s(1, 1)]) | None
    with pytest.raises(TypeError, match="unknown apply_async option"):
        chain(add.s(1, 1), add.s(2).set(colour="red")).apply_async()


def test_chord_done_script_counts_each_header_once_and_decides_once(capp, r):
    """chord_done.lua on its own: idempotent per header index, one decision, which
    only the deciding index gets again (a redelivered message) until ``sent``."""
    from fastq.broker.keys import chord_keys
    from fastq.broker.scripts import SCRIPTS

    def call(cid, mode, idx, value=b"\x01", redelivered=True):
        meta, res = chord_keys("fastq:", cid)
        return SCRIPTS.chord_done(r, [meta, res], [mode, idx, value, 60, "1" if redelivered else "0"])

    for cid in ("c-ok", "c-fail"):
        r.hset(chord_keys("fastq:", cid)[0], mapping={"n": 3, "body": b"B", "state": "open"})
    # Given a chord of 3: a header task that runs twice counts once
    assert call("c-ok", "ok", 0)[0] == 0
    assert call("c-ok", "ok", 0)[0] == 0
    assert call("c-ok", "ok", 1, b"\x02")[0] == 0
    # When the last index arrives, that call completes it, with the results in order
    done = call("c-ok", "ok", 2, b"\x03")
    assert done == [1, b"B", [b"\x01", b"\x02", b"\x03"]]
    # ... other indexes (and failures) after that decide nothing
    assert call("c-ok", "ok", 1)[0] == 0
    assert call("c-ok", "fail", 0)[0] == 0
    # ... a second copy of the deciding message (first delivery) does not get it:
    # the copy that decided is still acting on it
    assert call("c-ok", "ok", 2, redelivered=False)[0] == 0
    # ... the deciding index, redelivered before its decision was sent, gets it again
    assert call("c-ok", "ok", 2)[0] == 1
    r.hset(chord_keys("fastq:", "c-ok")[0], "sent", 1)
    assert call("c-ok", "ok", 2)[0] == 0
    # A failure decides once too; later results do nothing
    assert call("c-fail", "fail", 1, b"E") == [2, b"B", b"E"]
    assert call("c-fail", "fail", 0)[0] == 0
    assert call("c-fail", "ok", 0)[0] == 0
    assert call("c-fail", "ok", 1, redelivered=False)[0] == 0
    assert call("c-fail", "ok", 1)[0] == 2
    # An unknown chord is reported as such
    assert call("c-none", "ok", 0) == [-1]


# --- running -------------------------------------------------------------------------------


def test_signatures_send_with_delay_apply_async_and_set(capp, cworker):
    cworker("-Q", "default,other")
    add = capp.add
    # When signatures are sent in each form
    assert add.s(2, 2).delay().get(timeout=30) == 4
    assert add.s(2).delay(5).get(timeout=30) == 7
    assert add.s(2, 2).apply_async().get(timeout=30) == 4
    assert signature("canvas.add", args=(1, 2), app=capp.app).delay().get(timeout=30) == 3
    # ... to the queue set() names, with a countdown
    r = add.s(3, 3).set(queue="other", countdown=0.2).apply_async()
    assert r.get(timeout=30) == 6
    who = capp.who_parent.s().set(queue="other").apply_async()
    assert who.get(timeout=30)["id"] == who.id


def test_chain_passes_results_through_three_steps(capp, cworker):
    cworker()
    add, mul = capp.add, capp.mul
    # Given a chain of three steps
    res = (add.s(2, 2) | add.s(4) | mul.s(10)).apply_async()
    # Then each result is the first argument of the next, and get() returns the last
    assert res.get(timeout=30) == 80
    assert res.parent.get(timeout=30) == 8 and res.parent.parent.get(timeout=30) == 4
    # ... chain() is the same, an immutable step ignores its parent's result, args go to the first step
    assert chain(add.s(1, 1), add.si(10, 10), mul.s(3)).apply_async().get(timeout=30) == 60
    assert chain(add.s(1), add.s(2), add.s(3)).apply_async((100,)).get(timeout=30) == 106
    # ... each step records the previous one as its parent, the first as its root
    res = (add.s(1, 1) | capp.noop.si() | capp.who_parent.si()).delay()
    info = res.get(timeout=30)
    assert info["parent_id"] == res.parent.id and info["root_id"] == res.parent.parent.id
    # ... and a task sent from outside any task is its own root (Celery's request.root_id)
    first = capp.who_parent.delay().get(timeout=30)
    assert first["root_id"] == first["id"] and first["parent_id"] is None
    eager = capp.who_parent.apply().get()
    assert eager["root_id"] == eager["id"]


def test_a_failed_step_stops_the_chain_and_fails_its_result(capp, cworker, ledger):
    cworker()
    add = capp.add
    # Given a chain whose second step fails, with an errback
    res = chain(add.s(1, 1), capp.fail.s(), capp.record.s("steps", "third"), add.s(1)).apply_async(
        link_error=capp.errback.s("errbacks"))
    # Then the chain's result fails with that error
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=30)
    assert res.state == states.FAILURE and res.parent.state == states.FAILURE
    # ... the later steps never ran, and the errback ran once with the failed task's id
    failed_id = res.parent.parent.id
    wait_for(lambda: ledger.lrange("errbacks", 0, -1), 30, message="the errback")
    assert ledger.lrange("errbacks", 0, -1) == [failed_id.encode()]
    assert not ledger.hgetall("steps")
    assert res.parent.parent.parent.get(timeout=30) == 2


def test_on_error_returns_the_signature_so_the_chain_is_sent(capp, cworker, ledger):
    cworker()
    # Given a chain with an errback added by on_error (Celery returns the signature itself)
    sig = chain(capp.add.s(1, 1), capp.fail.s())
    assert sig.on_error(capp.errback.s("on-error")) is sig
    res = sig.apply_async()
    # Then the chain ran (its second step failed) and the errback got the failed task's id
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=30)
    wait_for(lambda: ledger.lrange("on-error", 0, -1), 30, message="the errback")
    assert ledger.lrange("on-error", 0, -1) == [res.id.encode()]
    assert res.parent.get(timeout=30) == 2
    # ... and on a single signature too
    one = capp.fail.s()
    assert one.on_error(capp.errback.s("on-error-1")) is one
    bad = one.delay()
    wait_for(lambda: ledger.lrange("on-error-1", 0, -1), 30, message="the errback")
    assert ledger.lrange("on-error-1", 0, -1) == [bad.id.encode()]


def test_errbacks_get_celerys_arguments_old_and_new_style(capp, cworker, ledger):
    cworker()
    # Given a failing task with an old-style errback (one argument left: the task id)
    # and a new-style one (request, exc, traceback)
    res = capp.fail.apply_async(link_error=[capp.errback.s("old"), capp.errback_new.s("new")])
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=30)
    # Then the old one got the task id, the new one its request, its exception and a traceback
    wait_for(lambda: ledger.lrange("old", 0, -1) and ledger.lrange("new", 0, -1), 30, message="both errbacks")
    assert ledger.lrange("old", 0, -1) == [res.id.encode()]
    assert ledger.lrange("new", 0, -1) == [res.id.encode(), b"ValueError", b"tb"]


def test_a_chord_failed_by_its_header_calls_the_bodys_errbacks_with_the_bodys_id(capp, cworker, ledger):
    """Celery's arguments: the body failed without running, and its errbacks say so."""
    cworker()
    # Given a chord whose header has a failing task, with both kinds of errback
    sig = chord([capp.add.s(1, 1), capp.fail.s(), capp.add.s(2, 2)], capp.tsum.s())
    sig.link_error(capp.errback.s("chord-old"))
    sig.link_error(capp.errback_new.s("chord-new"))
    body_id = sig.body.freeze().id
    res = sig.apply_async()
    assert res.id == body_id
    # Then the chord's result raises the header's error
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=30)
    # ... each errback ran once, with the body's id (a ChordError for the new style)
    wait_for(lambda: ledger.lrange("chord-old", 0, -1) and ledger.lrange("chord-new", 0, -1), 30,
             message="both errbacks")
    assert ledger.lrange("chord-old", 0, -1) == [body_id.encode()]
    assert ledger.lrange("chord-new", 0, -1) == [body_id.encode(), b"ChordError", b"no tb"]
    # Given a group body (its first task with an errback of its own) and a chord body in a group
    first = capp.tsum.s()
    first.link_error(capp.errback.s("own"))
    body = group(first, capp.tsum.s(), chord([capp.add.si(2, 2)], capp.tsum.s()))
    res = chord([capp.add.si(1, 1), capp.fail.si()], body).apply_async(link_error=capp.errback.s("each"))
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=30)
    # Then, as Celery, the chord's errback runs for each task of the group (once for the
    # inner chord: for its body), and the first task's own errback runs too
    ids = [t.id for t in res.results[:2]] + [res.results[2].id]
    wait_for(lambda: ledger.llen("each") == 3 and ledger.llen("own") == 1, 30, message="the errbacks")
    assert sorted(ledger.lrange("each", 0, -1)) == sorted(i.encode() for i in ids)
    assert ledger.lrange("own", 0, -1) == [ids[0].encode()]


def test_a_task_replaced_by_a_task_chain_group_or_chord_gives_their_result_under_its_id(capp, cworker, r):
    cworker()
    rw = capp.replace_with
    # When tasks replace themselves with each kind of signature
    results = {kind: rw.delay(3, kind) for kind in ("task", "chain", "group", "chord")}
    # Then each task's own id carries the replacement's result (a group's as a list)
    assert results["task"].get(timeout=30) == 4
    assert results["chain"].get(timeout=30) == 40
    assert results["group"].get(timeout=30) == [3, 4, 5]
    assert results["chord"].get(timeout=30) == 12
    # A replacement that fails fails the task's result; a bad one fails the task
    with pytest.raises(ValueError, match="replacement boom"):
        rw.delay(3, "fail").get(timeout=30)
    with pytest.raises(TypeError, match="takes a signature"):
        rw.delay(3, "not a signature").get(timeout=30)
    # Called outside a worker, replace() runs the replacement here
    assert rw(3, "chain") == 40


def test_a_replaced_task_hands_on_its_chain_callbacks_and_chord_place(capp, cworker, ledger):
    cworker()
    rw = capp.replace_with
    # In a chain: the rest of the chain runs after the replacement, with its result
    res = chain(capp.add.s(1, 1), rw.s("chain"), capp.add.s(5)).apply_async()
    assert res.get(timeout=30) == 35
    # ... a callback of the replaced task gets the replacement's result
    rw.apply_async((1, "group"), link=capp.record.s("replaced-link", "cb"))
    wait_for(lambda: ledger.hget("replaced-link", "cb"), 30, message="the callback")
    # In a chord's header: each replacement's result counts in the chord, once
    res = chord([rw.s(i, "task") for i in range(5)] + [rw.s(10, "chord")], capp.tsum.s()).apply_async()
    assert res.get(timeout=30) == sum(i + 1 for i in range(5)) + 33
    # ... a replacement chain that fails, with an errback of its own, inside a chain with
    # an errback: the rest of the chain fails, and both errbacks run (Celery's test)
    c = chain(capp.add.s(1, 1), rw.s("failing chain with errback"), capp.add.s(5))
    c.link_error(capp.record.si(0, "replaced-errbacks", "outer"))
    with pytest.raises(ValueError, match="inner boom"):
        c.apply_async().get(timeout=30)
    wait_for(lambda: ledger.hgetall("replaced-errbacks") == {b"inner": b"1", b"outer": b"1"}, 30,
             message="both errbacks")
    # ... and a chain ending in a replaced task ends with the replacement's value
    assert chain(capp.add.s(2, 2), rw.s("group")).apply_async().get(timeout=30) == [4, 5, 6]


def test_a_task_that_raises_ignore_is_acked_without_a_state(capp, cworker):
    cworker()
    res = capp.ignore_me.delay()
    broker = capp.app.broker
    wait_for(lambda: broker.queue_totals(["default"])["default"] == (1, 0), 30, message="the message to be acked")
    assert res.state == states.PENDING


def test_header_errbacks_with_task_allow_error_cb_on_chord_header(capp, cworker, ledger):
    """Celery's setting: the chord's errback is linked to each header task too (immutable)."""
    cworker()
    capp.app.backend.ensure_chords_allowed()  # Celery's check: fastq's backend always runs chords
    capp.app.conf.task_allow_error_cb_on_chord_header = True
    try:
        sig = chord([capp.fail.s(), capp.fail.s(), capp.add.s(1, 1)], capp.tsum.s())
        sig.link_error(capp.record.si(0, "header-eb", "runs"))
    finally:
        capp.app.conf.task_allow_error_cb_on_chord_header = False
    with pytest.raises(ValueError, match="boom"):
        sig.apply_async().get(timeout=30)
    # Then it ran for each failed header task, and once for the failed chord
    wait_for(lambda: ledger.hget("header-eb", "runs") == b"3", 30, message="three errback runs")
    # ... and without the setting, only for the chord
    plain = chord([capp.fail.s(), capp.fail.s()], capp.tsum.s())
    plain.link_error(capp.record.si(0, "body-eb", "runs"))
    with pytest.raises(ValueError, match="boom"):
        plain.apply_async().get(timeout=30)
    wait_for(lambda: ledger.hget("body-eb", "runs") == b"1", 30, message="one errback run")


def test_frozen_workflows_keep_their_ids_when_sent(capp, cworker, ledger):
    """Celery's chain/group/chord .freeze(): the ids handed out are the ones used."""
    cworker()
    add = capp.add
    c = chain(add.si(1, 1), add.s(2), add.s(3))
    frozen = c.freeze()
    assert c.id == frozen.id and frozen.parent.parent is not None
    res = c.apply_async()
    assert res.id == frozen.id and res.parent.id == frozen.parent.id and res.get(timeout=30) == 7
    g = group(add.si(i, i) for i in range(3))
    gfrozen = g.freeze("my-group-id")
    assert gfrozen.id == "my-group-id" and g.apply_async().id == "my-group-id"
    assert [r.id for r in g.apply_async().results] == [r.id for r in gfrozen.results]
    ch = chord([add.si(1, 1), add.si(2, 2)], capp.tsum.s())
    cfrozen = ch.freeze()
    assert ch.apply_async().id == cfrozen.id and cfrozen.get(timeout=30) == 6
    # ... and applied again, a frozen chord runs again (a new run with the same ids, as in Celery)
    ch2 = chord([add.si(1, 1), add.si(2, 2)], capp.record.si(1, "frozen-again", "body"))
    ch2.freeze()
    for n in (1, 2):
        assert ch2.apply_async().get(timeout=30) == 1
        wait_for(lambda n=n: ledger.hget("frozen-again", "body") == str(n).encode(), 30, message=f"body run {n}")
    # A workflow changed after freeze() is frozen again when sent (new ids)
    c2 = chain(add.si(1, 1), add.s(1))
    first = c2.freeze()
    changed = c2.set(queue="default").apply_async()
    assert changed.get(timeout=30) == 3 and changed.id != first.id


def test_a_header_task_adds_tasks_to_its_chord(capp, cworker):
    cworker()
    grow = capp.grow_chord
    # Tasks added by a header task run, and the body waits for and gets their results
    res = chord([grow.s([1, 2, 3], 4, "tasks")], capp.identity.s()).apply_async()
    assert sorted(res.get(timeout=30)) == [0, 5, 6, 7]
    # ... a chord added counts as one result
    res = chord([grow.s([1, 2, 3], 4, "chord"), capp.add.s(1, 1)], capp.identity.s()).apply_async()
    assert sorted(res.get(timeout=30)) == [0, 2, 18]
    # Outside a chord it is refused
    with pytest.raises(ValueError, match="not member of any chord"):
        grow.delay([1], 1, "alone").get(timeout=30)


def test_a_callback_linked_to_a_group_runs_once(capp, cworker, ledger):
    """Celery's group.link: linked (immutable) to the first task, so it runs once."""
    cworker()
    g = group(capp.identity.si(42), capp.identity.si(1337))
    g.link(capp.record.si(0, "group-link", "runs"))
    assert g.delay().get(timeout=30) == [42, 1337]
    wait_for(lambda: ledger.hget("group-link", "runs") == b"1", 30, message="the callback")
    # ... so does a chord's link when its body is a group; the body's tasks keep their own
    first = capp.tsum.s()
    first.link(capp.record.si(0, "body-link", "own"))
    res = chord([capp.add.si(1, 1), capp.add.si(2, 2)], group(first, capp.tsum.s())).apply_async(
        link=capp.record.si(0, "body-link", "chord"))
    assert res.get(timeout=30) == [6, 6]
    wait_for(lambda: ledger.hgetall("body-link") == {b"own": b"1", b"chord": b"1"}, 30, message="the callbacks")
    time.sleep(0.5)  # a second run of the chord's callback would show by now
    assert ledger.hgetall("body-link") == {b"own": b"1", b"chord": b"1"}


def test_signatures_travel_as_arguments_and_results(capp, cworker):
    """Celery allows a signature as a task's argument or return value: it travels
    as its dict form, and signature() rebuilds the same kind of canvas."""
    cworker()
    assert chain(capp.make_sig.s("chord"), capp.rebuild.s()).apply_async().get(timeout=60) == ["chord", 2]
    assert chain(capp.make_sig.s("chain"), capp.rebuild.s()).apply_async().get(timeout=60) == ["chain", 4]
    assert capp.rebuild.delay(capp.add.s(2, 3)).get(timeout=60) == ["Signature", 5]
    assert capp.rebuild.delay(group([capp.add.s(1, 1), capp.add.s(2, 2)])).get(timeout=60) == ["group", [2, 4]]
    stored = capp.make_sig.delay("task").get(timeout=30)
    assert signature(stored, app=capp.app) == capp.add.s(1, 2)


def test_group_result_api(capp, cworker):
    cworker()
    add = capp.add
    # Given a group
    g = group(add.s(i, i) for i in range(20)).apply_async()
    # Then get() returns the values in order, and the rest of the GroupResult agrees
    assert g.get(timeout=30) == [2 * i for i in range(20)]
    assert g.ready() and g.successful() and not g.failed()
    assert g.completed_count() == 20 and len(g.results) == 20
    # ... save()/restore() give it back by id
    g.save()
    back = GroupResult.restore(g.id, app=capp.app)
    assert [r.id for r in back.results] == [r.id for r in g.results]
    assert back.get(timeout=30) == [2 * i for i in range(20)]
    assert GroupResult.restore("no-such-group", app=capp.app) is None
    # A group with a failure
    bad = group([add.s(1, 1), capp.fail.s(), add.s(2, 2)]).apply_async()
    wait_for(bad.ready, 30, message="the group to finish")
    assert bad.failed() and not bad.successful() and bad.completed_count() == 2
    values = bad.get(timeout=30, propagate=False)
    assert values[0] == 2 and isinstance(values[1], ValueError) and values[2] == 4
    with pytest.raises(ValueError):
        bad.get(timeout=30)


def test_chord_forms(capp, cworker):
    cworker()
    add, tsum = capp.add, capp.tsum
    # chord(header, body), chord(header)(body), group | task, chord | task
    assert chord([add.s(i, i) for i in range(10)], tsum.s()).apply_async().get(timeout=30) == 90
    assert chord(add.s(i, i) for i in range(10))(tsum.s()).get(timeout=30) == 90
    res = (group(add.s(i, i) for i in range(10)) | tsum.s()).apply_async()
    assert res.get(timeout=30) == 90
    assert res.parent.get(timeout=30) == [2 * i for i in range(10)]
    assert (chord([add.s(1, 1)], tsum.s()) | add.s(100)).apply_async().get(timeout=30) == 102
    # ... an empty header runs the body with []
    assert chord([], tsum.s()).apply_async().get(timeout=30) == 0


def test_nested_workflows(capp, cworker):
    cworker()
    add, mul, tsum = capp.add, capp.mul, capp.tsum
    # a chain containing a group in the middle (a chord) and at the end
    assert (add.s(1, 1) | group(add.s(1), add.s(2)) | tsum.s() | mul.s(10)).apply_async().get(timeout=30) == 70
    assert (add.s(1, 1) | group(add.s(1), add.s(2))).apply_async().get(timeout=30) == [3, 4]
    # a group containing chains
    g = group(chain(add.s(i, i), mul.s(10)) for i in range(5)).apply_async()
    assert g.get(timeout=30) == [20 * i for i in range(5)]
    # a chord whose header holds chains and a nested group, whose body is a chain
    res = chord([chain(add.s(1, 1), mul.s(2)), group(add.s(1, 1), add.s(2, 2)), add.s(5, 5)],
                chain(tsum.s(), add.s(1))).apply_async()
    assert res.get(timeout=30) == 4 + 2 + 4 + 10 + 1
    # a chord in a chord's header, and a chord inside a chain
    inner = chord([add.s(1, 1), add.s(2, 2)], tsum.s())
    assert chord([inner, add.s(10, 10)], tsum.s()).apply_async().get(timeout=30) == 26
    assert chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s()), mul.s(2)).apply_async().get(timeout=30) == 14
    # a group of groups is unrolled, as Celery does; a chain ending in a group stays nested
    assert group(group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)).apply_async().get(timeout=30) == [2, 4, 6]
    nested = group(add.si(1, 10), group(add.si(1, 100), group(add.si(1, 1000), add.si(1, 2000))))
    assert nested.apply_async().get(timeout=30) == [11, 101, 1001, 2001]
    assert nested.apply().get() == [11, 101, 1001, 2001]
    tail = group(add.si(1, 0), chain(add.si(2, 0), group(add.si(3, 0), add.si(4, 0))))
    assert tail.apply_async().get(timeout=30) == [1, [3, 4]]
    # ... and in a chord's header, a chain ending in a group gives its list as one result
    header = [add.si(2, 0), chain(add.si(2, 0), group(add.si(3, 0), add.si(4, 0)))]
    assert chord(header, capp.identity.s()).apply_async().get(timeout=30) == [2, [3, 4]]


def test_empty_chains_and_groups_are_steps_that_do_nothing(capp, cworker):
    cworker()
    add, tsum = capp.add, capp.tsum
    # Given empty chains and groups inside workflows, they are skipped, as in Celery
    assert chain(group(add.s(2, 2), add.s(4, 4)), group(), group()).apply_async().get(timeout=30) == [4, 8]
    assert chain(group(add.s(2, 2), add.s(4, 4)), group(), chain(), tsum.s()).apply_async().get(timeout=30) == 12
    # ... the arguments go past leading empty steps to the first real task
    assert chain(group(), add.s(10)).apply_async((5,)).get(timeout=30) == 15
    assert chain(chain(group(), add.s(10)), add.s(20)).apply_async((5,)).get(timeout=30) == 35
    # ... in a group or a chord's header, only the real tasks count
    res = group(chain(), add.s(1, 2), chain(), add.s(3, 4)).apply_async()
    assert len(res.results) == 2 and res.get(timeout=30) == [3, 7]
    assert chord([chain()], tsum.s()).apply_async().get(timeout=30) == 0
    assert chord([chain(), add.s(1, 1), group(), add.s(2, 2)], tsum.s()).apply_async().get(timeout=30) == 6
    # A chain with nothing to run is still an error at the call
    with pytest.raises(ValueError, match="empty chain"):
        chain(group(), chain()).apply_async()


def test_a_one_task_group_in_a_chain_is_that_task(capp, cworker):
    cworker()
    add = capp.add
    # Given groups of one task in chains: Celery unrolls them (its issue 1656), so the
    # next step gets the task's value, not a list of one
    assert chain(group(add.s(0, 0)), add.s(-1)).apply_async().get(timeout=30) == -1
    assert (add.s(1, 1) | group(add.s(1))).apply_async().get(timeout=30) == 3
    # ... and the group's options go to its task
    assert chain(add.si(1, 1), group(add.s(1), countdown=0.1)).apply_async().get(timeout=30) == 3
    # A group of one outside a chain stays a group
    assert group(add.s(2, 2)).apply_async().get(timeout=30) == [4]
    # And eager runs unroll it the same way
    assert chain(group(add.s(0, 0)), add.s(-1)).apply().get() == -1
    assert (add.s(1, 1) | group(add.s(1))).apply().get() == 3


def test_a_signature_reads_as_celerys_dict(capp):
    sig = capp.add.si(1, 2)
    assert dict(sig) == sig.as_dict() and sig["task"] == "canvas.add" and sig["args"] == [1, 2]


def test_results_give_their_ancestry_as_tuples_and_equal_their_ids(capp, cworker):
    cworker()
    add, tsum = capp.add, capp.tsum
    # Given a chain of a task, two groups (a chord) and two tasks
    res = chain(add.si(1, 0), group(add.s(1), add.s(2)), group(tsum.s(), tsum.s()), tsum.s(), add.s(1)).apply_async()
    ids: list = []

    def walk(tup):
        if tup is not None:
            (node_id, parent), members = tup
            ids.append(node_id)
            for m in members or ():
                walk(m)
            walk(parent)

    # Then as_tuple() (Celery's shape) names every task and group result once
    walk(res.as_tuple())
    assert len(ids) == len(set(ids)) == 9, ids
    assert res.get(timeout=30) == 11
    # ... and a result equals its id, so an id can be looked up in a group's results
    header = res.parent.parent
    assert header.results[1].id in header.results and "nope" not in header.results


def test_replacements_count_their_nesting_and_requests_show_celerys_fields(capp, cworker):
    cworker()
    # Given a task that replaces itself twice (each replacement sent with app_id="relay")
    seen = capp.nesting.apply_async((2,), app_id="first").get(timeout=30)
    # Then each run saw its nesting level, that it ran in a worker, and its message's app_id
    assert seen == [[0, False, "first"], [1, False, "relay"], [2, False, "relay"]]
    # ... and run eagerly, the request says so
    assert capp.nesting.apply((0,)).get() == [[0, True, None]]


def test_chord_with_a_failed_header_task(capp, cworker, ledger):
    cworker()
    add = capp.add
    # Given a chord whose header has a failure, with an errback on the chord
    res = chord([add.s(1, 1), capp.fail.s(message="header boom"), add.s(2, 2)],
                capp.record_sum.s("failed-chord")).apply_async(link_error=capp.errback.s("chord-errbacks"))
    # Then the chord's result fails with that task's error
    with pytest.raises(ValueError, match="header boom"):
        res.get(timeout=30)
    assert res.state == states.FAILURE
    # ... the errback ran once, with the body's id (as in Celery: the body failed), and
    # the body never ran
    wait_for(lambda: ledger.lrange("chord-errbacks", 0, -1), 30, message="the errback")
    assert ledger.lrange("chord-errbacks", 0, -1) == [res.id.encode()]
    assert res.parent.get(timeout=30, propagate=False)[0] == 2
    assert not ledger.hget("failed-chord", "body")


def test_unknown_task_fails_the_workflow_step(capp, cworker, ledger):
    cworker()
    add = capp.add
    nope = signature("canvas.no_such_task", args=(1,), app=capp.app)
    # A chord whose header names an unknown task fails, it does not hang
    res = chord([add.s(1, 1), nope], capp.record_sum.s("unknown")).apply_async()
    with pytest.raises(NotRegistered, match="no_such_task"):
        res.get(timeout=30)
    # ... as does a chain with an unknown step, and a chord with an unknown body
    with pytest.raises(NotRegistered, match="no_such_task"):
        chain(add.s(1, 1), nope.clone(), add.s(1)).apply_async().get(timeout=30)
    with pytest.raises(NotRegistered, match="no_such_task"):
        chord([add.s(1, 1)], nope.clone()).apply_async().get(timeout=30)
    assert not ledger.hget("unknown", "body")


def test_link_and_link_error_callbacks(capp, cworker, ledger):
    cworker()
    add = capp.add
    # A callback gets the result; an errback gets the failed task's id
    r = add.apply_async((2, 3), link=capp.record.s("links", "ok"))
    assert r.get(timeout=30) == 5
    wait_for(lambda: ledger.hget("links", "ok"), 30, message="the callback")
    bad = capp.fail.apply_async(link=capp.record.s("links", "never"), link_error=capp.errback.s("errs"))
    with pytest.raises(ValueError):
        bad.get(timeout=30)
    wait_for(lambda: ledger.lrange("errs", 0, -1), 30, message="the errback")
    assert ledger.lrange("errs", 0, -1) == [bad.id.encode()]
    # ... a callback may be a workflow, and link() adds one to a signature
    s = add.s(1, 1)
    s.link(chain(add.s(10), capp.record.s("links", "chain")))
    s.delay()
    wait_for(lambda: ledger.hget("links", "chain"), 30, message="the chained callback")
    assert ledger.hget("links", "never") is None


def test_map_starmap_chunks(capp, cworker):
    cworker()
    assert capp.identity.map([1, 2, 3]).delay().get(timeout=30) == [1, 2, 3]
    assert capp.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=30) == [3, 7]
    res = capp.add.chunks([(i, i) for i in range(10)], 3).apply_async()
    assert isinstance(res, GroupResult) and res.get(timeout=30) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]
    assert len(capp.add.chunks([(i, i) for i in range(10)], 5).group()) == 2
    assert (capp.add.chunks([(1, 1), (2, 2)], 1) | capp.identity.s()).apply_async().get(timeout=30) == [[2], [4]]


def test_subtasks_record_parent_and_children(capp, cworker):
    cworker("--prefetch", "1")
    # Given a task that sends two subtasks with delay()
    r = capp.spawn.delay(2)
    ids = r.get(timeout=30)
    # Then the result lists them as children, and they know their parent and root
    assert [c.id for c in r.children] == ids
    info = r.children[0].get(timeout=30)
    assert info["parent_id"] == r.id and info["root_id"] == r.id
    # Waiting for a subtask inside a task is refused by default ...
    with pytest.raises(RuntimeError, match="deadlock"):
        capp.wait_child.delay().get(timeout=30)
    # ... and allowed with disable_sync_subtasks=False (two pool processes here)
    assert capp.wait_child.delay(allow=True).get(timeout=60) == 42


def test_ten_thousand_task_chord_completes_once(capp, cworker, ledger):
    cworker()
    n = 10_000
    # Given a chord of 10,000 header tasks
    res = chord((capp.add.s(i, 1) for i in range(n)), capp.record_sum.s("big")).apply_async()
    # Then the body runs once, with all 10,000 results
    assert res.get(timeout=150) == sum(range(1, n + 1))
    assert ledger.get("big:len") == b"10000"
    assert ledger.hget("big", "body") == b"1"
    # And a 10,000-task group returns every value in order
    g = group(capp.add.s(i, i) for i in range(n)).apply_async()
    assert g.get(timeout=150) == [2 * i for i in range(n)]


def test_chord_completes_once_when_header_tasks_run_twice(capp, cworker, ledger):
    """At-least-once: every header message sent twice (as a producer retry may)."""
    from fastq import workflow

    tree = workflow.freeze(chord([capp.record.s(i, "dup", str(i)) for i in range(50)],
                                 capp.record_sum.s("dup-body")).as_dict())
    cmds = workflow.launch(capp.app, tree)
    workflow.publish(capp.app, cmds)
    workflow.publish(capp.app, cmds)
    cworker()
    res = workflow.result_of(capp.app, tree)
    assert res.get(timeout=60) == sum(range(50))
    wait_for(lambda: sum(int(v) for v in ledger.hvals("dup")) == 100, 30, message="every header to run twice")
    assert ledger.hget("dup-body", "body") == b"1"


def test_worker_killed_during_a_chord_still_completes_it_once(capp, cworker, ledger):
    env = {"FASTQ_TEST_LEASE": "3"}
    # Given a chord of 40 header tasks, one slow (it completes the chord), on one worker
    header = [capp.record.s(i, "kill", str(i), 0.05) for i in range(39)]
    header.append(capp.record.s(39, "kill", "slow", 4.0))
    a = cworker(env=env)
    res = chord(header, capp.record_sum.s("kill-body")).apply_async()
    # When the whole worker is killed while the slow task runs
    wait_for(lambda: len(ledger.hkeys("kill")) >= 39, 60, message="the fast header tasks")
    a.kill_all()
    # ... and another worker takes over (the lease recovers the unacked messages)
    cworker(env=env)
    # Then the chord completes, once, with every header result
    assert res.get(timeout=90) == sum(range(40))
    assert ledger.hget("kill-body", "body") == b"1"
    assert ledger.get("kill-body:len") == b"40"
    assert all(int(v) >= 1 for v in ledger.hvals("kill")) and len(ledger.hkeys("kill")) == 40


def test_worker_killed_after_completing_a_chord_but_before_sending_the_body(capp, cworker, ledger, r):
    """The narrow window: the header task that completed the chord's count dies
    before its output (body, ack) is flushed. Its redelivery gets the decision again."""
    from fastq.broker.keys import chord_keys

    env = {"FASTQ_TEST_LEASE": "3"}
    # Given a chord whose last header task to finish also has a callback that takes
    # the worker a while to send (a 50,000-task group, to a queue nobody reads)
    slow_link = group(capp.noop.s(i).set(queue="nowhere") for i in range(50_000))
    header = [capp.record.s(i, "window", str(i)) for i in range(5)]
    header.append(capp.record.s(5, "window", "last", 1.0).set(link=slow_link))
    a = cworker(env=env)
    res = chord(header, capp.record_sum.s("window-body")).apply_async()
    meta, _ = chord_keys("fastq:", res.parent.id)
    # When the worker is killed once the chord is complete, before the body went out
    wait_for(lambda: r.hget(meta, "state") == b"done", 60, interval=0.002, message="the chord to complete")
    a.kill_all()
    assert r.hget(meta, "sent") is None, "killed too late to test the window"
    assert ledger.hget("window-body", "body") is None
    # ... and another worker recovers the unacked header message
    cworker(env=env)
    # Then the body runs, once
    assert res.get(timeout=90) == sum(range(6))
    assert ledger.hget("window-body", "body") == b"1"
    assert r.hget(meta, "sent") == b"1"


def test_celerys_shortcuts_tasks_as_signatures_single_group_and_immutable_maps(capp, cworker):
    cworker()
    add, tsum = capp.add, capp.tsum
    # Given tasks themselves in a chord's header: each is its signature without arguments
    res = chord([add.s(0, 1)], chord([tsum, tsum], chain(tsum.s(), group(add.s(8), add.s(16)), tsum.s()))).apply_async()
    assert res.get(timeout=30) == 2 + 8 + 2 + 16
    # A group of one chain ending in a group gives the inner group's result (Celery's special case)
    assert group(add.s(1, 2) | group(add.s(1), add.s(2))).apply_async().get(timeout=30) == [4, 5]
    # map/starmap ignore the previous step's result in a chain, as Celery's
    assert chain(add.si(1, 1), add.starmap([(1, 1), (2, 2)])).apply_async().get(timeout=30) == [2, 4]
    # A task replaced by an empty group gives an empty list
    assert capp.replace_with.delay(0, "empty group").get(timeout=30) == []


def test_a_generator_header_is_sent_as_it_yields(capp, cworker, ledger, r):
    cworker()
    record = capp.record

    def header(n, seen):
        for i in range(n):
            if i == n - 1:  # the first header task ran before the generator ended
                wait_for(lambda: ledger.hget("lazy", "0"), 30, message="the first header task")
                seen.append(True)
            yield record.s(i, "lazy", str(i))

    # Given a chord whose header is a generator
    seen: list = []
    res = chord(header(4, seen), capp.tsum.s())()
    # Then each header task went out as it was yielded, and the body got every result
    assert res.get(timeout=30) == 0 + 1 + 2 + 3 and seen == [True]
    assert [r.get(timeout=30) for r in res.parent.results] == [0, 1, 2, 3]
    # ... a header whose tasks all finished before the generator ended completes when sealed
    meta, results = (f"{capp.app.conf.key_prefix}chord:{{sealed-chord}}:{k}" for k in ("m", "r"))

    def finished_first():
        yield from (record.s(i, "sealed", str(i)) for i in range(3))
        wait_for(lambda: r.hlen(results) == 3, 30, message="the header results")

    assert chord(finished_first(), capp.tsum.s()).apply_async(chord_id="sealed-chord").get(timeout=30) == 3
    assert r.hget(meta, "by") == b"seal"
    # ... an empty generator runs the body with no results; a failed header task fails the chord
    assert chord(iter(()), capp.tsum.s())().get(timeout=30) == 0
    with pytest.raises(ValueError, match="lazy boom"):
        chord((capp.fail.si(message="lazy boom") for _ in range(2)), capp.tsum.s())().get(timeout=30)


def test_a_task_returning_a_result_handle_stores_its_as_tuple(capp, cworker):
    cworker()
    # Given a task that sends a chain and returns its result handle
    value = capp.send_chain.delay().get(timeout=30)
    # Then its value is the handle's as_tuple(), as Celery stores it
    (last_id, parent), members = value
    assert members is None and isinstance(last_id, str) and parent[0][0] != last_id
    assert capp.app.AsyncResult(last_id).get(timeout=30) == 3
