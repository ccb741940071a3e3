"""What a worker does when a workflow step ends: send the rest of its chain, its
callbacks or errbacks, and count chord members (``chord_done.lua``), all in the
output flushed with the step's ack (see ``fastq.workflow`` for the message tree
and the exactly-once argument).

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from typing import Any

import msgspec

from .. import states
from .._speedups import Request
from ..exceptions import ChordError
from ..messages import ResultMeta, encode_hook
from ..typed import call_signature
from ..workflow import CHAIN, CHORD, GROUP, WORKFLOW_KEYS, accumulating, as_list, freeze, launch, node_of, task_ids, task_nodes

log = logging.getLogger("fastq.worker")

_pack = msgspec.msgpack.Encoder(enc_hook=encode_hook).encode
_unpack = msgspec.msgpack.Decoder().decode


def is_workflow(options: dict | None) -> bool:
    return bool(options) and any(k in options for k in WORKFLOW_KEYS)


class _Step:
    """One finished message's workflow follow-up, written to the worker's output."""

    def __init__(self, ex, d, msg, out) -> None:
        self.ex = ex
        #: a message delivered before whose delivery ended without an ack
        self.redelivered = d is not None and d.dc > 0
        self.app = ex.app
        self.msg = msg
        self.out = out
        self.parent_id = msg.id
        self.root_id = msg.root_id or msg.id
        self.acted: set[str] = set()  #: chords decided in this step (acted on once)

    # --- sending follow-ups --------------------------------------------------

    def send(self, node: dict, args: tuple, rest: list | None = None, error_of: str | None = None) -> None:
        """Add the commands that start ``node`` to the output; a node that cannot
        be sent (bad options, unencodable arguments...) fails instead."""
        try:
            cmds = launch(self.app, node, args, None, rest or (), self.parent_id, self.root_id)
        except Exception as exc:  # noqa: BLE001 - a bad signature must not stop the worker
            log.error("Workflow step after %s[%s] could not be sent: %s: %s", self.msg.task, self.msg.id,
                      type(exc).__name__, exc)
            err = _error(exc, None)
            self.fail_tree(node, err, error_of or self.msg.id)
            for r in rest or ():
                self.fail_tree(r, err, error_of or self.msg.id)
            return
        for c in cmds:
            self.out.add_command(c, 1)

    def errback(self, eb: dict, failed_id: str, exc: BaseException, tb: str | None, request: Any) -> None:
        """Run one errback as Celery does. Old style, ``(task_id)``: sent as a task
        with the failed task's id. New style, ``(request, exc, traceback)`` (a task
        of this worker whose function takes more than one argument): called here,
        at once, with the failed task's request."""
        task = self.app.tasks.get(eb.get("task"))
        if task is None or not _new_style(task, eb):
            self.send(eb, (failed_id,))
            return
        args = list(eb.get("args") or ())
        if not eb.get("immutable"):
            args = [request, exc, tb, *args]
        try:
            task(*args, **(eb.get("kwargs") or {}))
        except Exception as eb_exc:  # noqa: BLE001 - an errback's failure must not stop the worker
            log.error("Errback %s of %s failed: %s: %s", task.name, failed_id, type(eb_exc).__name__, eb_exc)

    def store_failure(self, task_id: str, name: str | None, err: tuple) -> None:
        exc_type, exc_module, exc_message, tb = err
        meta = ResultMeta(states.FAILURE, None, exc_type, exc_module, exc_message, tb, time.time(), None,
                          self.ex.hostname, 0, name)
        self.ex._store(self.out, task_id, meta)

    def fail_tree(self, node: dict, err: tuple, failed_id: str, inside: set | None = None) -> None:
        """Every task of a tree that will never run fails with ``err``; a header
        task of an enclosing (already sent) chord fails that chord."""
        inside = set() if inside is None else inside
        kind = node.get("subtask_type")
        if kind is None:
            opts = node["options"]
            self.store_failure(opts["task_id"], node["task"], err)
            cid = opts.get("chord")
            if cid is not None and cid not in inside:
                self.chord(cid, "fail", opts.get("group_index"), _pack(list(err[:3])), err, failed_id)
            return
        if kind == CHORD:
            inside.add(node["options"]["chord_id"])
            for t in node["header"]:
                self.fail_tree(t, err, failed_id, inside)
            self.fail_tree(node["body"], err, failed_id, inside)
            return
        for t in node["tasks"]:
            self.fail_tree(t, err, failed_id, inside)

    # --- chords ------------------------------------------------------------------

    def chord(self, cid: str, mode: str, index: Any, value: bytes, err: tuple | None, failed_id: str) -> None:
        """Record a header result (or failure) and act on the decision, if this call made it."""
        if cid in self.acted:
            return
        # Synchronous: the answer decides what goes into this flush. A lost
        # connection raises (ConnectionError): the message stays unacked and runs again.
        # A redelivered message may replay the decision its first run made and
        # died before acting on; a first delivery is a duplicate copy and may not.
        reply = self.app.broker.chord_done(cid, mode, -1 if index is None else int(index), value,
                                           int(self.app.conf.result_expires), self.redelivered)
        code = reply[0]
        if code == -1:
            log.warning("Chord %s is unknown (expired or never sent): header result of %s[%s] dropped",
                        cid, self.msg.task, self.msg.id)
            return
        if code == 0:
            return
        self.acted.add(cid)
        body = _unpack(reply[1])
        if code == 1:
            try:
                values = [_unpack(v) for v in reply[2]]
            except Exception as exc:  # noqa: BLE001
                self.fail_tree(body, _error(exc, None), failed_id)
            else:
                self.send(body, (values,), error_of=failed_id)
        else:
            if err is None:
                stored = _unpack(reply[2]) if reply[2] else ["ChordError", "fastq.exceptions", "a header task failed"]
                err = (*stored[:3], None)
            log.info("Chord %s failed: header task %s raised %s: %s", cid, failed_id, err[0], err[2])
            self.fail_tree(body, err, failed_id)
            # As Celery: the body's errbacks get the body's id (it failed without
            # running), and new-style ones a ChordError naming the header task.
            exc = ChordError(f"Dependency {failed_id} raised {err[0]}({err[2]!r})")
            for eb, owner in errbacks_of(body):
                self.errback(eb, owner["options"]["task_id"], exc, None, _stand_in_request(owner, self.ex.hostname))
        # After the body (or its failure): the decision was acted on; a replay is a
        # no-op from now on, so the body and the results are no longer needed.
        for cmd in self.app.broker.chord_sent_commands(cid):
            self.out.add_command(cmd, 1)


