"""Workflows on the wire: the message tree, freezing it, and sending its first steps.

What a worker does when a step ends is in ``fastq.worker.steps``; the built-in
``fastq.map``/``fastq.starmap`` tasks are in ``fastq.builtin_tasks``.

A workflow travels as a tree of plain dicts (msgspec-encodable) inside the
messages themselves:

- task:  ``{"task", "args", "kwargs", "options", "immutable"}``
- chain: ``{"subtask_type": "chain", "tasks": [...]}``
- group: ``{"subtask_type": "group", "tasks": [...], "options": {"group_id"}}``
- chord: ``{"subtask_type": "chord", "header": [...], "body": {...}, "options": {"chord_id"}}``

``freeze`` gives every task its id before anything is sent (so the producer
holds the final result at once, and a re-sent step keeps its ids), pushes a
composite's options down to its tasks, and normalizes: nested chains are
flattened, a group followed by more steps becomes a chord, and whatever follows
a chord moves into its body. After that, groups and chords only end chains, and
a task message carries what runs after it in ``options``:

- ``chain``: the rest of its chain (sent with this task's result prepended);
- ``link`` / ``link_error``: callbacks (the errback gets the failed task's id);
- ``chord`` + ``group_index``: it is header task ``group_index`` of that chord.

Exactly once, on an at-least-once worker:

- Chain steps and callbacks are added to the worker's output in the same flush
  as the ack, before it: a crash before the flush redelivers the step (which
  re-sends them, with the same frozen ids), a flush that went out acked it.
- Chords: ``chord_done.lua`` records a header result in the chord's hash
  (HSETNX by header index: a task that runs twice counts once) and answers
  whether this call completed (or failed) the chord. The worker calls it
  synchronously, then adds the body (or the failure of the body) to the output,
  followed by ``HSET sent``, then the ack. If the worker dies in between, the
  header task is redelivered, and the script gives the decision again to that
  same header index while ``sent`` is unset; nobody else ever gets it.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from ._speedups import new_task_id
from .options import REPR_OPTIONS, SEND_OPTIONS, WORKER_OPTIONS, unknown_options
from .result import AsyncResult, GroupResult

log = logging.getLogger("fastq.worker")

CHAIN, GROUP, CHORD = "chain", "group", "chord"

#: Options a task message acts on that make it part of a workflow.
WORKFLOW_KEYS = ("link", "link_error", "chain", "chord")

#: Options of a composite that apply only to the steps that run first.
_FIRST_ONLY = ("countdown", "eta")

#: apply_async options that are not worker options (app._build_with_options pops them).

_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


# --- children of running tasks ------------------------------------------------------------

#: Running task id -> ids of the tasks it sent (stored in its result's ``children``).
CHILDREN: dict[str, list] = {}
_MAX_CHILDREN = 10000



def as_list(value: Any) -> list:
    """None -> [], a list or tuple -> a list, anything else -> [it] (callbacks, errbacks)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]

def note_child(request, child_id: str) -> None:
    """Remember that the running task ``request`` sent ``child_id`` (``r.children``).

    Best effort: an ignore_result task never collects its list, so the map is
    dropped whole when it grows past a bound."""
    ids = request._extra
    if ids is None:
        if len(CHILDREN) >= _MAX_CHILDREN:
            CHILDREN.clear()
        ids = request._extra = CHILDREN[request.id] = []
    ids.append(child_id)


def pop_children(task_id: str) -> list | None:
    return CHILDREN.pop(task_id, None) if CHILDREN else None


# --- building the tree (producer side) ------------------------------------------------------


def node_of(obj: Any, where: str = "workflow") -> dict:
    """The dict form of a Signature (or a dict already)."""
    if isinstance(obj, dict):
        return obj
    as_dict = getattr(obj, "as_dict", None)
    if as_dict is None:
        raise TypeError(f"{where}: expected a signature (task.s(...)), not {type(obj).__name__}")
    return as_dict()




def callbacks(value: Any) -> list[dict]:
    """``link=`` / ``link_error=`` values as frozen dicts (what messages carry)."""
    return [freeze(node_of(c, "link")) for c in as_list(value)]


