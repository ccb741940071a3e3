"""The app for the canvas tests (``-A tests.apps.canvasapp:app``).

Tasks that record their runs write into the ledger DB (FASTQ_TEST_LEDGER), so a
test can count how many times a chord body or a chain step really ran.
"""

import json
import os
import time

from tests.apps.ledger import ledger

from fastq import FastQ, StampingVisitor, Task, chain, chord, group, signature
from fastq.exceptions import Ignore

app = FastQ("canvas")
app.conf.worker_lease_timeout = float(os.environ.get("FASTQ_TEST_LEASE", "30"))



@app.task(name="canvas.add")
def add(x, y):
    return x + y


@app.task(name="canvas.mul")
def mul(x, y):
    return x * y


@app.task(name="canvas.tsum")
def tsum(values):
    return sum(values)


@app.task(name="canvas.identity")
def identity(value):
    return value


@app.task(name="canvas.fail")
def fail(*args, message="boom"):
    raise ValueError(message)


@app.task(name="canvas.noop")
def noop(*args):
    return None


@app.task(name="canvas.record")
def record(value, key, item, seconds=0.0):
    """Count one run of ``item`` in ledger hash ``key``; returns ``value``."""
    if seconds:
        time.sleep(seconds)
    ledger().hincrby(key, item, 1)
    return value


@app.task(name="canvas.record_sum")
def record_sum(values, key):
    """A chord body that counts its runs and returns the sum of the header results."""
    ledger().hincrby(key, "body", 1)
    ledger().set(f"{key}:len", len(values))
    return sum(values)


@app.task(name="canvas.slow_square")
def slow_square(x, seconds=0.0):
    if seconds:
        time.sleep(seconds)
    return x * x


@app.task(name="canvas.errback")
def errback(task_id, key):
    """An errback: records the failed task's id."""
    ledger().rpush(key, task_id)


@app.task(name="canvas.errback_new")
def errback_new(request, exc, traceback, key):
    """A new-style errback (Celery's ``(request, exc, traceback)``): records the
    failed task's id, the error's class and whether a traceback came with it."""
    ledger().rpush(key, request.id, type(exc).__name__, "tb" if traceback else "no tb")


@app.task(name="canvas.spawn", bind=True)
def spawn(self, n):
    """Sends ``n`` subtasks; returns their ids."""
    return [who_parent.delay().id for _ in range(n)]


@app.task(name="canvas.who_parent", bind=True)
def who_parent(self):
    return {"id": self.request.id, "parent_id": self.request.parent_id, "root_id": self.request.root_id}


@app.task(name="canvas.wait_child")
def wait_child(allow=False):
    """Waits for a subtask's result: refused unless ``allow``."""
    r = add.delay(20, 22)
    return r.get(timeout=30, disable_sync_subtasks=not allow)


@app.task(name="canvas.replace_with", bind=True)
def replace_with(self, x, kind):
    """Replaced by a task, chain, group or chord of ``x`` (``return self.replace(...)``)."""
    if kind == "task":
        return self.replace(add.s(x, 1))
    if kind == "chain":
        return self.replace(add.s(x, 1) | mul.s(10))
    if kind == "group":
        return self.replace(group(add.s(x, i) for i in range(3)))
    if kind == "chord":
        return self.replace(chord([add.s(x, i) for i in range(3)], tsum.s()))
    if kind == "failing chain with errback":
        c = chain(add.s(x, 1), fail.s(message="inner boom"))
        c.link_error(record.si(0, "replaced-errbacks", "inner"))
        return self.replace(c)
    if kind == "empty group":
        return self.replace(group())
    if kind == "fail":
        return self.replace(fail.s(message="replacement boom"))
    return self.replace(kind)  # not a signature: the task fails with TypeError


@app.task(name="canvas.ignore_me")
def ignore_me():
    raise Ignore("nothing to record")


@app.task(name="canvas.grow_chord", bind=True)
def grow_chord(self, nums, val, kind):
    """A header task that adds tasks to its own chord (Celery's add_to_chord)."""
    if kind == "tasks":
        for n in nums:
            self.add_to_chord(add.s(n, val))
    elif kind == "chord":
        self.add_to_chord(group(add.s(n, val) for n in nums) | tsum.s())
    else:
        self.add_to_chord(add.s(1, 1))  # not in a chord: ValueError
    return 0


@app.task(name="canvas.make_sig")
def make_sig(kind):
    """Returns a signature (Celery allows it): it is stored as its dict form."""
    return {"task": add.s(1, 2), "chain": add.s(1, 1) | mul.s(2), "group": group([add.s(1, 1)]),
            "chord": chord([add.s(1, 1)], tsum.s())}[kind]


@app.task(name="canvas.rebuild")
def rebuild(sig_dict):
    """Rebuilds a signature from its dict form and sends it; its type name and value."""
    sig = signature(sig_dict, app=app)
    value = sig.apply_async().get(timeout=20, disable_sync_subtasks=False)
    return [type(sig).__name__, value]


@app.task(name="canvas.nesting", bind=True)
def nesting(self, replacements, seen=None):
    """Replaces itself ``replacements`` times; the list of each run's request fields."""
    seen = [*(seen or ()), [self.request.replaced_task_nesting, self.request.is_eager,
                            self.request.properties["app_id"]]]
    if replacements:
        return self.replace(nesting.s(replacements - 1, seen).set(app_id="relay"))
    return seen


@app.task(name="canvas.send_chain")
def send_chain():
    """Sends a chain and returns its result handle."""
    return (add.s(1, 1) | add.s(1)).apply_async()


@app.task(name="canvas.note_stamps", bind=True)
def note_stamps(self, *values, key="stamps", fail=False):
    """Appends ``[task name, its stamps, its stamped_headers]`` to ledger list ``key``
    (every task of a stamped workflow says what it carried); returns its first value."""
    ledger().rpush(key, json.dumps([self.name, self.request.stamps, sorted(self.request.stamped_headers)]))
    if fail:
        raise ValueError("note_stamps failed on purpose")
    return values[0] if values else None


@app.task(name="canvas.retry_stamps", bind=True, max_retries=2)
def retry_stamps(self, key):
    """Retries once; each try notes its stamps (a retry keeps them)."""
    ledger().rpush(key, json.dumps([self.request.retries, self.request.stamps]))
    if self.request.retries == 0:
        raise self.retry(countdown=0.1)
    return self.request.stamps


class StampOnReplace(StampingVisitor):
    def on_signature(self, sig, **headers):
        return {"on_replace": "yes"}


class StampingTask(Task):
    """Celery's hook: the replacement is stamped before it is sent."""

    def on_replace(self, sig):
        sig.stamp(StampOnReplace())
        return super().on_replace(sig)


@app.task(name="canvas.replace_stamped", bind=True, base=StampingTask)
def replace_stamped(self, key, own=None):
    """Replaced by note_stamps: it keeps this task's stamps (not over one the
    replacement has: ``own``), and on_replace adds one."""
    sig = note_stamps.s("replaced", key=key)
    if own is not None:
        sig.stamp(monitoring_id=own)
    return self.replace(sig)