def errbacks_of(node: dict) -> list[tuple[dict, dict]]:
    """The errbacks of a tree that never runs (a chord body failed by its header),
    each with the task node that carries it, as Celery calls them: a chain's once
    (its errbacks, pushed down to every step, are deduplicated by their frozen id),
    a chord's body's, and a group's once per member (a chord's errback pushed down
    to the tasks of a group body runs for each)."""
    kind = node.get("subtask_type")
    if kind == GROUP:
        return [pair for t in node["tasks"] for pair in errbacks_of(t)]
    if kind == CHAIN:
        return errbacks_of(node["tasks"][0])
    if kind == CHORD:
        return errbacks_of(node["body"])
    seen: dict[str, tuple[dict, dict]] = {}
    for eb in node["options"].get("link_error") or ():
        seen.setdefault(_first_id(eb), (eb, node))
    return list(seen.values())


def _first_id(node: dict) -> str:
    return next(task_ids(node))[0]


def _new_style(task, eb: dict) -> bool:
    """Celery's test (5.7): an errback is new-style, called as ``(request, exc,
    traceback)``, when its function takes more than one positional argument (or
    ``*args``) beyond those a mutable signature already holds."""
    def header(*a, **kw):
        """Stands for the task's function, with its signature."""

    try:
        header.__signature__ = call_signature(task.fn, task.bind)
        args, kwargs = eb.get("args") or (), eb.get("kwargs") or {}
        params = inspect.signature(header).parameters.values()
        if not eb.get("immutable") and (args or kwargs):
            with contextlib.suppress(TypeError, ValueError):  # a call that cannot bind: as declared
                params = inspect.signature(functools.partial(header, *args, **kwargs)).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > 1 or any(p.kind == p.VAR_POSITIONAL for p in params)


class _StandInMessage:
    """The fields of a task that never ran (a chord body failed by its header),
    so that its errbacks get a request as Celery's stand-in context has it."""

    def __init__(self, node: dict) -> None:
        opts = node["options"]
        self.id = opts["task_id"]
        self.task = node["task"]
        self.args = list(node.get("args") or ())
        self.kwargs = dict(node.get("kwargs") or {})
        self.options = opts
        self.parent_id = opts.get("parent_id")
        self.root_id = opts.get("root_id")
        self.retries = 0
        self.eta = self.expires = None
        self.priority = opts.get("priority")
        self.headers = {}