_known_options: frozenset | None = None


def _check_options(opts: dict) -> None:
    global _known_options
    if _known_options is None:
        _known_options = frozenset((*SEND_OPTIONS, *WORKER_OPTIONS, *REPR_OPTIONS))
    stamps = as_list(opts.get("stamped_headers"))  # fastq.stamping: the names of its stamps
    unknown = [k for k in opts if k not in _known_options and k != "stamped_headers" and k not in stamps]
    if unknown:
        raise unknown_options(unknown)


def _merge(own: dict, defaults: dict) -> dict:
    """A task's options over its composite's; callbacks add up."""
    out = dict(own)
    for k, v in defaults.items():
        if k in ("link", "link_error"):
            out[k] = [*as_list(out.get(k)), *as_list(v)]
        elif k == "stamped_headers":  # the stamps of both (a task's own win a clash)
            out[k] = list(dict.fromkeys([*as_list(out.get(k)), *as_list(v)]))
        elif out.get(k) is None:
            out[k] = v
    return out


def _own_options(node: dict) -> dict:
    """A node's options with its callbacks frozen (once, here, so every task that
    inherits them carries the same ids)."""
    opts = {k: v for k, v in (node.get("options") or {}).items() if v is not None}
    for key in ("link", "link_error"):
        if key in opts:
            opts[key] = callbacks(opts[key])
    return opts


def _normalize_chain(tasks: list) -> list:
    """Flatten nested chains; ``group, x`` -> ``chord(group, x)``; whatever follows
    a chord moves into its body. Afterwards only the last step may be a group or chord."""
    flat: list = []
    for t in tasks:
        t = node_of(t, "chain")
        if _is_empty(t):
            continue
        if t.get("subtask_type") == GROUP and len(t["tasks"]) == 1:
            t = _unrolled_member(t)  # a one-task group in a chain is that task, as Celery unrolls it
        if t.get("subtask_type") == CHAIN:
            flat.extend(_normalize_chain(_spread(t)))
        else:
            flat.append(t)
    for i, t in enumerate(flat):
        if i == len(flat) - 1:
            break
        kind = t.get("subtask_type")
        rest = flat[i + 1 :]
        if kind == GROUP:
            opts = {k: v for k, v in (t.get("options") or {}).items() if k != "group_id"}
            if (t.get("options") or {}).get("group_id"):
                opts["chord_id"] = t["options"]["group_id"]
            body = rest[0] if len(rest) == 1 else {"subtask_type": CHAIN, "tasks": rest, "options": {}}
            return [*flat[:i], {"subtask_type": CHORD, "header": t["tasks"], "body": body, "options": opts}]
        if kind == CHORD:
            body = {"subtask_type": CHAIN, "tasks": [t["body"], *rest], "options": {}}
            return [*flat[:i], {**t, "body": body}]
    return flat


def _unrolled_member(group_node: dict) -> dict:
    """The one task of a group, with the group's options (but its id) pushed onto it."""
    member = node_of(group_node["tasks"][0], "group")
    opts = {k: v for k, v in (group_node.get("options") or {}).items() if k not in ("group_id", "task_id")}
    return {**member, "options": _merge(member.get("options") or {}, opts)} if opts else member


def _is_empty(node: dict) -> bool:
    """An empty chain or group, or one made only of those: a step that does
    nothing, which Celery skips (its arguments go on to the next real step)."""
    return node.get("subtask_type") in (CHAIN, GROUP) and all(_is_empty(node_of(t, "canvas")) for t in node["tasks"])


def _spread(chain_node: dict) -> list:
    """A nested chain's steps, its options moved onto them as freeze() would
    (link and task_id: the last step; countdown/eta: the first; the rest: all)."""
    opts = {k: v for k, v in (chain_node.get("options") or {}).items() if v is not None}
    tasks = [node_of(t, "chain") for t in chain_node["tasks"]]
    if not opts:
        return tasks
    out = []
    for i, t in enumerate(tasks):
        extra = {k: v for k, v in opts.items() if k not in ("link", "task_id", *_FIRST_ONLY)}
        if i == 0:
            extra.update({k: opts[k] for k in _FIRST_ONLY if k in opts})
        if i == len(tasks) - 1:
            extra.update({k: opts[k] for k in ("link", "task_id") if k in opts})
        out.append({**t, "options": _merge(t.get("options") or {}, extra)})
    return out


