"""The results store: where workers write task states and producers read them.

Layout: a task's final state (SUCCESS, FAILURE, REVOKED) is pushed onto the list
``<prefix>r:<id>``; readers take element 0, so the first final state stored
wins and a late duplicate (a cut-off worker coming back) never overwrites it.
Waits use ``BLMOVE key key LEFT LEFT``, a blocking read that moves the element
onto itself: it wakes the moment the result lands, with no polling. Non-final
states (STARTED, RETRY, PROGRESS) live in the string ``<prefix>st:<id>``; a saved
``GroupResult`` is the msgpack list of its members' ids under ``<prefix>g:<id>``.

``fastq.result`` (AsyncResult, ResultSet, GroupResult) is the user's side and asks
this class by name; nothing above the broker builds a result command.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import threading
import time

import msgspec

from .. import states
from .._speedups import pack_command, pack_result
from ..exceptions import TimeoutError as FastQTimeout
from ..messages import ResultMeta, decode_result, encode_result
from .aioclient import WAIT_CHUNK, _retrying, client_for, execute_packed_async


def pack_store(keys, task_id: str, meta: ResultMeta, expires: int) -> list[bytes]:
    """The commands that store ``meta`` (a final state goes to the result list)."""
    blob = encode_result(meta)
    if meta.state in states.READY_STATES:
        return pack_result(keys.result(task_id).encode(), blob, expires)
    return [pack_command((b"SET", keys.state(task_id), blob, b"EX", expires))]


class RedisBackend:
    """Reads and writes results in the Redis of ``broker`` (the app's broker, or
    the one ``result_backend`` names)."""

    def __init__(self, broker) -> None:
        self.broker = broker
        self.keys = broker.keys
        self.expires = int(broker.conf.result_expires)
        self._local = threading.local()

    def ensure_chords_allowed(self) -> None:
        """Celery's check that this backend can run chords: fastq's always can
        (the chord counter lives in the broker's Redis)."""

    def store_commands(self, task_id: str, meta: ResultMeta, expires: int) -> list[bytes]:
        """The commands that store ``meta`` (a final state goes to the result list),
        for a worker's flush: sent with the ack, in one transaction when they can be."""
        return pack_store(self.keys, task_id, meta, expires)

    @property
    def result_prefix(self) -> bytes:
        """What every result key starts with: the compiled core's fast path appends
        the task id (``result_key`` is one whole key)."""
        return self.keys.result("").encode()

    def result_key(self, task_id: str) -> bytes:
        """Where a task's final result is kept (the compiled core's fast path writes it)."""
        return self.keys.result(task_id).encode()

    def _waiter(self):
        """A connection for blocking reads, one per thread (BLMOVE holds it)."""
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = self.broker.new_client(socket_timeout=WAIT_CHUNK + 5)
        return c

    # --- one task -----------------------------------------------------------------

    def get_meta(self, task_id: str) -> ResultMeta | None:
        """The stored state, final or not, without waiting (None: nothing stored)."""
        final, partial = self.broker.execute_packed(
            [pack_command((b"LINDEX", self.keys.result(task_id), b"0")), pack_command((b"GET", self.keys.state(task_id)))]
        )
        raw = final if final is not None else partial
        return decode_result(raw) if raw is not None else None

    def get_many(self, task_ids: list[str]) -> list[ResultMeta | None]:
        """Final results of many tasks, pipelined in batches of 1000."""
        out: list[ResultMeta | None] = []
        key = self.keys.result
        for i in range(0, len(task_ids), 1000):
            raws = self.broker.execute_packed(
                [pack_command((b"LINDEX", key(tid), b"0")) for tid in task_ids[i : i + 1000]]
            )
            out.extend(decode_result(r) if r is not None else None for r in raws)
        return out

    def wait(self, task_id: str, timeout: float | None) -> ResultMeta:
        """Block until the task's final state is stored (fastq's TimeoutError after ``timeout`` s)."""
        key = self.keys.result(task_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk = WAIT_CHUNK if deadline is None else min(WAIT_CHUNK, deadline - time.monotonic())
            if chunk <= 0:
                raise FastQTimeout(f"task {task_id} not ready after {timeout} s")
            with self.broker.retrying():
                raw = self._waiter().blmove(key, key, max(chunk, 0.001), "LEFT", "LEFT")
            if raw is not None:
                return decode_result(raw)

    def store(self, task_id: str, meta: ResultMeta) -> None:
        cmds = self.store_commands(task_id, meta, self.expires)
        with self.broker.retrying():
            self.broker.execute_packed(cmds)

    def store_result(self, task_id: str, result, state: str, traceback: str | None = None, **_: object):
        """Celery's backend API: store ``result`` with ``state`` under ``task_id``
        (an exception is stored as the error of the state); returns ``result``."""
        if isinstance(result, BaseException):
            cls = type(result)
            meta = ResultMeta(state, None, cls.__name__, cls.__module__, str(result), traceback, time.time())
        else:
            meta = ResultMeta(state, result, traceback=traceback, date_done=time.time())
        self.store(task_id, meta)
        return result

    def get_state(self, task_id: str) -> str:
        """Celery's backend API: the task's state (PENDING when nothing is stored)."""
        meta = self.get_meta(task_id)
        return meta.state if meta is not None else states.PENDING

    def forget(self, task_id: str) -> None:
        with self.broker.retrying():
            # two commands, not one DEL of two keys: result keys carry no hash tag, so
            # on a cluster the two may live in different slots
            self.broker.execute_packed([pack_command((b"DEL", self.keys.result(task_id))),
                                        pack_command((b"DEL", self.keys.state(task_id)))])

    # --- asyncio (redis.asyncio: the loop is never blocked) -------------------------

    async def wait_async(self, task_id: str, timeout: float | None) -> ResultMeta:
        """``wait`` for async code. A result already stored is read on the loop's
        shared pipeline, so many waits for finished tasks (``gather`` over a
        group) share round trips; one still to come is waited for with BLMOVE on
        the loop's blocking connections, in chunks."""
        key = self.keys.result(task_id)
        (raw,) = await execute_packed_async(self.broker, [pack_command((b"LINDEX", key, b"0"))])
        if raw is not None:
            return decode_result(raw)
        client = client_for(self.broker, blocking=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk = WAIT_CHUNK if deadline is None else min(WAIT_CHUNK, deadline - time.monotonic())
            if chunk <= 0:
                raise FastQTimeout(f"task {task_id} not ready after {timeout} s")
            wait_s = max(chunk, 0.001)
            raw = await _retrying(self.broker, lambda: client.blmove(key, key, wait_s, "LEFT", "LEFT"))  # noqa: B023
            if raw is not None:
                return decode_result(raw)

    async def get_meta_async(self, task_id: str) -> ResultMeta | None:
        """``get_meta`` for async code (on the loop's shared pipeline)."""
        final, partial = await execute_packed_async(self.broker, [
            pack_command((b"LINDEX", self.keys.result(task_id), b"0")), pack_command((b"GET", self.keys.state(task_id)))])
        raw = final if final is not None else partial
        return decode_result(raw) if raw is not None else None

    # --- saved groups (GroupResult.save/restore) ------------------------------------

    def _group_key(self, group_id: str) -> str:
        return f"{self.keys.prefix}g:{group_id}"

    def save_group(self, group_id: str, members: list) -> None:
        """Store a group's member ids (nested lists for nested groups) for ``result_expires``."""
        blob = msgspec.msgpack.encode(members)
        with self.broker.retrying():
            self.broker.execute_packed([pack_command((b"SET", self._group_key(group_id), blob, b"EX", self.expires))])

    def restore_group(self, group_id: str) -> list | None:
        """The member ids ``save_group`` stored (None: unknown, expired, or not a saved group)."""
        with self.broker.retrying():
            (raw,) = self.broker.execute_packed([pack_command((b"GET", self._group_key(group_id)))])
        if raw is None:
            return None
        try:
            members = msgspec.msgpack.decode(raw)
        except msgspec.DecodeError:
            return None  # not written by save_group: treat as unknown rather than fail the caller
        return members if isinstance(members, list) else None

    def forget_group(self, group_id: str) -> None:
        with self.broker.retrying():
            self.broker.execute_packed([pack_command((b"DEL", self._group_key(group_id)))])


__all__ = ["WAIT_CHUNK", "RedisBackend", "pack_store"]