def _stand_in_request(node: dict, hostname: str):
    return Request(_StandInMessage(node), hostname)


def _error(exc: BaseException, tb: str | None) -> tuple:
    cls = type(exc)
    return cls.__name__, cls.__module__, str(exc), tb


def replacement(app, msg, sig) -> list[bytes]:
    """The commands that send ``sig`` in place of the task of ``msg``
    (``Task.replace``, as Celery does it): its last task takes the task's id and
    its callbacks and errbacks; then the rest of the task's chain runs, or, for a
    chord header task, the replacement's result counts in that chord. A group
    becomes a chord with ``fastq.accumulate`` as body, so its list of results is
    one result under the task's id."""
    opts = msg.options or {}
    tree = _accumulated(sig.as_dict())
    mine = tree.get("options") or {}
    own = {"task_id": msg.id}
    for key in ("link", "link_error"):
        if opts.get(key):  # the task's callbacks join the replacement's own, not replace them
            own[key] = [*as_list(mine.get(key)), *opts[key]]
    tree["options"] = {**mine, **own}
    member = (opts["chord"], opts.get("group_index")) if opts.get("chord") is not None else None
    frozen = freeze(tree, None, member)
    # Celery's request.replaced_task_nesting: each replacement's tasks count one more.
    level = Request(msg, None).replaced_task_nesting + 1
    for node in task_nodes(frozen):
        node["options"]["headers"] = {**(node["options"].get("headers") or {}), "replaced_task_nesting": level}
    rest = list(opts.get("chain") or ())
    if rest:
        _then(frozen, rest)
    return launch(app, frozen, (), {}, (), msg.id, msg.root_id or msg.id)


def _accumulated(node: dict) -> dict:
    """A group, or a chain ending in one, ends in a chord whose body gives the list."""
    kind = node.get("subtask_type")
    if kind == GROUP:
        return accumulating(node)
    if kind == CHAIN and node["tasks"]:
        return {**node, "tasks": [*node["tasks"][:-1], _accumulated(node_of(node["tasks"][-1]))]}
    return node


def _then(node: dict, rest: list) -> None:
    """Run ``rest`` (frozen chain steps) after the frozen tree ``node``'s result."""
    kind = node.get("subtask_type")
    if kind is None:
        node["options"]["chain"] = [*(node["options"].get("chain") or ()), *rest]
    elif kind == CHAIN:
        _then(node["tasks"][-1], rest)
    elif kind == CHORD:
        _then(node["body"], rest)
    else:  # _accumulated() turned every group that ends a replacement into a chord
        raise TypeError("a group cannot be followed by chain steps")


def on_success(ex, d, msg, retval, out) -> None:
    """A workflow task succeeded: callbacks, the next chain step, the chord count."""
    opts = msg.options
    if not is_workflow(opts):
        return
    step = _Step(ex, d, msg, out)
    cid = opts.get("chord")
    if cid is not None:
        try:
            value = _pack(retval)
        except Exception as exc:  # noqa: BLE001 - msgspec raises several types
            err = _error(TypeError(f"chord header result of {msg.task!r} cannot be serialized: {exc}"), None)
            step.chord(cid, "fail", opts.get("group_index"), _pack(list(err[:3])), err, msg.id)
        else:
            step.chord(cid, "ok", opts.get("group_index"), value, None, msg.id)
    for cb in opts.get("link") or ():
        step.send(cb, (retval,))
    rest = opts.get("chain")
    if rest:
        step.send(rest[0], (retval,), rest[1:])


def on_failure(ex, d, msg, exc: BaseException, tb: str | None, out) -> None:
    """A workflow task failed for good: errbacks run, the rest of its chain fails,
    and so does its chord."""
    opts = msg.options
    if not is_workflow(opts):
        return
    step = _Step(ex, d, msg, out)
    err = _error(exc, tb)
    cid = opts.get("chord")
    if cid is not None:
        step.chord(cid, "fail", opts.get("group_index"), _pack(list(err[:3])), err, msg.id)
    errbacks = opts.get("link_error") or ()
    if errbacks:
        request = Request(msg, ex.hostname, d, ex.queue_of.get(d.stream) if d is not None else None)
        for eb in errbacks:
            step.errback(eb, msg.id, exc, tb, request)
    for node in opts.get("chain") or ():
        step.fail_tree(node, err, msg.id)