def accumulating(group_node: dict) -> dict:
    """A chord of the group's members whose body (``fastq.accumulate``) returns
    their list of results: the group's value as one result, for a group whose
    result must be one task's (it ends a chain in a chord's header, or replaces
    a task)."""
    body = {"task": "fastq.accumulate", "args": [], "kwargs": {}, "options": {}, "immutable": False}
    return {"subtask_type": CHORD, "header": group_node["tasks"], "body": body,
            "options": group_node.get("options") or {}}


def _unroll_groups(tasks: list) -> list:
    """A group's members with the groups directly inside it spliced in, as Celery
    unrolls them (``group(a, group(b, c))`` gives ``[a, b, c]``); an inner group's
    options go to its members. A group at the end of a chain stays nested."""
    out: list = []
    for t in tasks:
        t = node_of(t, "group")
        if _is_empty(t):
            continue
        if t.get("subtask_type") != GROUP:
            out.append(t)
            continue
        inner = {k: v for k, v in _own_options(t).items() if k not in ("group_id", "task_id")}
        for c in _unroll_groups(t["tasks"]):
            out.append({**c, "options": _merge(c.get("options") or {}, inner)} if inner else c)
    return out


def _flatten_header(tasks: list) -> list:
    out: list = []
    for t in tasks:
        t = node_of(t, "chord header")
        if _is_empty(t):
            continue
        if t.get("subtask_type") == GROUP:
            out.extend(_flatten_header(t["tasks"]))
        else:
            out.append(t)
    return out


def freeze(node: dict, defaults: dict | None = None, member: tuple | None = None) -> dict:
    """A copy of the tree with every task id set and options pushed down.

    ``defaults``: options inherited from the enclosing composite. ``member``:
    ``(chord_id, index)`` when this node's result is one header result of a chord."""
    defaults = defaults or {}
    kind = node.get("subtask_type")
    opts = _merge(_own_options(node), defaults)
    if kind is None:
        _check_options(opts)
        if not isinstance(node.get("task"), str):
            raise TypeError(f"a signature needs a task name, not {node.get('task')!r}")
        if not opts.get("task_id"):
            opts["task_id"] = new_task_id()
        if member is not None:
            opts["chord"], opts["group_index"] = member
        return {"task": node["task"], "args": list(node.get("args") or ()), "kwargs": dict(node.get("kwargs") or {}),
                "options": opts, "immutable": bool(node.get("immutable"))}
    if kind == CHAIN:
        tasks = _normalize_chain(node["tasks"])
        if not tasks:
            raise ValueError("cannot send an empty chain")
        link, link_error, task_id = opts.pop("link", None), opts.pop("link_error", None), opts.pop("task_id", None)
        first = {k: opts.pop(k) for k in _FIRST_ONLY if k in opts}
        out = []
        for i, t in enumerate(tasks):
            d = dict(opts)
            if link_error:
                d["link_error"] = link_error
            if i == 0:
                d.update(first)
            last = i == len(tasks) - 1
            if last and link:
                d["link"] = link
            if last and task_id:
                d["task_id"] = task_id
            out.append(freeze(t, d, member if last else None))
        return out[0] if len(out) == 1 else {"subtask_type": CHAIN, "tasks": out, "options": {}}
    if kind == GROUP:
        if member is not None:  # its list is one header result: Celery's chord(group, accumulate)
            return freeze(accumulating(node), defaults, member)
        gid = opts.pop("group_id", None) or opts.pop("task_id", None) or new_task_id()
        opts.pop("task_id", None)
        members = _unroll_groups(node["tasks"])
        link = opts.pop("link", None)
        tasks = [freeze(t, opts) for t in members]
        if link and tasks:
            # As Celery's group.link: the callbacks (a chord's link, given to its group
            # body) run once, immutable, after the first member, not once per member.
            first = _result_task(tasks[0])
            once = [{**cb, "immutable": True} if "task" in cb else cb for cb in link]
            first["options"]["link"] = [*(first["options"].get("link") or ()), *once]
        return {"subtask_type": GROUP, "tasks": tasks, "options": {"group_id": gid}}
    if kind == CHORD:
        cid, opts, body = _chord_parts(node, opts, member)
        header = [freeze(t, opts, (cid, i)) for i, t in enumerate(_flatten_header(node["header"]))]
        return {"subtask_type": CHORD, "header": header, "body": body, "options": {"chord_id": cid}}
    raise TypeError(f"unknown signature type {kind!r}")


