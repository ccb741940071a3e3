"""The Executor: everything about running a message that is not the fast path.

``Runner`` (in ``_core``) handles a registered task that returns normally. It
hands the rest here: bad messages, exceptions, retries, expiry and revokes,
``acks_late=False``, ``track_started``. Each method adds what must be sent to
Redis to the consumer's ``Output``; nothing here raises because of a message.

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import logging
import os
import time

import msgspec

from .. import signals, states
from .._speedups import Request, current_request
from ..broker.due import due_arg
from ..broker.redis import CONNECTION_ERRORS
from ..builtin_tasks import register_builtins
from ..coroutines import run_coroutine
from ..exceptions import Ignore, NotRegistered, Reject, Replaced, Retry, TaskRevokedError, ValidationError, format_exception
from ..mail import mailer_for
from ..messages import ResultMeta, encode_result, exception_args, message_decoder_for
from ..options import Countdown, options_error
from ..stamping import revoked_by
from ..unique import release as release_unique
from ..workflow import CHILDREN
from . import steps
from .limits import SoftLimit, write_deadline

log = logging.getLogger("fastq.worker")

#: Longest error text kept in a dead-letter entry.
_MAX_ERROR = 2000


def _exc_fields(exc: BaseException) -> tuple[str, str, str]:
    cls = type(exc)
    return cls.__name__, cls.__module__, str(exc)


class Executor:
    def __init__(self, app, hostname: str, consumer_name: str, queue_of: dict) -> None:
        self.app = app
        self.broker = app.broker
        self.backend = app.backend
        self.hostname = hostname
        self.consumer_name = consumer_name
        self.queue_of = queue_of  #: stream key -> queue name
        self.expires = int(app.conf.result_expires)
        self.decoders = {f: message_decoder_for(f) for f in (b"p", b"j")}
        #: Revoked task ids (kept in sync by the control channel).
        self.revoked: set[str] = set()
        #: Revoked stamp values, name -> values (fastq.stamping; replaced as a whole by the control channel).
        self.revoked_stamps: dict[str, list] = {}
        self.log_tasks = log.isEnabledFor(logging.INFO)
        #: Set by the consumer: send an ack at once (for acks_late=False).
        self.ack_now = None
        #: Set by the consumer: send what is in ``out`` now (STARTED states).
        self.flush_now = None
        #: Record task events in the output (set by the consumer).
        self.events = False
        register_builtins(app)  # fastq.map / fastq.starmap (task.map(), chunks())
        #: Rate limits (a ratelimit.Limiter), set by the consumer.
        self.limiter = None
        #: The process pool child's shared slot (hard time limits), set by the consumer.
        self.slot = None
        #: Tasks that ended in FAILURE (``inspect stats``, the dashboard).
        self.failures = 0
        #: Sends e-mail on failure (fastq.mail); None unless ``error_email_to`` is set.
        self.mailer = None
        if app.conf.get("error_email_to"):
            self.mailer = mailer_for(app, hostname)
        #: ``result_extended``: store args, kwargs, queue and parent with final states.
        self.extended = bool(app.conf.get("result_extended"))
        if self.extended:  # chosen once here, so the default path pays nothing
            self.encode_success = self._encode_success_extended

    # --- results ------------------------------------------------------------------

    def encode_success(self, task, msg, retval, runtime: float) -> bytes:
        return encode_result(
            ResultMeta(states.SUCCESS, retval, None, None, None, None, time.time(), runtime, self.hostname, msg.retries, msg.task,
                       children=CHILDREN.pop(msg.id, None) if CHILDREN else None)
        )

    def _encode_success_extended(self, task, msg, retval, runtime: float) -> bytes:
        return encode_result(
            ResultMeta(states.SUCCESS, retval, None, None, None, None, time.time(), runtime, self.hostname, msg.retries,
                       msg.task, {"request": _request_fields(msg)}, CHILDREN.pop(msg.id, None) if CHILDREN else None)
        )

    def _store(self, out, task_id: str, meta: ResultMeta) -> None:
        for cmd in self.backend.store_commands(task_id, meta, self.expires):
            out.add_result(cmd, 1)

    def _meta(self, state: str, msg, exc: BaseException | None = None, runtime: float | None = None,
              tb: str | None = None, meta: dict | None = None) -> ResultMeta:
        exc_type = exc_module = exc_message = None
        if exc is not None:
            exc_type, exc_module, exc_message = _exc_fields(exc)
        if self.extended and msg is not None and state in states.READY_STATES:
            meta = {**(meta or {}), "request": _request_fields(msg)}
        return ResultMeta(state, None, exc_type, exc_module, exc_message, tb, time.time(), runtime,
                          self.hostname, msg.retries if msg is not None else 0, msg.task if msg is not None else None, meta,
                          exc_args=exception_args(exc) if exc is not None else None)

    # --- bad messages -------------------------------------------------------------

    def _bury(self, d, out, reason: str, error: str) -> None:
        """Move the entry to its queue's dead-letter stream (fenced, atomic)."""
        out.add_command(self.broker.bury_command(d.stream, self.queue_of[d.stream], self.consumer_name, d.entry_id,
                                                 reason, error[:_MAX_ERROR]), 1)

    def undecodable(self, d, out, error: str) -> None:
        task_id = _salvage_id(d)
        log.error("Dead-lettered undecodable message %s (task id %s) on %s: %s", d.entry_id.decode(), task_id or "?",
                  d.stream, error)
        self._bury(d, out, "undecodable", error)
        if self.events:
            out.event("task-rejected", task_id, None, None, {"reason": "undecodable"})
        if task_id:
            self._store(out, task_id, self._meta(states.FAILURE, None, ValueError(f"undecodable message: {error}")))

    def malformed(self, d, out, error: str) -> None:
        """An entry whose fields fastq cannot read (e.g. a delivery count that is not a number)."""
        log.error("Dead-lettered malformed entry %s on %s: %s", d.entry_id.decode(errors="replace"), d.stream, error)
        self._bury(d, out, "malformed", error)
        if self.events:
            out.event("task-rejected", None, None, None, {"reason": "malformed"})

    def bad_options(self, d, msg, out, error: str) -> None:
        """A message whose options would break the worker (a time_limit that is not a number)."""
        log.error("Dead-lettered message %s (task id %s): %s", d.entry_id.decode(errors="replace"), msg.id, error)
        self._bury(d, out, "bad_option", error)
        self._store(out, msg.id, self._meta(states.FAILURE, msg, ValueError(f"bad message option: {error}")))
        if self.events:
            out.event("task-rejected", msg.id, msg.task, None, {"reason": "bad_option"})

    def crashed(self, d, exc: Exception, out) -> None:
        """The worker itself failed on this message (not the task: its exceptions are
        handled in ``failed``). Dead-letter it, so one message cannot stop the
        consumer; a lost connection is the consumer's business and goes on up."""
        if isinstance(exc, CONNECTION_ERRORS):
            raise exc
        error = f"{type(exc).__name__}: {exc}"
        log.error("Dead-lettered message %s on %s: the worker failed on it: %s\n%s",
                  d.entry_id.decode(errors="replace"), d.stream, error, format_exception(exc))
        if d.entry_id in out.acks.get(d.stream, ()):  # finished already: nothing to dead-letter
            return
        self._bury(d, out, "worker_error", error)
        msg = d.message
        if msg is not None and isinstance(getattr(msg, "id", None), str):
            self._store(out, msg.id, self._meta(states.FAILURE, msg, RuntimeError(f"the worker failed on it: {error}")))

    def too_large(self, d, out, limit: int) -> None:
        error = f"message is {len(d.payload)} bytes, more than max_message_size={limit}"
        log.error("Dead-lettered message %s on %s: %s", d.entry_id.decode(), d.stream, error)
        self._bury(d, out, "too_large", error)
        if self.events:
            out.event("task-rejected", None, None, None, {"reason": "too_large"})

    def unknown_task(self, d, msg, out) -> None:
        error = f"task {msg.task!r} is not registered in this worker"
        log.error("Dead-lettered task %s[%s] (entry %s): %s", msg.task, msg.id, d.entry_id.decode(), error,
                  extra={"task_name": msg.task, "task_id": msg.id, "state": "DEAD"})
        if msg.options:  # a workflow step: its chain, chord and errbacks fail now, not hang
            steps.on_failure(self, d, msg, NotRegistered(error), None, out)
        self._bury(d, out, "unknown_task", error)
        self._store(out, msg.id, self._meta(states.FAILURE, msg, NotRegistered(error)))
        release_unique(self.broker, msg, out)
        if self.events:
            out.event("task-rejected", msg.id, msg.task, None, {"reason": "unknown_task"})

    def admit(self, d, out, max_size: int) -> tuple | None:
        """The checks every delivery passes before it runs, in the core's order
        (``Runner._run_one`` inlines the same steps on the hot path): a malformed
        entry, an oversize payload, an undecodable one, an unknown task are
        dead-lettered with their reason. Returns (message, task) to run, or None."""
        if d.error is not None:
            self.malformed(d, out, d.error)
            return None
        if len(d.payload) > max_size:
            self.too_large(d, out, max_size)
            return None
        msg = d.message
        if msg is None:
            decode = self.decoders.get(d.field)
            if decode is None:
                self.undecodable(d, out, f"unknown payload field {d.field!r}")
                return None
            try:
                msg = decode(d.payload)
            except Exception as exc:  # noqa: BLE001 - any bad payload
                self.undecodable(d, out, str(exc))
                return None
            d.message = msg
        task = self.app.tasks.get(msg.task)
        if task is None:
            self.unknown_task(d, msg, out)
            return None
        return msg, task

    # --- running ------------------------------------------------------------------

    def execute(self, task, d, msg, out) -> None:
        """The slow path: a task with options, an expiry, or while revokes are known."""
        started = self.start_run(task, d, msg, out)
        if started is None:
            return
        token, soft, hard, args, kwargs = started
        deadline = bool(hard and self.slot is not None)
        if deadline:  # the pool's parent kills the process after this
            write_deadline(self.slot, time.time() + hard)
        t0 = time.perf_counter()
        try:
            if task.is_async:  # a sync pool: one event loop per call (coroutines.py)
                retval = run_coroutine(task.run(*args, **kwargs), soft)
            else:
                with SoftLimit(soft):
                    retval = task.run(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - a task may raise anything
            if deadline:
                write_deadline(self.slot, 0.0)
            self.end_run(task, d, msg, out, token, None, time.perf_counter() - t0, exc)
            return
        if deadline:
            write_deadline(self.slot, 0.0)
        self.end_run(task, d, msg, out, token, retval, time.perf_counter() - t0)

    def start_run(self, task, d, msg, out) -> tuple | None:
        """Everything before the call: expiry, revokes, rate limits, the early ack,
        STARTED, the request context and ``task_prerun``. Returns (context token,
        soft limit, hard limit, args, kwargs - converted for a typed task), or None when the message was dealt with instead
        (expired, revoked, deferred). The asyncio pool calls this and ``end_run``
        around its own call of the task."""
        if signals.task_received:
            signals.task_received.send(sender=self, request=Request(msg, self.hostname, d, self.queue_of[d.stream],
                                                                    task))
        bad = options_error(msg.options)
        if bad is not None:  # checked at the call too; this message may come from elsewhere
            self.bad_options(d, msg, out, bad)
            return None
        if msg.expires is not None and time.time() > msg.expires:
            self._revoked(d, msg, out, "expired")
            return None
        if msg.id in self.revoked:
            self._revoked(d, msg, out, "revoked")
            return None
        if self.revoked_stamps and msg.headers:
            hit = revoked_by(Request(msg, self.hostname, d).stamps, self.revoked_stamps)
            if hit is not None:
                self._revoked(d, msg, out, f"revoked by stamp {hit}")
                return None
        args, kwargs = msg.args, msg.kwargs
        if task._typed is not None:  # the annotated types, or the task fails now (never retried)
            try:
                args, kwargs = task._typed.convert(args, kwargs)
            except ValidationError as exc:
                self.failed(task, d, msg, exc, 0.0, out)
                return None
        if self.limiter is not None and (task.rate or self.queue_of[d.stream] in self.limiter.limited_queues):
            wait = self.limiter.acquire(task, self.queue_of[d.stream])
            if wait > 0:
                self._defer(d, msg, wait, out)
                return None
        if not task.acks_late and self.ack_now is not None:
            self.ack_now(d)
        if task.track_started:
            self._store(out, msg.id, self._meta(states.STARTED, msg, meta={"pid": _pid(), "hostname": self.hostname}))
            if self.events:
                out.event("task-started", msg.id, msg.task, None, {"pid": _pid()})
            if self.flush_now is not None:
                self.flush_now(out)
        token = current_request.set(Request(msg, self.hostname, d, self.queue_of[d.stream], task))
        if signals.task_prerun:
            signals.task_prerun.send(sender=task, task_id=msg.id, task=task, args=msg.args, kwargs=msg.kwargs)
        if task._handlers:
            try:
                task.before_start(msg.id, msg.args, msg.kwargs)
            except Exception:  # user code: never stop the worker
                log.exception("before_start of task %s[%s] failed", msg.task, msg.id)
        opts = msg.options or {}
        return (token, opts.get("soft_time_limit") or task.soft_time_limit, opts.get("time_limit") or task.time_limit,
                args, kwargs)

    def end_run(self, task, d, msg, out, token, retval, runtime: float, exc: BaseException | None = None) -> None:
        """Everything after the call: the result or the failure (retry, reject),
        the ack, signals; then the request context is reset."""
        if exc is not None:
            self.failed(task, d, msg, exc, runtime, out)
            if task._handlers:
                self._handlers_after(task, msg, None, exc)
            self._postrun(task, msg, None, "FAILURE")
        else:
            self.finished(task, d, msg, retval, runtime, out)
            if task._handlers:
                self._handlers_after(task, msg, retval, None)
            if signals.task_success:
                signals.task_success.send(sender=task, result=retval)
            self._postrun(task, msg, retval, states.SUCCESS)
        current_request.reset(token)

    def _handlers_after(self, task, msg, retval, exc: BaseException | None) -> None:
        """Celery's Task handler methods, for a base class that defines them:
        on_success, on_retry or on_failure, then after_return with the state. An
        Ignore (or a replacement) calls none; a handler's error is logged."""
        if isinstance(exc, Ignore):
            return
        einfo = None
        try:
            if exc is None:
                state = states.SUCCESS
                task.on_success(retval, msg.id, msg.args, msg.kwargs)
            elif isinstance(exc, Retry) or (task.should_autoretry(exc) and
                                            (task.max_retries is None or msg.retries < task.max_retries)):
                state, einfo = states.RETRY, format_exception(exc)
                task.on_retry(exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc, msg.id, msg.args,
                              msg.kwargs, einfo)
            else:
                state, einfo = states.FAILURE, format_exception(exc)
                task.on_failure(exc, msg.id, msg.args, msg.kwargs, einfo)
            task.after_return(state, retval if exc is None else exc, msg.id, msg.args, msg.kwargs, einfo)
        except Exception:  # user code: never stop the worker
            log.exception("A handler of task %s[%s] failed", msg.task, msg.id)

    @staticmethod
    def _postrun(task, msg, retval, state: str) -> None:
        if signals.task_postrun:
            signals.task_postrun.send(sender=task, task_id=msg.id, task=task, args=msg.args, kwargs=msg.kwargs,
                                      retval=retval, state=state)

    def finished(self, task, d, msg, retval, runtime: float, out) -> None:
        opts = msg.options or {}
        if not (task.ignore_result or opts.get("ignore_result")):
            try:
                blob = self.encode_success(task, msg, retval, runtime)
            except Exception as exc:  # noqa: BLE001
                self.result_not_serializable(task, d, msg, exc, runtime, out)
                return
            out.store_result(self.backend.result_key(msg.id), blob, self.expires)
        if opts:  # chain steps, callbacks, chord count: in this flush, before the ack
            steps.on_success(self, d, msg, retval, out)
            release_unique(self.broker, msg, out)
        out.ack(d.stream, d.entry_id)
        if self.events:
            out.event("task-succeeded", msg.id, msg.task, runtime, None)
        self.succeeded(task, d, msg, runtime)

    def succeeded(self, task, d, msg, runtime: float) -> None:
        if self.log_tasks:
            log.info("Task %s[%s] succeeded in %.6fs", msg.task, msg.id, runtime,
                     extra={"task_name": msg.task, "task_id": msg.id, "state": states.SUCCESS, "runtime": runtime})

    def result_not_serializable(self, task, d, msg, exc: Exception, runtime: float, out) -> None:
        error = TypeError(f"task {msg.task!r} returned a value that cannot be serialized: {exc}")
        log.error("Task %s[%s] failed in %.6fs: %s", msg.task, msg.id, runtime, error)
        self._store(out, msg.id, self._meta(states.FAILURE, msg, error, runtime))
        if msg.options:
            steps.on_failure(self, d, msg, error, None, out)
            release_unique(self.broker, msg, out)
        out.ack(d.stream, d.entry_id)

    def failed(self, task, d, msg, exc: BaseException, runtime: float, out) -> None:
        """The task raised: retry, reject, ignore (or replace), or record FAILURE."""
        if isinstance(exc, Ignore):
            self._ignored(task, d, msg, exc, runtime, out)
            return
        if isinstance(exc, Retry):
            self._retry(task, d, msg, exc.exc, exc.when, out, exc.retry_args, exc.retry_kwargs)
            return
        if task.should_autoretry(exc) and (task.max_retries is None or msg.retries < task.max_retries):
            self._retry(task, d, msg, exc, Countdown(time.time(), task._autoretry_delay(msg.retries)), out)
            return
        if isinstance(exc, Reject):
            if exc.requeue and self._requeue(d, msg, exc, out):
                return
            log.warning("Task %s[%s] rejected, dead-lettered: %s", msg.task, msg.id, exc.reason)
            self._store(out, msg.id, self._meta(states.FAILURE, msg, exc, runtime))
            if msg.options:
                steps.on_failure(self, d, msg, exc, None, out)
                release_unique(self.broker, msg, out)
            self._bury(d, out, "rejected", exc.reason or "rejected by the task")
            if self.events:
                out.event("task-rejected", msg.id, msg.task, runtime, {"reason": "rejected"})
            return
        tb = format_exception(exc)
        log.error("Task %s[%s] failed in %.6fs: %s: %s\n%s", msg.task, msg.id, runtime, type(exc).__name__, exc, tb,
                  extra={"task_name": msg.task, "task_id": msg.id, "state": states.FAILURE, "runtime": runtime})
        self.failures += 1
        if self.mailer is not None:  # queued for a background thread: never blocks
            self.mailer.task_failed(task, msg, exc, tb, self.queue_of.get(d.stream))
        opts = msg.options or {}
        if not (task.ignore_result or opts.get("ignore_result")):
            self._store(out, msg.id, self._meta(states.FAILURE, msg, exc, runtime, tb))
        if opts:  # errbacks, the rest of the chain and the chord fail: before the ack
            steps.on_failure(self, d, msg, exc, tb, out)
            release_unique(self.broker, msg, out)
        out.ack(d.stream, d.entry_id)
        if self.events:
            out.event("task-failed", msg.id, msg.task, runtime, {"exception": f"{type(exc).__name__}: {exc}"[:500]})
        if signals.task_failure:
            signals.task_failure.send(sender=task, task_id=msg.id, exception=exc, args=msg.args, kwargs=msg.kwargs,
                                      traceback=exc.__traceback__, einfo=tb)

    def _ignored(self, task, d, msg, exc: Ignore, runtime: float, out) -> None:
        """``Ignore``: ack, no state. ``Replaced``: the replacement goes out with
        the ack (so it is sent exactly when the task is done), taking the task's id."""
        if isinstance(exc, Replaced):
            try:
                cmds = steps.replacement(self.app, msg, exc.sig)
            except Exception as bad:  # noqa: BLE001 - a bad replacement fails the task instead
                self.failed(task, d, msg, TypeError(f"task {msg.task!r} cannot be replaced: {bad}"), runtime, out)
                return
            for c in cmds:
                out.add_command(c, 1)
            log.info("Task %s[%s] replaced by %r", msg.task, msg.id, exc.sig)
        else:
            log.info("Task %s[%s] ignored: %s", msg.task, msg.id, exc)
        if msg.options:
            release_unique(self.broker, msg, out)
        out.ack(d.stream, d.entry_id)

    def _retry(self, task, d, msg, exc: BaseException | None, when: float | None, out,
               args: list | None = None, kwargs: dict | None = None) -> None:
        """Replace the message with its next try, atomically (retry.lua); ``args``
        / ``kwargs``: the next try's arguments (``retry(args=..., kwargs=...)``)."""
        if signals.task_retry:
            signals.task_retry.send(sender=task, request=current_request.get(), reason=exc,
                                    einfo=format_exception(exc) if exc is not None else None)
        eta = None if when is None else float(when)  # the wire format takes plain floats
        nxt = msgspec.structs.replace(msg, retries=msg.retries + 1, eta=eta)
        if args is not None or kwargs is not None:
            nxt = msgspec.structs.replace(nxt, args=msg.args if args is None else args,
                                          kwargs=msg.kwargs if kwargs is None else kwargs)
        payload = self.app.serializer.encode(nxt)
        field = self.app.serializer.field
        prio = msg.priority if 0 <= msg.priority <= 9 else 0
        delay = (when - time.time()) if when else 0.0
        if delay > 0 or (when and not isinstance(when, Countdown)):  # an absolute eta: Redis's clock decides
            due, arg5, arg6 = due_arg(when), field + b"%d" % prio + payload, b""
        else:
            due, arg5, arg6 = b"0", field, payload
        tb = format_exception(exc) if exc is not None else None
        self._store(out, msg.id, self._meta(states.RETRY, msg, exc, None, tb, {"eta": eta}))
        out.add_command(self._retry_command(d, prio, due, arg5, arg6), 1)
        if self.events:
            out.event("task-retried", msg.id, msg.task, None, {"exception": repr(exc)[:500], "eta": eta})
        log.info("Task %s[%s] retry %d in %.3gs: %r", msg.task, msg.id, msg.retries + 1, max(delay, 0.0), exc,
                 extra={"task_name": msg.task, "task_id": msg.id, "state": states.RETRY})

    def _requeue(self, d, msg, exc, out) -> bool:
        """``Reject(requeue=True)``: the message goes back to its queue at once, marked
        as requeued (its request then says ``redelivered``, as in Celery). A message
        requeued ``worker_max_deliveries`` times is dead-lettered instead (False),
        so a task that always rejects cannot loop for ever."""
        headers = msg.headers or {}
        n = headers.get("requeued")
        n = n if n.__class__ is int and n >= 0 else 0
        if n >= self.app.conf.worker_max_deliveries:
            return False
        nxt = msgspec.structs.replace(msg, headers={**headers, "requeued": n + 1})
        prio = msg.priority if 0 <= msg.priority <= 9 else 0
        out.add_command(self._retry_command(d, prio, b"0", self.app.serializer.field,
                                            self.app.serializer.encode(nxt)), 1)
        log.info("Task %s[%s] rejected and requeued (%d): %s", msg.task, msg.id, n + 1, exc.reason,
                 extra={"task_name": msg.task, "task_id": msg.id})
        return True

    def _defer(self, d, msg, wait: float, out) -> None:
        """No rate-limit token: the same message waits in the delayed set (atomic
        move, retry.lua), so nothing here blocks or spins."""
        prio = msg.priority if 0 <= msg.priority <= 9 else 0
        due = due_arg(Countdown(time.time(), wait))
        out.add_command(self._retry_command(d, prio, due, d.field + b"%d" % prio + d.payload, b""), 1)

    def _retry_command(self, d, priority: int, due: bytes, arg5: bytes, arg6: bytes) -> bytes:
        """retry.lua (on a fair queue the message keeps its tenant)."""
        return self.broker.retry_command(d.stream, self.queue_of[d.stream], self.consumer_name, d.entry_id, priority,
                                         due, arg5, arg6)

    def _revoked(self, d, msg, out, reason: str) -> None:
        if signals.task_revoked:
            signals.task_revoked.send(sender=self.app.tasks.get(msg.task), request=Request(msg, self.hostname, d),
                                      terminated=False, signum=None, expired=reason == "expired")
        log.info("Task %s[%s] %s: not run", msg.task, msg.id, reason,
                 extra={"task_name": msg.task, "task_id": msg.id, "state": states.REVOKED})
        self._store(out, msg.id, self._meta(states.REVOKED, msg, TaskRevokedError(reason), meta={"reason": reason}))
        if msg.options:
            steps.on_failure(self, d, msg, TaskRevokedError(reason), None, out)
            release_unique(self.broker, msg, out)
        out.ack(d.stream, d.entry_id)
        if self.events:
            out.event("task-revoked", msg.id, msg.task, None, {"reason": reason})


def _request_fields(msg) -> dict:
    """What ``result_extended`` stores about the call."""
    return {"args": msg.args, "kwargs": msg.kwargs, "parent_id": msg.parent_id, "root_id": msg.root_id,
            "eta": msg.eta, "expires": msg.expires, "priority": msg.priority}


def _salvage_id(d) -> str | None:
    """The task id of a message that failed to decode, if the envelope is readable."""
    try:
        raw = msgspec.msgpack.decode(d.payload) if d.field == b"p" else msgspec.json.decode(d.payload)
    except Exception:  # noqa: BLE001
        return None
    if isinstance(raw, list) and raw and isinstance(raw[0], str) and len(raw[0]) <= 200:
        return raw[0]
    return None


def _pid() -> int:

    return os.getpid()


__all__ = ["Executor", "NotRegistered"]