def _result_task(node: dict) -> dict:
    """The task node a frozen tree's result is read from last: a chain's last step's, a chord's body's."""
    kind = node.get("subtask_type")
    if kind is None:
        return node
    if kind == CHAIN:
        return _result_task(node["tasks"][-1])
    if kind == CHORD:
        return _result_task(node["body"])
    return _result_task(node["tasks"][0])


def _chord_parts(node: dict, opts: dict, member: tuple | None) -> tuple[str, dict, dict]:
    """A chord's id, the options its header tasks inherit, and its frozen body."""
    if node.get("body") is None:
        raise TypeError("a chord needs a body: chord(header, body) or chord(header)(body)")
    cid = opts.pop("chord_id", None) or opts.pop("group_id", None) or new_task_id()
    body_only = {k: opts.pop(k) for k in ("link", "link_error", "task_id") if k in opts}
    placement = {k: v for k, v in opts.items() if k not in _FIRST_ONLY}
    body = freeze(node_of(node["body"], "chord body"), {**placement, **body_only}, member)
    return cid, opts, body


def result_of(app, node: dict, parent=None):
    """The result handle of a frozen tree: AsyncResult of its last task, or a GroupResult."""
    def walk(n: dict, parent):
        kind = n.get("subtask_type")
        if kind is None:
            r = AsyncResult(n["options"]["task_id"], app=app, task_name=n["task"])
            r.parent = parent
            return r
        if kind == CHAIN:
            for t in n["tasks"]:
                parent = walk(t, parent)
            return parent
        if kind == GROUP:
            return GroupResult(n["options"]["group_id"], [walk(t, None) for t in n["tasks"]], app=app, parent=parent)
        header = GroupResult(n["options"]["chord_id"], [walk(t, None) for t in n["header"]], app=app, parent=parent)
        return walk(n["body"], header)

    return walk(node, parent)


def task_nodes(node: dict) -> Iterator[dict]:
    """Every task's node in a frozen tree."""
    kind = node.get("subtask_type")
    if kind is None:
        yield node
    elif kind == CHORD:
        for t in node["header"]:
            yield from task_nodes(t)
        yield from task_nodes(node["body"])
    else:
        for t in node["tasks"]:
            yield from task_nodes(t)


def task_ids(node: dict) -> Iterator[tuple[str, str]]:
    """(task id, task name) of every task in a frozen tree."""
    for t in task_nodes(node):
        yield t["options"]["task_id"], t["task"]


# --- sending ---------------------------------------------------------------------------------


def _when(value: Any) -> Any:
    """An eta/expires that crossed JSON as an ISO string comes back a datetime."""
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    return value


def launch(app, node: dict, args: tuple = (), kwargs: dict | None = None, rest: Iterable = (),
           parent_id: str | None = None, root_id: str | None = None, again: bool = False) -> list[bytes]:
    """The packed commands that start a frozen tree (``args`` prepended to its
    first tasks' arguments; ``rest``: chain steps to run after it). Messages go
    out in bulk (publish_many) in batches of 1000; order is kept, so a chord's
    state is written before its header tasks. ``again``: the same frozen tree
    was sent before; its chords that ran to their end start afresh."""
    items: list = []
    _launch(app, node, tuple(args), kwargs or {}, list(rest), parent_id, root_id, items, again)
    broker, field = app.broker, app.serializer.field
    out: list[bytes] = []
    batch: list = []
    for item in items:
        if isinstance(item, tuple):
            batch.append(item)
            if len(batch) < 1000:
                continue
        if batch:
            out.extend(broker.publish_many_commands(batch, field))
            batch = []
        if not isinstance(item, tuple):
            out.append(item)
    if batch:
        out.extend(broker.publish_many_commands(batch, field))
    return out


def _launch(app, node, args, kwargs, rest, parent_id, root_id, out, again=False) -> None:
    kind = node.get("subtask_type")
    if kind is None:
        opts = dict(node["options"])
        if rest:
            opts["chain"] = rest
        if parent_id is not None:
            opts["parent_id"], opts["root_id"] = parent_id, root_id
        for key in ("eta", "expires"):
            if key in opts:
                opts[key] = _when(opts[key])
        a, kw = node["args"], node["kwargs"]
        if not node.get("immutable"):
            if args:
                a = [*args, *a]
            if kwargs:
                kw = {**kw, **kwargs}
        name = node["task"]
        task = app.tasks.get(name)
        if task is not None and (task._typed is not None or task._pydantic is not None):
            a, kw = task._convert_args(a, kw)  # a typed or pydantic step: its final arguments are known now
        msg, queue, priority, due = app.producer.build(name, a, kw, opts, task)
        out.append((queue, priority, due, app.producer.encode(msg, task)))
        return
    if kind == CHAIN:
        tasks = node["tasks"]
        _launch(app, tasks[0], args, kwargs, [*tasks[1:], *rest], parent_id, root_id, out, again)
        return
    if rest:  # freeze() ends chains with groups and chords only; a hand-made tree may not
        raise TypeError(f"a {kind} cannot be followed by more chain steps here; build the workflow with canvas")
    if kind == GROUP:
        for t in node["tasks"]:
            _launch(app, t, args, kwargs, [], parent_id, root_id, out, again)
        return
    header, body = node["header"], node["body"]
    if not header:
        _launch(app, body, ([],), {}, [], parent_id, root_id, out, again)
        return
    cid = node["options"]["chord_id"]
    if again:
        out.extend(app.broker.chord_reopen_commands(cid))
    out.extend(app.broker.chord_open_commands(cid, len(header), _pack(body), int(app.conf.result_expires)))
    for t in header:
        _launch(app, t, args, kwargs, [], parent_id, root_id, out, again)


def send_lazy_chord(app, node: dict, header: Iterable[dict], args: tuple = (), kwargs: dict | None = None):
    """Send a chord whose header is a generator (of signature dicts) as Celery
    does: each header task goes out as the generator yields it, so a long header
    starts running before it is all built (and is never all in memory here). The
    chord is opened without a size, and sealed with it once the generator is
    spent; if every header task had finished by then, sealing completed the
    chord and the body is sent from here. Returns the body's result, whose
    parent is the header's GroupResult."""
    cid, opts, body = _chord_parts(node, _merge(_own_options(node), {}), None)
    broker, expires = app.broker, int(app.conf.result_expires)
    publish(app, broker.chord_open_commands(cid, None, _pack(body), expires))
    results = []
    for item in header:
        for t in _flatten_header([item]):
            frozen = freeze(t, opts, (cid, len(results)))
            publish(app, launch(app, frozen, args, kwargs))
            results.append(result_of(app, frozen))
    reply = broker.chord_seal(cid, len(results), expires)
    if reply[0] == 1:
        values = [_unpack(v) for v in reply[2]]
        publish(app, [*launch(app, body, (values,)), *broker.chord_sent_commands(cid)])
    return result_of(app, body, GroupResult(cid, results, app=app))


def publish(app, commands: list[bytes], batch: int = 1000) -> None:
    """Send packed commands in pipelined batches (in order: a chord's state goes
    out before its header tasks)."""
    broker = app.broker
    for i in range(0, len(commands), batch):
        broker.execute_packed(commands[i : i + batch], confirm=True)
