"""RedisBroker: sending messages, and the queue operations workers and tools use.

Layout per queue (see ``keys.py``): ten priority streams and, beside each, a
"returned" stream for its messages handed back unstarted, all read through one
consumer group; a delayed ZSET; a dead-letter
stream. A message is never popped without being recorded as in flight: the
fetch is XREADGROUP, which adds it to the group's pending list atomically.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

from redis.exceptions import (
    AuthenticationError,
    OutOfMemoryError,
    RedisClusterException,
    ResponseError,
)

from .._speedups import pack_command
from ..events import MAXLEN as EVENTS_MAXLEN
from ..events import encode_events
from ..exceptions import BrokerAuthError, BrokerError, BrokerOutOfMemory, ImproperlyConfigured
from .aioclient import AsyncChannel, execute_packed_async, pipeline_for
from .autopipe import SharedChannel
from .base import Broker
from .channel import Channel
from .cluster import ClusterChannel, is_redirect
from .connect import AUTH_ERRORS, CONNECTION_ERRORS, describe_error, make_client, parse_url, safe_url
from .due import delay_command, due_arg
from .fair import (
    backlog_size,
    delayed_member,
    fair_ack_command,
    heal,
    parse_task_queues,
    publish_commands,
    purge_backlogs,
    queues_with_gates,
    tenant_counts,
    tenant_of,
)
from .fair import (
    promote_command as fair_promote_command,
)
from .keys import CONSUMER_GROUP, Keys, QueueKeys, chord_keys, logical_queue, shard_names, validate_queue_name
from .pubsub import Subscription, ask
from .scripts import NO_GATE, SCRIPTS

log = logging.getLogger("fastq.broker")

#: Guards the making of a broker's SharedChannel; made anew in a forked child, where
#: a copy could be held by a thread that did not survive the fork.
_shared_lock = threading.Lock()


def _new_shared_lock() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_shared_lock)


def is_oom(reply) -> bool:
    """Is this reply Redis refusing a write for memory (maxmemory, noeviction)?"""
    # redis-py turns "-OOM ..." into OutOfMemoryError and drops the prefix
    return isinstance(reply, OutOfMemoryError) or (isinstance(reply, ResponseError) and str(reply).startswith("OOM"))


_MULTI, _EXEC = pack_command((b"MULTI",)), pack_command((b"EXEC",))
_QUEUED = b"QUEUED"  #: the status reply to a command queued in a transaction
#: The size of a chord whose header is still being sent from a generator: no count reaches it.
_UNSEALED = 1 << 40


def transaction(parts: list[bytes], replies: int) -> tuple[bytes, int]:
    """Packed commands wrapped in MULTI/EXEC, and the replies that makes. A worker
    sends a task's result and its ack this way: Redis refuses the result for
    memory (OOM) when it is queued, and then runs none of it (EXECABORT), so an
    ack never lands without its result however memory moves in between."""
    return b"".join((_MULTI, *parts, _EXEC)), replies + 2


def pack_output(out, events_key: bytes | str, hostname: str, gates: dict | None,
                with_results: bool = True) -> tuple[bytes, int, bool]:
    """One write of a consumer's finished work: results, follow-up commands, task
    events and acknowledgements; returns (bytes, replies, sent as a transaction).

    With results it is one transaction, so a task's result and its ack land
    together or not at all (see ``transaction``). An ack is XACK + XDEL: inside
    that transaction, or in its own MULTI/EXEC per stream, never a script: a
    script call costs Redis about as much as the two commands again, on every
    batch (measured: 58 us per EVALSHA of a 2-command script against 9 us for
    the commands), and batches of one are the rule for tasks of milliseconds.
    XACK only touches ids still pending in the group: an entry the reaper moved
    elsewhere has a new id, so a late ack from a cut-off worker changes nothing.
    A fair queue's ack goes through its gate (``gates``: stream -> gate args),
    which also frees the tenant's running slot."""
    if with_results:
        parts = [*out.results, *out.commands]
        n = out.result_replies + out.replies
    else:
        parts = list(out.commands)
        n = out.replies
    if out.events:
        parts.append(_events_command(events_key, hostname, out.events))
        n += 1
    in_tx = with_results and bool(out.results)
    for stream, ids in out.acks.items():
        gate = gates.get(stream) if gates else None
        if gate is not None:
            parts.append(fair_ack_command(gate, stream, ids))
            n += 1
            continue
        ack = (pack_command((b"XACK", stream, CONSUMER_GROUP, *ids)), pack_command((b"XDEL", stream, *ids)))
        if in_tx:
            parts.extend(ack)
            n += 2
        else:
            parts.extend((_MULTI, *ack, _EXEC))
            n += 4
    if in_tx:
        data, n = transaction(parts, n)
        return data, n, True
    return b"".join(parts), n, False


def transaction_replies(replies: list) -> list:
    """The replies of a ``transaction``, flattened: refusals at queue time and
    EXECABORT, or, when it ran, each command's reply."""
    head = replies[:-1]
    # MULTI's OK, then QUEUED for each command: counted in C, the usual case
    # costs no Python step per command (a batch's results make two each).
    if head.count(_QUEUED) + 1 == len(head):
        out = []
    else:
        out = [r for r in head if isinstance(r, ResponseError)]
    last = replies[-1] if replies else None
    if isinstance(last, list):
        out.extend(last)
    elif last is not None:
        out.append(last)
    return out


def auth_failed(url: str, exc: BaseException) -> BrokerAuthError:
    """The error for refused credentials: the same line as every CLI command's (describe_error)."""
    return BrokerAuthError(describe_error(exc, url) or f"Redis at {safe_url(url)} refused the login ({exc})")


def out_of_memory(url: str, exc: BaseException) -> BrokerOutOfMemory:
    return BrokerOutOfMemory(f"Redis at {safe_url(url)} is out of memory and refused the write ({exc}); "
                             "nothing was written: free memory or raise maxmemory, then retry")


class RedisBroker(Broker):
    """The Redis side of fastq, shared by producers, workers and tools (the
    contract, ``fastq.broker.base.Broker``, documents each operation)."""

    def __init__(self, url: str, conf) -> None:
        self.url = url
        self.target = parse_url(url)
        self.conf = conf
        self.keys = Keys(conf.key_prefix)
        self.retries = int(conf.broker_connection_retries)
        self._kwargs = {
            "socket_connect_timeout": float(conf.broker_connection_timeout),
            "socket_timeout": float(conf.broker_socket_timeout),
            "health_check_interval": 0,
            # RESP2: replies are plain arrays, the shape the hot path parses.
            "protocol": 2,
        }
        try:
            self.client = self.new_client()
        except RedisClusterException as exc:  # a cluster client connects at once to learn the slots
            raise BrokerError(f"Redis Cluster at {safe_url(url)} is unreachable: {exc}") from exc
        self.wait_replicas = int(conf.get("broker_wait_replicas") or 0)
        self.wait_timeout = float(conf.get("broker_wait_timeout") or 1.0)
        self._local = threading.local()
        self._shared_channel: SharedChannel | None = None
        self._known_queues: set[str] = set()
        self.shards = _parse_shards(conf.get("queue_shards"))
        self._next_shard = itertools.count()
        #: Fair queues (``task_queues`` with ``fair_tenants``): name -> broker.fair.FairQueue.
        self.fair = parse_task_queues(conf)
        self._fair_known: set[str] = set()
        both = sorted(set(self.shards) & set(self.fair or ()))
        if both:
            raise ImproperlyConfigured(f"queue {both[0]!r} is in queue_shards and has fair_tenants: "
                                       "a fair queue cannot be sharded (its gate lives in one slot)")

    # --- connections ------------------------------------------------------------

    @property
    def db(self) -> int:
        """The database number (always 0 on a cluster)."""
        if self.target.kind == "redis":
            return int(self.client.connection_pool.connection_kwargs.get("db", 0))
        return self.target.db

    @property
    def is_cluster(self) -> bool:
        return self.target.is_cluster

    def gate_args(self, queue: str) -> tuple:
        """What the scripts that serve plain and fair queues (release, reap, bury,
        retry) take for ``queue``'s gate: its FairQueue.gate_args, or NO_GATE."""
        fq = self.fair.get(queue) if self.fair else None
        return fq.gate_args if fq is not None else NO_GATE

    def clock(self, key: str, client=None) -> float:
        """Seconds since the epoch on the Redis server that holds ``key``. Worker
        heartbeats are written and aged on this clock: the hosts' clocks may differ."""
        c = client or self.client
        if self.is_cluster:
            secs, usecs = c.time(target_nodes=c.get_node_from_key(key))
        else:
            secs, usecs = c.time()
        return secs + usecs / 1e6

    def connection_options(self) -> dict:
        """Timeouts and RESP2, as every connection of this broker uses them."""
        return dict(self._kwargs)

    def new_client(self, **overrides):
        """A redis-py client (Redis, RedisCluster, or Sentinel's master) with its own connections."""
        return make_client(self.target, **{**self._kwargs, **overrides})

    def new_async_channel(self, **overrides) -> AsyncChannel:
        """A raw asyncio channel, owned by the caller (the asyncio consumer's fetch and writes)."""
        return AsyncChannel(self.url, {**self._kwargs, **overrides})

    def new_channel(self, **overrides) -> Channel | ClusterChannel:
        """A raw channel, owned by the caller (workers use one per consumer)."""
        client = self.new_client(**overrides)
        if self.is_cluster:
            return ClusterChannel(client)
        return Channel(client.connection_pool.make_connection())

    @contextlib.contextmanager
    def retrying(self) -> Iterator[None]:
        """Turn a connection error in the block into BrokerError (naming the server,
        password hidden). A context manager cannot run its block a second time, so
        this does not retry: it used to try, and raised RuntimeError ("generator
        didn't stop after throw()") instead. Sends retry in ``execute_packed``."""
        try:
            yield
        except CONNECTION_ERRORS as exc:
            raise self.unreachable(exc) from exc

    def unreachable(self, exc: BaseException) -> BrokerError:
        """The BrokerError for a connection error: one line naming the server
        (password hidden), and saying so when the server refused the login."""
        return BrokerError(describe_error(exc, self.url) or f"Redis at {safe_url(self.url)} is unreachable: {exc}")

    def check_connection(self, wait: float = 0.0) -> None:
        """Ping the server (the CLI's start-up check). An unreachable server is
        tried ``broker_connection_retries`` times and, for up to ``wait`` seconds,
        again with one log line per attempt (a worker may start before its Redis);
        then, or at once when the server refuses the login, BrokerError."""
        deadline = time.monotonic() + wait
        delay = 0.5
        for attempt in itertools.count():
            try:
                self.client.ping()
                return
            except AUTH_ERRORS as exc:
                raise auth_failed(self.url, exc) from exc
            except CONNECTION_ERRORS as exc:
                if isinstance(exc, AuthenticationError):  # a retry cannot fix a password
                    raise self.unreachable(exc) from exc
                if attempt < self.retries:
                    self._backoff(attempt)
                    continue
                if time.monotonic() + delay > deadline:
                    raise self.unreachable(exc) from exc
                log.error("Cannot connect to %s: %s. Trying again in %.1fs.", safe_url(self.url), exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _shared(self) -> SharedChannel:
        """The connection this process's threads share for their sends and short
        reads (``fastq.broker.autopipe``); never a parent's after a fork."""
        sc = self._shared_channel
        if sc is None or sc.pid != os.getpid():
            with _shared_lock:
                sc = self._shared_channel
                if sc is None or sc.pid != os.getpid():
                    sc = self._shared_channel = SharedChannel(self._new_plain_channel, self.conf)
        return sc

    def _new_plain_channel(self) -> Channel:
        return Channel(self.new_client().connection_pool.make_connection())

    def _round_trip(self, data: bytes, n: int) -> list:
        """Write packed commands and read their ``n`` replies: on the shared
        connection, or on a cluster this thread's routing channel."""
        if not self.is_cluster:
            return self._shared().execute(data, n)
        ch = self._channel()
        try:
            ch.send(data)
            return ch.read_many(n)
        except BaseException:
            self._drop_channel(ch)
            raise

    def _reconnect(self) -> None:
        """Connect again before the next send (a master that was demoted: Sentinel names the new one)."""
        if self.is_cluster:
            ch = getattr(self._local, "channel", None)
            if ch is not None:
                self._drop_channel(ch)
        else:
            self._shared().reconnect()

    def _channel(self) -> Channel:
        """This thread's raw channel: bulk sends (``start_packed``) and, on a cluster, every send."""
        loc = self._local
        ch = getattr(loc, "channel", None)
        if ch is None or loc.pid != os.getpid():
            ch = loc.channel = self.new_channel()
            loc.pid = os.getpid()
        return ch

    def execute_packed(self, commands: list[bytes], confirm: bool = False) -> list:
        """Send packed commands in one write and read every reply, retrying on
        connection errors (a retried publish may then be sent twice: at least once)
        and sending again what a cluster redirected or a demoted master refused.
        An error reply raises ResponseError after all replies were read. With
        ``confirm`` (sends of messages) and ``broker_wait_replicas``, the call
        returns only once that many replicas have the writes (WAIT), else raises
        BrokerError."""
        replies: list = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(self.retries + 2):
            try:
                got = self._round_trip(b"".join([commands[i] for i in todo]), len(todo))
            except AUTH_ERRORS as exc:
                raise auth_failed(self.url, exc) from exc
            except CONNECTION_ERRORS as exc:
                if attempt >= self.retries:
                    raise self.unreachable(exc) from exc
                self._backoff(attempt)
                continue
            redo = []
            for i, reply in zip(todo, got):
                replies[i] = reply
                if is_redirect(reply) or (isinstance(reply, ResponseError) and "NOSCRIPT" in str(reply)):
                    redo.append(i)
            if not redo:
                break
            if any(is_redirect(replies[i]) for i in redo):
                if self.is_cluster:
                    self._channel().refresh()  # keep the connections: a later WAIT covers what they sent
                else:  # a demoted master: reconnect (Sentinel names the new one) and send all again
                    self._reconnect()
                    redo = list(range(len(commands)))
                self._backoff(attempt)
            else:
                SCRIPTS.load_all(self.client)
            todo = redo
        error = next((r for r in replies if isinstance(r, ResponseError)), None)
        if error is not None:
            if is_redirect(error):
                raise BrokerError(f"Redis at {safe_url(self.url)} kept refusing writes: {error}")
            if is_oom(error):
                raise out_of_memory(self.url, error) from error
            raise error
        if confirm and self.wait_replicas:
            self._wait_for_replicas(commands)
        return replies

    def _wait_for_replicas(self, commands: list[bytes], ch=None) -> None:
        """WAIT on every connection that carried the writes (one per master on a
        cluster): ``ch``, the channel that sent them, else the connection
        ``_round_trip`` uses. WAIT counts every write its connection sent before
        it, so on the shared connection it also covers other callers' writes."""
        wait = pack_command((b"WAIT", self.wait_replicas, int(self.wait_timeout * 1000)))
        # On a cluster a keyed probe steers each WAIT to one master that took writes.
        probes = self._channel().probes_for(b"".join(commands)) if self.is_cluster else [b""]
        n = len(probes) * (2 if self.is_cluster else 1)
        data = b"".join(probe + wait for probe in probes)
        try:
            if ch is None:
                replies = self._round_trip(data, n)
            else:
                ch.send(data)
                replies = ch.read_many(n)
        except CONNECTION_ERRORS as exc:
            if ch is not None:
                self._drop_channel(ch)
            raise BrokerError(f"could not confirm a send's replication at {safe_url(self.url)}: {exc}") from exc
        acked = replies[1::2] if self.is_cluster else replies
        worst = min((r if isinstance(r, int) else 0) for r in acked)
        if worst < self.wait_replicas:
            raise BrokerError(
                f"only {worst} of {self.wait_replicas} replicas confirmed a send within {self.wait_timeout}s "
                "(broker_wait_replicas): it is in Redis but may not survive a failover"
            )

    def _drop_channel(self, ch) -> None:
        ch.close()
        if getattr(self._local, "channel", None) is ch:
            self._local.channel = None

    @staticmethod
    def _backoff(attempt: int) -> None:
        time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))

    def start_packed(self, commands: list[bytes]) -> tuple:
        """Send without waiting; ``finish_packed`` reads the replies later, so the
        caller can prepare the next batch while Redis works on this one."""
        ch = self._channel()
        try:
            ch.send(b"".join(commands))
        except CONNECTION_ERRORS:
            ch.close()
            return (commands, None)
        return (commands, ch)

    def finish_packed(self, handle: tuple) -> list:
        commands, ch = handle
        if ch is not None:
            try:
                replies = ch.read_many(len(commands))
            except CONNECTION_ERRORS:
                ch.close()
            else:
                if not any(isinstance(r, ResponseError) for r in replies):
                    if self.wait_replicas:
                        self._wait_for_replicas(commands, ch)
                    return replies
        return self.execute_packed(commands, confirm=True)  # retries, loads scripts, raises what is left

    # --- sending ----------------------------------------------------------------

    def _register_queue_cmd(self, queue: str) -> bytes | None:
        if queue in self._known_queues:
            return None
        if self.fair and queue in self.fair:
            # Never in _known_queues: publish()'s one-XADD fast path would skip the gate.
            if queue in self._fair_known:
                return None
            self._fair_known.add(queue)
        else:
            self._known_queues.add(queue)
        return pack_command((b"SADD", self.keys.queues_set, queue))

    def _send_keys(self, queue: str) -> QueueKeys:
        """The keys a message for ``queue`` goes to: on a sharded queue, the next shard in turn."""
        n = self.shards.get(queue)
        if n:
            return self.keys.queue(f"{queue}~{next(self._next_shard) % n}")
        return self.keys.queue(queue)

    def physical_queues(self, name: str) -> list[str]:
        """The queues that hold ``name``'s messages: itself and, when sharded, its shards
        (a worker also reads the queue itself, so a producer without the shard setting loses nothing)."""
        n = self.shards.get(name)
        return [name, *shard_names(name, n)] if n else [name]

    def expand_queues(self, names: list[str]) -> list[str]:
        return [p for name in names for p in self.physical_queues(name)]

    def _publish_cmd(self, queue: str, priority: int, field: bytes, payload: bytes, due: float | None) -> bytes:
        qk = self._send_keys(queue)
        if due is None:
            return pack_command((b"XADD", qk.streams[priority], b"*", field, payload))
        return delay_command(qk.delayed, [(due, field + b"%d" % priority + payload)])

    def publish_commands(self, queue: str, priority: int, field: bytes, payload: bytes,
                         due: float | None = None) -> list[bytes]:
        """The packed commands that send one message: through the gate of a fair
        queue, else to its priority stream or, with a due time, the delayed set;
        plus the queue's registration on its first send. Every sender (sync,
        asyncio) sends what this returns, so none can bypass the gate."""
        fq = self.fair.get(queue) if self.fair else None
        if fq is not None:  # through the gate (fastq.fairness)
            cmds = publish_commands(fq, [(priority, due, payload)], field)
        else:
            cmds = [self._publish_cmd(queue, priority, field, payload, due)]
        register = self._register_queue_cmd(queue)
        return cmds if register is None else [*cmds, register]

    def _gate(self, queue: str, field: bytes, payload: bytes) -> tuple:
        """The gate arguments of a fair queue and the message's group, as the
        gate-aware scripts take them after their own; () for a plain queue."""
        fq = self.fair.get(queue) if self.fair else None
        return () if fq is None else (*fq.gate_args, tenant_of(field, payload).encode())

    def unique_lock(self, queue: str, key: str) -> str:
        """The name of a unique send's lock: the message carries it, so the worker
        frees it when the task ends (``unique_release_command``)."""
        return self.keys.unique_lock(queue, key)

    def debounce_record(self, queue: str, key: str) -> str:
        """The name of a debounce window's record (``debounce_commands``)."""
        return self.keys.debounce_record(queue, key)

    def unique_publish_commands(self, queue: str, priority: int, field: bytes, payload: bytes, due: float | None,
                                lock: str, ttl_ms: int, task_id: str) -> list[bytes]:
        """Send one message unless ``lock`` is held (unique_publish.lua, which
        returns the holder's task id); through the gate on a fair queue."""
        qk = self.keys.queue(queue)
        gate = self._gate(queue, field, payload)
        item = field + b"%d" % priority + payload
        if due is not None:
            member = delayed_member(gate[-1].decode(), field, priority, payload) if gate else item
            args: tuple = (qk.delayed, task_id, ttl_ms, due_arg(due), member, b"")
        elif gate:
            args = (qk.delayed, task_id, ttl_ms, b"0", item, b"", *gate)  # the delayed key: the queue's slot
        else:
            args = (qk.streams[priority], task_id, ttl_ms, b"0", field, payload)
        cmd = pack_command((b"EVALSHA", SCRIPTS.unique_publish.sha_bytes, 2, lock, *args))
        register = self._register_queue_cmd(queue)
        return [cmd] if register is None else [cmd, register]

    def debounce_commands(self, queue: str, priority: int, field: bytes, payload: bytes, due: float,
                          record: str, record_ttl_ms: int, task_id: str) -> list[bytes]:
        """Replace the pending message of a debounce window, or file a new one
        (debounce.lua, which returns the window's task id); on a fair queue the
        delayed member carries the message's group, so it passes the gate when due."""
        gate = self._gate(queue, field, payload)
        member = delayed_member(gate[-1].decode(), field, priority, payload) if gate else field + b"%d" % priority + payload
        offset = len(member) - len(payload) + payload.find(task_id.encode())  # the id is in the envelope
        cmd = pack_command((b"EVALSHA", SCRIPTS.debounce.sha_bytes, 2, record, self.keys.queue(queue).delayed,
                            task_id, due_arg(due), member, offset, record_ttl_ms))
        register = self._register_queue_cmd(queue)
        return [cmd] if register is None else [cmd, register]

    def beat_send_command(self, entry: str, queue: str, priority: int, field: bytes, payload: bytes,
                          due_ms: int, task_id: str) -> bytes:
        """A periodic run, sent once per entry and due time (beat_send.lua: 1 when
        sent); through the gate on a fair queue."""
        stream = self.keys.queue(queue).streams[priority]
        state = self.keys.beat_state(queue, entry)
        return pack_command((b"EVALSHA", SCRIPTS.beat_send.sha_bytes, 2, state, stream, due_ms, task_id,
                             field, payload, b"%d" % priority, *self._gate(queue, field, payload)))

    def publish(self, queue: str, priority: int, field: bytes, payload: bytes, due: float | None = None) -> None:
        """Send one message: to its priority stream, or to the delayed set when it has a due time."""
        if queue in self._known_queues and not self.wait_replicas:  # never a fair queue (_register_queue_cmd)
            # The common case, one command and one reply: skip the batch machinery
            # (it is a sizeable share of a call that is mostly one round trip).
            cmd = self._publish_cmd(queue, priority, field, payload, due)
            try:
                if not isinstance(self._round_trip(cmd, 1)[0], ResponseError):
                    return
            except CONNECTION_ERRORS:
                pass
            self.execute_packed([cmd], confirm=True)  # retries, reconnects, raises BrokerError
            return
        self.execute_packed(self.publish_commands(queue, priority, field, payload, due), confirm=True)

    async def publish_async(self, queue: str, priority: int, field: bytes, payload: bytes,
                            due: float | None = None) -> None:
        """``publish`` for async code: the same commands (``publish_commands``: a
        fair queue's gate, the stream or the delayed set) in the running loop's
        shared write (``fastq.broker.autopipe``); only the waiting differs."""
        if queue in self._known_queues and not self.is_cluster:  # never a fair queue (_register_queue_cmd)
            # As in publish(): one command, one reply; the retrying path only on trouble.
            cmd = self._publish_cmd(queue, priority, field, payload, due)
            try:
                if not isinstance(await pipeline_for(self).execute_one(cmd), ResponseError):
                    return
            except CONNECTION_ERRORS:
                pass
            await execute_packed_async(self, [cmd])
            return
        await execute_packed_async(self, self.publish_commands(queue, priority, field, payload, due))

    async def execute_packed_async(self, commands: list[bytes]) -> list:
        """``execute_packed`` for async code: the replies (an error reply is raised)."""
        return await execute_packed_async(self, commands)

    def publish_many(self, batch: list[tuple], field: bytes) -> None:
        """Send (queue, priority, due, payload) tuples in one pipelined round trip."""
        self.execute_packed(self.publish_many_commands(batch, field), confirm=True)

    def publish_many_commands(self, batch: list[tuple], field: bytes) -> list[bytes]:
        """One publish_many.lua call per stream, one delay.lua call per delayed set."""
        ready: dict[str, list] = {}
        delayed: dict[str, list] = {}
        fair = self.fair
        gated: dict[str, list] = {}
        for queue, priority, due, payload in batch:
            if fair and queue in fair:
                gated.setdefault(queue, []).append((priority, due, payload))
                continue
            qk = self._send_keys(queue)
            if due is None:
                ready.setdefault(qk.streams[priority], []).append(payload)
            else:
                delayed.setdefault(qk.delayed, []).append((due, field + b"%d" % priority + payload))
        sha = SCRIPTS.publish_many.sha_bytes
        cmds = [pack_command((b"EVALSHA", sha, 1, stream, field, *payloads)) for stream, payloads in ready.items()]
        cmds.extend(delay_command(key, items) for key, items in delayed.items())
        if gated:
            for queue, items in gated.items():
                cmds.extend(publish_commands(fair[queue], items, field))
        for q in {b[0] for b in batch}:
            reg = self._register_queue_cmd(q)
            if reg is not None:
                cmds.append(reg)
        return cmds

    # --- queues -----------------------------------------------------------------

    def queue(self, name: str) -> QueueKeys:
        return self.keys.queue(name)

    def ensure_queue(self, name: str, client=None) -> QueueKeys:
        """Create the consumer group on every stream of the queue (from the start,
        so messages sent before any worker existed are served)."""
        qk = self.keys.queue(name)
        c = client or self.client
        pipe = c.pipeline(transaction=False)
        for key in qk.fetch_order:
            pipe.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
        pipe.sadd(self.keys.queues_set, logical_queue(name))
        replies = pipe.execute(raise_on_error=False)
        for key, r in zip(qk.fetch_order, replies):
            if is_oom(r):
                # Under maxmemory even an existing group's XGROUP CREATE is refused:
                # only a group that is really missing is an error (BrokerOutOfMemory,
                # which the worker's start-up retries).
                try:
                    groups = c.xinfo_groups(key)
                except ResponseError:  # no such stream
                    groups = []
                if not any(g["name"] == CONSUMER_GROUP.encode() for g in groups):
                    raise out_of_memory(self.url, r)
            elif isinstance(r, ResponseError) and "BUSYGROUP" not in str(r):
                raise r
        if isinstance(replies[-1], ResponseError) and not is_oom(replies[-1]):  # the registry may wait for memory
            raise replies[-1]
        return qk

    def known_queues(self) -> list[str]:
        return sorted(q.decode() for q in self.client.smembers(self.keys.queues_set))

    def queue_stats(self, name: str) -> dict:
        """waiting, in_flight, delayed and dead-lettered counts of a queue (all its shards)."""
        rows = [self._queue_stats_one(p) for p in self.physical_queues(name)]
        if len(rows) == 1:
            return rows[0]
        total = {k: sum(r[k] for r in rows) for k in ("waiting", "in_flight", "delayed", "dead")}
        return {"queue": name, **total, "shards": len(rows) - 1}

    def _queue_stats_one(self, name: str) -> dict:
        qk = self.keys.queue(name)
        pipe = self.client.pipeline(transaction=False)
        for key in qk.fetch_order:
            pipe.xlen(key)
            pipe.xpending(key, CONSUMER_GROUP)
        pipe.zcard(qk.delayed)
        pipe.xlen(qk.dlq)
        replies = pipe.execute(raise_on_error=False)
        total = in_flight = 0
        for i in range(len(qk.fetch_order)):
            length, pending = replies[2 * i], replies[2 * i + 1]
            if isinstance(length, int):
                total += length
            if isinstance(pending, dict):
                in_flight += pending.get("pending", 0)
        delayed, dead = replies[-2], replies[-1]
        stats = {
            "queue": name,
            "waiting": max(0, total - in_flight),
            "in_flight": in_flight,
            "delayed": delayed if isinstance(delayed, int) else 0,
            "dead": dead if isinstance(dead, int) else 0,
        }
        fq = self.fair.get(name) if self.fair else None
        if fq is not None:  # a fair queue's waiting messages include its groups' backlogs
            stats["backlog"] = backlog_size(self.client, fq)
            stats["waiting"] += stats["backlog"]
        return stats

    def queue_totals(self, names: list[str]) -> dict[str, tuple[int, int] | None]:
        """queue -> (entries ever added, entries now present) over its streams; None
        when Redis does not report ``entries-added`` (before 7.0). The dashboard's
        in/out rates are differences of these."""
        pipe = self.client.pipeline(transaction=False)
        layout = []
        for q in names:
            streams = self.keys.queue(q).fetch_order
            for s in streams:
                pipe.execute_command("XINFO", "STREAM", s)
            layout.append((q, len(streams)))
        replies = pipe.execute(raise_on_error=False)
        out: dict[str, tuple[int, int] | None] = {}
        i = 0
        for q, n in layout:
            added = length = 0
            ok = True
            for r in replies[i : i + n]:
                if isinstance(r, Exception):  # a stream not created yet
                    continue
                info = _pairs(r)
                if b"entries-added" not in info and "entries-added" not in info:
                    ok = False
                    break
                added += int(info.get(b"entries-added", info.get("entries-added", 0)))
                length += int(info.get(b"length", info.get("length", 0)))
            out[q] = (added, length) if ok else None
            i += n
        return out

    def stream_entries(self, name: str, limit: int) -> Iterator[tuple[str, bytes, dict]]:
        """(stream, entry id, fields) of queue ``name``'s messages in its streams,
        the first ``limit`` of each stream: for looking a task up, not hot paths."""
        for stream in self.keys.queue(name).fetch_order:
            for entry_id, fields in self.client.xrange(stream, count=limit):
                yield stream, entry_id, fields

    def is_held(self, stream: str, entry_id: bytes) -> bool:
        """Has a consumer fetched this entry and not acked it yet?"""
        try:
            return bool(self.client.xpending_range(stream, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1))
        except ResponseError:  # no consumer group yet: no worker ever read this queue
            return False

    def purge(self, name: str) -> int:
        """Drop the queue's waiting and delayed messages (all its shards); return how many."""
        return sum(self._purge_one(p) for p in self.physical_queues(name))

    def _purge_one(self, name: str) -> int:
        stats = self._queue_stats_one(name)
        qk = self.keys.queue(name)
        pipe = self.client.pipeline(transaction=True)
        for key in qk.fetch_order:
            pipe.xtrim(key, maxlen=0, approximate=False)
        pipe.delete(qk.delayed)
        pipe.execute()
        fq = self.fair.get(name) if self.fair else None
        if fq is not None:  # drop the backlogs, then recount what is still in flight
            purge_backlogs(self.client, fq)
            heal(self.client, fq, "purge", 1000)
        return stats["waiting"] + stats["delayed"]

    # --- fetching (the consumer loops send these on their own channel) ----------------

    def ping(self) -> None:
        """One round trip; raises what the connection raises (fail fast, with the URL)."""
        self.client.ping()

    def streams_of(self, name: str) -> list[str]:
        """Queue ``name``'s streams, in the order a fetch takes them."""
        return self.keys.queue(name).fetch_order

    def output_command(self, out, hostname: str, gates: dict | None,
                       with_results: bool = True) -> tuple[bytes, int, bool]:
        """One write of a consumer's finished work (``pack_output``), with this
        broker's event stream."""
        return pack_output(out, self.keys.events, hostname, gates, with_results)

    def load_scripts(self) -> None:
        """Load every Lua script (after Redis restarted and lost them: NOSCRIPT)."""
        SCRIPTS.load_all(self.client)

    def fetch_command(self, name: str, consumer: str, count: int) -> bytes:
        """Take up to ``count`` messages of queue ``name`` for ``consumer``, highest
        priority first, handed-back ones before new ones (fetch.lua; one round trip)."""
        streams = self.keys.queue(name).fetch_order
        return pack_command((b"EVALSHA", SCRIPTS.fetch.sha_bytes, len(streams), *streams, CONSUMER_GROUP,
                             consumer, count))

    def blocking_fetch_commands(self, names: list[str], consumer: str, count: int, block_ms: int) -> list[bytes]:
        """Wait up to ``block_ms`` for a message on any stream of ``names``: one
        XREADGROUP BLOCK over all of them; on a cluster, where one command may only
        touch one slot, one per queue, each with a shorter block when there are
        several, so an idle consumer taking them in turn still looks at each often."""
        def block(queues: list[str], ms: int) -> bytes:
            keys = [k for q in queues for k in self.keys.queue(q).fetch_order]
            return pack_command((b"XREADGROUP", b"GROUP", CONSUMER_GROUP, consumer, b"COUNT", count,
                                 b"BLOCK", ms, b"STREAMS", *keys, *([b">"] * len(keys))))
        if not self.is_cluster:
            return [block(names, block_ms)]
        ms = block_ms if len(names) == 1 else max(1, min(block_ms, 100))
        return [block([q], ms) for q in names]

    def held_command(self, stream: str, consumer: str) -> bytes:
        """Read back the entries ``consumer`` holds on ``stream`` (after a reconnect:
        fetched before the connection broke, never run)."""
        return pack_command((b"XREADGROUP", b"GROUP", CONSUMER_GROUP, consumer, b"COUNT", 100000,
                             b"STREAMS", stream, b"0"))

    def ack_entry(self, stream: str, entry_id: bytes, client=None) -> None:
        """Acknowledge one entry now (ack.lua: XACK and XDEL), outside a consumer's flush."""
        SCRIPTS.ack(client or self.client, [stream], [CONSUMER_GROUP, entry_id])

    # --- maintenance (any worker runs these) -------------------------------------

    def renew(self, name: str, consumers: list[str], min_idle_ms: int, client=None) -> int:
        qk = self.keys.queue(name)
        return SCRIPTS.renew(client or self.client, qk.fetch_order, [CONSUMER_GROUP, min_idle_ms, *consumers])

    def reap(self, name: str, reaper: str, lease_ms: int, max_deliveries: int, lock_ms: int, client=None):
        qk = self.keys.queue(name)
        fq = self.fair.get(name) if self.fair else None
        return SCRIPTS.reap(
            client or self.client,
            [qk.reap_lock, qk.dlq, *qk.fetch_order],
            [CONSUMER_GROUP, lease_ms, max_deliveries, 10000, reaper, lock_ms, name, *(fq.gate_args if fq else ())],
        )

    def promote_commands(self, names: list[str], limit: int = 1000) -> list[bytes]:
        """Packed promotions of due delayed messages, one per physical queue
        (through the gate on a fair queue, which also pumps its backlog)."""
        cmds = []
        for q in self.expand_queues(names):
            fq = self.fair.get(q) if self.fair else None
            if fq is not None:
                cmds.append(fair_promote_command(fq, limit))
                continue
            qk = self.keys.queue(q)
            cmds.append(pack_command((b"EVALSHA", SCRIPTS.promote.sha_bytes, 2 + len(qk.streams), qk.delayed,
                                      *qk.streams, qk.dlq, limit, q)))
        return cmds

    # --- a message's end (the worker adds these to the flush that acks it) ------------

    def bury_command(self, stream: str, queue: str, consumer: str, entry_id: bytes, reason: str | bytes,
                     error: str | bytes) -> bytes:
        """Move one held entry to its queue's dead letters with a reason (bury.lua: fenced,
        atomic; on a fair queue its gate place is freed)."""
        qk = self.keys.queue(queue)
        return pack_command((b"EVALSHA", SCRIPTS.bury.sha_bytes, 2, stream, qk.dlq, CONSUMER_GROUP, consumer,
                             qk.name, *self.gate_args(queue), entry_id, reason, error))

    def retry_command(self, stream: str, queue: str, consumer: str, entry_id: bytes, priority: int, due: bytes,
                      arg5: bytes, arg6: bytes) -> bytes:
        """Move one held entry to the delayed set, due at ``due``, bound for the stream
        of ``priority`` (retry.lua: fenced, atomic; on a fair queue the message keeps its tenant)."""
        qk = self.keys.queue(queue)
        return pack_command((b"EVALSHA", SCRIPTS.retry.sha_bytes, 3, stream, qk.delayed, qk.streams[priority],
                             CONSUMER_GROUP, consumer, entry_id, due, arg5, arg6, *self.gate_args(queue)))

    def unique_release_command(self, lock: str, task_id: str) -> bytes:
        """Free a unique lock if ``task_id`` still holds it (unique_release.lua)."""
        return pack_command((b"EVALSHA", SCRIPTS.unique_release.sha_bytes, 1, lock, task_id))

    # --- chords ----------------------------------------------------------------------

    def chord_open_commands(self, chord_id: str, size: int | None, body: bytes, expires: int) -> list[bytes]:
        """Record a chord before its header tasks are sent: its size and body. HSETNX
        on the state: sending the same chord again (a re-run step) never reopens a
        decided chord. Size None: a size no header can reach, until chord_seal."""
        meta, _ = chord_keys(self.keys.prefix, chord_id)
        if size is None:
            size = _UNSEALED
        return [pack_command((b"HSET", meta, b"n", size, b"body", body)),
                pack_command((b"HSETNX", meta, b"state", b"open")),
                pack_command((b"EXPIRE", meta, expires))]

    def chord_done(self, chord_id: str, mode: bytes | str, index: int, value: bytes, expires: int,
                   redelivered: bool = False) -> list:
        """Record one header task's result or failure (chord_done.lua); the script's
        reply says whether this call decided the chord, and with what. Synchronous:
        the decision shapes the caller's flush. Only a ``redelivered`` message gets
        a decision again that its index already made."""
        meta, res = chord_keys(self.keys.prefix, chord_id)
        cmd = pack_command((b"EVALSHA", SCRIPTS.chord_done.sha_bytes, 2, meta, res, mode, index, value, expires,
                            b"1" if redelivered else b"0"))
        return self.execute_packed([cmd])[0]

    def chord_seal(self, chord_id: str, size: int, expires: int) -> list:
        """Give a chord opened without a size its size (chord_seal.lua); the reply is
        chord_done's {1, body, results} when every header task had finished already."""
        meta, res = chord_keys(self.keys.prefix, chord_id)
        cmd = pack_command((b"EVALSHA", SCRIPTS.chord_seal.sha_bytes, 2, meta, res, size, _UNSEALED, expires))
        return self.execute_packed([cmd])[0]

    def chord_reopen_commands(self, chord_id: str) -> list[bytes]:
        """chord_reopen.lua: a chord that ran to its end is forgotten, so the same
        frozen chord applied again is a new run; one still running is left alone."""
        meta, res = chord_keys(self.keys.prefix, chord_id)
        return [pack_command((b"EVALSHA", SCRIPTS.chord_reopen.sha_bytes, 2, meta, res))]

    def chord_grow(self, chord_id: str) -> int:
        """One more header task (``Task.add_to_chord``): the chord's size grows by one;
        returns the new task's header index. Only a running header task calls it,
        so the chord cannot complete meanwhile (its own result is still to come)."""
        meta, _ = chord_keys(self.keys.prefix, chord_id)
        size = self.execute_packed([pack_command((b"HINCRBY", meta, b"n", 1))])[0]
        if size <= 1:  # no such chord: HINCRBY made a hash of its own
            self.execute_packed([pack_command((b"DEL", meta))])
            raise ValueError(f"chord {chord_id} is unknown (expired or never sent)")
        return size - 1

    def chord_sent_commands(self, chord_id: str) -> list[bytes]:
        """After the body (or its failure) went out: a replay is a no-op from now on,
        so the body and the header results are no longer needed."""
        meta, res = chord_keys(self.keys.prefix, chord_id)
        return [pack_command((b"HSET", meta, b"sent", b"1")), pack_command((b"HDEL", meta, b"body")),
                pack_command((b"DEL", res))]

    def promote(self, name: str, limit: int = 1000, client=None) -> int:
        qk = self.keys.queue(name)
        fq = self.fair.get(name) if self.fair else None
        if fq is not None:
            return SCRIPTS.fair_promote(client or self.client, [qk.delayed, qk.dlq], [*fq.gate_args, limit, name])
        return SCRIPTS.promote(client or self.client, [qk.delayed, *qk.streams, qk.dlq], [limit, name])

    def release(self, stream: str, queue: str, consumer: str, ids: list, strike: bytes = b"", client=None) -> list:
        """Hand back entries ``consumer`` holds (see release.lua); returns [moved, dead_lettered]."""
        qk = self.keys.queue(queue)
        gate = self.gate_args(queue)
        total = [0, 0]
        for i in range(0, len(ids), 2000):
            moved, buried = SCRIPTS.release(
                client or self.client,
                [stream, qk.returned_of[stream], qk.dlq],
                [CONSUMER_GROUP, consumer, strike, int(self.conf.worker_max_deliveries), queue, *gate, *ids[i : i + 2000]],
            )
            total[0] += moved
            total[1] += buried
        return total

    def pending_of(self, stream: str, consumer: str, client=None) -> list[bytes]:
        """Entry ids ``consumer`` holds on ``stream``."""
        c = client or self.client
        out: list[bytes] = []
        start = "-"
        while True:
            try:
                rows = c.xpending_range(stream, CONSUMER_GROUP, min=start, max="+", count=1000, consumername=consumer)
            except ResponseError:  # no group (the stream was deleted): nothing is pending
                return out
            if not rows:
                return out
            out.extend(r["message_id"] for r in rows)
            if len(rows) < 1000:
                return out
            last = rows[-1]["message_id"].decode()
            ms, seq = last.split("-")
            start = f"{ms}-{int(seq) + 1}"

    def release_consumer(self, name: str, consumer: str, strike: bytes = b"", client=None) -> list:
        """Hand back everything ``consumer`` holds on queue ``name`` (a pool child
        that died, or a worker shutting down at once). ``strike`` names the entry
        it was running, whose delivery count goes up (``b"*"``: every entry's).
        Returns [moved, dead_lettered]."""
        qk = self.keys.queue(name)
        total = [0, 0]
        for stream in qk.fetch_order:
            ids = self.pending_of(stream, consumer, client)
            if ids:
                moved, buried = self.release(stream, name, consumer, ids, strike, client)
                total[0] += moved
                total[1] += buried
        return total

    def release_worker(self, name: str, worker: str, strike: bytes = b"*", client=None) -> list:
        """Hand back everything the consumers of worker ``worker`` (named
        ``<worker>/<pid>.<n>``) hold on queue ``name``: a dead predecessor whose name a
        new worker took. ``strike`` as release_consumer's. Returns [moved, dead_lettered]."""
        c = client or self.client
        prefix = f"{worker}/".encode()
        total = [0, 0]
        for stream in self.keys.queue(name).fetch_order:
            try:
                consumers = c.xinfo_consumers(stream, CONSUMER_GROUP)
            except ResponseError:  # no stream or group yet: nothing is held
                continue
            for info in consumers:
                consumer = info.get("name")
                consumer = consumer if isinstance(consumer, bytes) else str(consumer).encode()
                if consumer.startswith(prefix) and info.get("pending"):
                    ids = self.pending_of(stream, consumer.decode(), c)
                    if ids:
                        moved, buried = self.release(stream, name, consumer.decode(), ids, strike, c)
                        total[0] += moved
                        total[1] += buried
        return total

    def read_entry(self, name: str, entry_id: bytes, client=None) -> tuple[str, dict] | None:
        """Find a pending entry of queue ``name`` by id: (stream, fields)."""
        c = client or self.client
        for stream in self.keys.queue(name).fetch_order:
            rows = c.xrange(stream, entry_id, entry_id)
            if rows:
                return stream, rows[0][1]
        return None

    # --- dead letters -------------------------------------------------------------

    def dlq_list(self, name: str, limit: int = 100) -> list[dict]:
        out: list[dict] = []
        for p in self.physical_queues(name):
            out.extend(self._dlq_list_one(p, name, limit - len(out)))
        return out

    def _dlq_list_one(self, physical: str, name: str, limit: int) -> list[dict]:
        if limit <= 0:
            return []
        qk = self.keys.queue(physical)
        return [_dlq_item(entry_id, fields, name) for entry_id, fields in self.client.xrange(qk.dlq, count=limit)]

    def dlq_entries(self, physical: str, ids: list, client=None) -> list[dict]:
        """The dead letters of queue (or shard) ``physical`` with these entry ids, shaped as dlq_list's."""
        c = client or self.client
        dlq = self.keys.queue(physical).dlq
        pipe = c.pipeline(transaction=False)
        for i in ids:
            pipe.xrange(dlq, i, i)
        return [_dlq_item(rows[0][0], rows[0][1], logical_queue(physical)) for rows in pipe.execute() if rows]

    def dlq_requeue(self, name: str, ids: list[str] | None = None) -> int:
        """Move dead letters (all when ``ids`` is None) back to the queue (each to its own shard)."""
        return sum(self._dlq_requeue_one(p, ids) for p in self.physical_queues(name))

    def _dlq_requeue_one(self, name: str, ids: list[str] | None) -> int:
        qk = self.keys.queue(name)
        if ids is None:
            ids = [e[0].decode() for e in self.client.xrange(qk.dlq)]
        moved = 0
        fq = self.fair.get(name) if self.fair else None
        for i in range(0, len(ids), 1000):
            if fq is not None:  # back through the gate, in their groups
                moved += SCRIPTS.fair_requeue(self.client, [qk.dlq], [*fq.gate_args, *ids[i : i + 1000]])
            else:
                moved += SCRIPTS.requeue_dead(self.client, [qk.dlq, qk.streams[0]], ids[i : i + 1000])
        return moved

    def dlq_purge(self, name: str, ids: list[str] | None = None) -> int:
        """Delete dead letters (all when ``ids`` is None, else those entry ids); return how many."""
        n = 0
        for p in self.physical_queues(name):
            qk = self.keys.queue(p)
            if ids is None:
                n += self.client.xlen(qk.dlq)
                self.client.delete(qk.dlq)
            elif ids:
                n += self.client.xdel(qk.dlq, *ids)
        return n

    # --- worker names ---------------------------------------------------------------

    def read_worker(self, name: str) -> tuple[bytes | None, int]:
        """Worker ``name``'s registry entry (its last heartbeat, raw) and the key's TTL in ms."""
        key = self.keys.worker(name)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        raw, ttl_ms = pipe.execute()
        return raw, ttl_ms

    def claim_worker(self, name: str, expected: bytes | None, value: str, ttl: int) -> bool:
        """Write ``value`` as worker ``name``'s entry if it still is ``expected`` (None: absent)."""
        return bool(SCRIPTS.claim_name(self.client, [self.keys.worker(name)], [expected or b"", value, ttl]))

    # --- fair queues ----------------------------------------------------------------------

    def heal_fair(self, name: str, holder: str, lock_ms: int, client=None) -> int:
        """Recount fair queue ``name``'s gate from its streams and repair it, if no
        other worker did in the last ``lock_ms``: tenants whose count was wrong;
        -1: another worker holds the turn; -2: too many entries to scan this time."""
        return heal(client or self.client, self.fair[name], holder, lock_ms)

    def tenant_counts(self, name: str) -> dict[str, dict]:
        """Per tenant of fair queue ``name``: messages in its streams and in its backlog."""
        return tenant_counts(self.client, self.fair[name], self.keys.queue(name).fetch_order)

    def queues_with_gates(self, names: list[str]) -> list[str]:
        """Which of ``names`` have fair-queue keys in Redis (some process used them as fair)."""
        return queues_with_gates(self.client, self.keys.prefix, names)

    # --- periodic tasks (beat) ----------------------------------------------------------

    def beat_lock(self, holder: str, ttl_ms: int) -> tuple[int, float]:
        """Take or keep beat leadership for ``ttl_ms``: (2 taken now, 1 kept, 0 another
        beat leads; the server's clock in seconds, so every beat uses one clock)."""
        status, sec, usec = SCRIPTS.beat_lock(self.client, [self.keys.beat_leader], [holder, ttl_ms])
        return int(status), int(sec) + int(usec) / 1e6

    def beat_release(self, holder: str) -> None:
        """Give leadership up if ``holder`` has it, so a standby takes over at once."""
        SCRIPTS.beat_release(self.client, [self.keys.beat_leader], [holder])

    def beat_leader(self) -> str | None:
        """The id of the beat that leads now, if any."""
        v = self.client.get(self.keys.beat_leader)
        return v.decode(errors="replace") if v is not None else None

    def register_queues(self, names: list[str]) -> None:
        """Record queues as in use (``fastq queues``, the dashboard) before anything is sent to them."""
        if names:
            self.client.sadd(self.keys.queues_set, *sorted(names))

    def beat_due(self, queue: str, entry: str, anchor_ms: int | None = None) -> int | None:
        """The latest due time (epoch ms) sent for a periodic entry; with ``anchor_ms``,
        a new entry is anchored there first. A garbled value counts as none."""
        key = self.keys.beat_state(queue, entry)
        pipe = self.client.pipeline(transaction=False)
        if anchor_ms is not None:
            pipe.hsetnx(key, "due", anchor_ms)
        pipe.hget(key, "due")
        return _int_or_none(pipe.execute()[-1])

    def beat_states(self, entries: list[tuple[str, str]]) -> list[dict[str, int | None]]:
        """For each (queue, entry): the latest due time sent and when it was sent (epoch ms)."""
        pipe = self.client.pipeline(transaction=False)
        for queue, entry in entries:
            pipe.hmget(self.keys.beat_state(queue, entry), "due", "sent")
        return [{"due": _int_or_none(due), "sent": _int_or_none(sent)} for due, sent in pipe.execute()]

    # --- failure e-mail ------------------------------------------------------------

    def claim_mail_slot(self, task_name: str, holder: str, interval: float, client=None) -> int | None:
        """Take ``task_name``'s failure e-mail slot for ``interval`` seconds, cluster-wide:
        the failures folded since the last e-mail, or None when another worker has
        the slot (this failure is then counted for the next e-mail)."""
        c = client or self.client
        throttle = f"{self.keys.prefix}mail:throttle:{task_name}"
        folded = f"{self.keys.prefix}mail:folded:{task_name}"
        if c.set(throttle, holder, nx=True, px=max(1, int(interval * 1000))):
            return int(c.getdel(folded) or 0)
        pipe = c.pipeline(transaction=False)
        pipe.incr(folded)
        pipe.expire(folded, max(60, int(interval * 10)))
        pipe.execute()
        return None

    # --- rate limits ----------------------------------------------------------------

    def store_rate_limit(self, task_name: str, rate: float | None) -> None:
        """Set ``task_name``'s cluster-wide rate (None: unlimited) for every worker:
        its bucket uses the new rate at once, consumers see the override within a second."""
        bucket = self.keys.rate_bucket("task", task_name)
        pipe = self.client.pipeline(transaction=True)
        if rate is None:
            pipe.hset(self.keys.rate_overrides, task_name, "0")
            pipe.delete(bucket)
        else:
            pipe.hset(self.keys.rate_overrides, task_name, repr(rate))
            pipe.hset(bucket, "rate", repr(rate))
        pipe.execute()

    def rate_limit_overrides(self) -> dict[str, float | None]:
        """Rates set at run time, by task name (None: the limit was removed). A value
        that is not a number (anything may write the hash) is left out."""
        out: dict[str, float | None] = {}
        for raw_name, raw_rate in self.client.hgetall(self.keys.rate_overrides).items():
            try:
                rate = float(raw_rate)
            except ValueError:
                continue
            out[raw_name.decode(errors="replace")] = rate if rate > 0 else None
        return out

    def claim_rate(self, kind: str, name: str, rate: float, capacity: float, want: int) -> tuple[int, int]:
        """Take up to ``want`` tokens from the shared bucket of a ``kind`` ("task" or
        "queue") limit: (tokens granted, ms until one more may be there)."""
        granted, wait_ms, _ = SCRIPTS.rate_claim(self.client, [self.keys.rate_bucket(kind, name)],
                                                 [repr(rate), capacity, want])
        return int(granted), int(wait_ms)

    # --- events -----------------------------------------------------------------------

    def publish_events(self, hostname: str, batch: list) -> None:
        """Add a batch of events (``fastq.events`` tuples) to the stream now."""
        self.client.execute_command("XADD", self.keys.events, "MAXLEN", "~", EVENTS_MAXLEN, "*",
                                    "h", hostname, "e", encode_events(batch))

    def last_event_id(self) -> str:
        """The id of the newest entry ever added ("0-0" when there is none): a fixed
        place to read on from, so a reader that reconnects misses nothing."""
        if not self.client.exists(self.keys.events):
            return "0-0"
        return self.client.xinfo_stream(self.keys.events)["last-generated-id"].decode()

    def read_events(self, since: str, block_ms: int = 1000, count: int = 500,
                    client=None) -> list[tuple[str, str, dict]]:
        """Entries after ``since``, waiting up to ``block_ms`` for one: (entry id,
        worker hostname, fields). ``client``: a connection of the reader's own, so
        a blocking read does not hold one of the shared pool's."""
        c = client or self.client
        out = []
        for _stream, entries in c.xread({self.keys.events: since}, block=block_ms, count=count) or []:
            for entry_id, fields in entries:
                out.append((entry_id.decode(), fields.get(b"h", b"").decode(errors="replace"), fields))
        return out

    def recent_events(self, count: int) -> list[tuple[str, str, dict]]:
        """The newest ``count`` entries, oldest first, as ``read_events`` gives them."""
        rows = self.client.xrevrange(self.keys.events, count=count)
        return [(entry_id.decode(), fields.get(b"h", b"").decode(errors="replace"), fields)
                for entry_id, fields in reversed(rows)]

    def workers_seen(self, window: float) -> tuple[float, list[tuple[str, float, bytes | None]]]:
        """Workers whose last heartbeat is younger than ``window`` seconds: (the
        server's clock now, [(hostname, last heartbeat, its registry entry, raw)]).
        Heartbeats are stamped and aged on Redis's clock: the hosts' clocks may differ."""
        now = self.clock(self.keys.workers)
        rows = self.client.zrangebyscore(self.keys.workers, now - window, "+inf", withscores=True)
        if not rows:
            return now, []
        names = [h.decode(errors="replace") for h, _ in rows]
        infos = self.client.mget([self.keys.worker(h) for h in names])
        return now, [(h, ts, raw) for h, (_, ts), raw in zip(names, rows, infos, strict=True)]

    def heartbeat(self, hostname: str, info: str, ttl: int, client=None) -> None:
        """Worker ``hostname`` is alive: stamp it on Redis's clock (readers age it on
        the same clock) and keep ``info`` (JSON) as its registry entry for ``ttl`` s."""
        c = client or self.client
        now = self.clock(self.keys.workers, c)
        pipe = c.pipeline(transaction=False)
        pipe.zadd(self.keys.workers, {hostname: now})
        pipe.set(self.keys.worker(hostname), info, ex=ttl)
        pipe.execute()

    def deregister_worker(self, hostname: str, client=None) -> None:
        """Worker ``hostname`` stopped: drop it from the registry (a clean exit)."""
        c = client or self.client
        c.zrem(self.keys.workers, hostname)
        c.delete(self.keys.worker(hostname))

    def last_heartbeat(self, hostname: str) -> float | None:
        """When worker ``hostname`` last said it is alive (None: never, or forgotten)."""
        return self.client.zscore(self.keys.workers, hostname)

    # --- remote control ---------------------------------------------------------------

    @property
    def control_channel(self) -> str:
        """``<prefix>control`` plus the database number: pub/sub channels are shared
        by all databases of a server, so apps on different databases must not hear
        each other (kombu prefixes its fanout channels the same way)."""
        return f"{self.keys.control}:{self.db}"

    def send_control(self, body: str) -> None:
        """Publish a control command to the workers listening now."""
        self.client.publish(self.control_channel, body)

    def ask_workers(self, body: str, reply_to: str, expected: int, timeout: float) -> list[bytes]:
        """Publish a control command and collect the replies sent to ``reply_to``
        for at most ``timeout`` seconds (sooner once ``expected`` came, when > 0)."""
        return ask(self.client, self.control_channel, body, reply_to, expected, timeout)

    def subscribe_control(self) -> Subscription:
        """A worker's subscription to the control channel, on connections of its own."""
        return Subscription(self.new_client(), self.control_channel)

    def held_entries(self, name: str, consumers: list[str], limit: int, client=None) -> list[tuple[bytes, str]]:
        """(entry id, consumer) of queue ``name``'s messages that ``consumers`` hold
        (fetched, not acked), at most ``limit``."""
        c = client or self.client
        out: list[tuple[bytes, str]] = []
        for stream in self.keys.queue(name).fetch_order:
            for consumer in consumers:
                try:
                    rows = c.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=limit,
                                            consumername=consumer)
                except ResponseError:  # no stream or group yet: nothing is held
                    continue
                out.extend((r["message_id"], consumer) for r in rows)
                if len(out) >= limit:
                    return out[:limit]
        return out

    def delayed_members(self, name: str, limit: int, client=None) -> list[tuple[bytes, float]]:
        """The first ``limit`` messages of queue ``name``'s delayed set: (member, due epoch ms)."""
        c = client or self.client
        return c.zrange(self.keys.queue(name).delayed, 0, limit - 1, withscores=True)

    # --- revokes ------------------------------------------------------------------------

    def revoke(self, task_ids: list[str], until: float) -> None:
        """Keep ``task_ids`` revoked until ``until`` (epoch seconds), for workers
        started later too; ids whose time is up are dropped on the way."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.keys.revoked, {i: until for i in task_ids})
        pipe.zremrangebyscore(self.keys.revoked, "-inf", time.time())
        pipe.execute()

    def is_revoked(self, task_id: str) -> bool:
        return self.client.zscore(self.keys.revoked, task_id) is not None

    def revoked(self, client=None) -> dict[str, float]:
        """Task ids revoked now, with when each revoke ends (epoch seconds)."""
        c = client or self.client
        return {i.decode(errors="replace"): until
                for i, until in c.zrangebyscore(self.keys.revoked, time.time(), "+inf", withscores=True)}

    def revoke_stamps(self, stamps: dict[str, list], until: float) -> None:
        """Keep tasks stamped with these values revoked until ``until`` (epoch
        seconds); each value is one member, JSON ``[name, value]``."""
        members = {json.dumps([name, v], sort_keys=True): until for name, values in stamps.items() for v in values}
        pipe = self.client.pipeline(transaction=False)
        if members:
            pipe.zadd(self.keys.revoked_stamps, members)
        pipe.zremrangebyscore(self.keys.revoked_stamps, "-inf", time.time())
        pipe.execute()

    def revoked_stamps(self, client=None) -> list[tuple[str, Any, float]]:
        """Stamp values revoked now: (name, value, when the revoke ends). A member
        that is not JSON ``[name, value]`` (written by something else) is skipped."""
        c = client or self.client
        out = []
        for member, until in c.zrangebyscore(self.keys.revoked_stamps, time.time(), "+inf", withscores=True):
            try:
                item = json.loads(member)
            except ValueError:
                item = None
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                log.warning("Skipped a malformed revoked stamp in %s: %r", self.keys.revoked_stamps, member[:100])
                continue
            out.append((item[0], item[1], until))
        return out

    # --- namespaces -----------------------------------------------------------------

    def delete_prefixed(self, prefix: str) -> int:
        """Delete every key whose name starts with ``prefix`` (SCAN, never FLUSHDB:
        the database may hold other data). ``fastq bench`` drops its own run's keys
        with it. Returns how many were deleted."""
        pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix) + "*"
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += self._unlink(batch)
                batch = []
        return deleted + (self._unlink(batch) if batch else 0)

    def _unlink(self, keys: list[bytes]) -> int:
        pipe = self.client.pipeline(transaction=False)  # one key a command: fine on a cluster too
        for key in keys:
            pipe.unlink(key)
        return sum(pipe.execute())


def _pairs(reply) -> dict:
    if isinstance(reply, dict):
        return reply
    return {reply[k]: reply[k + 1] for k in range(0, len(reply) - 1, 2)}


def _int_or_none(raw) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _events_command(key: str, hostname: str, batch: list) -> bytes:
    return pack_command((b"XADD", key, b"MAXLEN", b"~", EVENTS_MAXLEN, b"*", b"h", hostname, b"e", encode_events(batch)))


def _dlq_item(entry_id: bytes, fields: dict, queue: str) -> dict:
    """A dead-letter entry: id, queue, payload (bytes) and serializer, and its text fields (reason, error, dc, ...)."""
    item = {"id": entry_id.decode(), "queue": queue}
    for k, v in fields.items():
        k = k.decode()
        if k in ("p", "j"):
            item["payload"] = v
            item["serializer"] = "msgpack" if k == "p" else "json"
        else:
            item[k] = v.decode(errors="replace")
    return item


def _parse_shards(value) -> dict[str, int]:
    """``queue_shards`` ({"default": 8}) checked: queue names, and 1..1024 shards."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"queue_shards must be a dict like {{'default': 8}}, not {value!r}")
    out = {}
    for name, n in value.items():
        validate_queue_name(name)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
            raise ImproperlyConfigured(f"queue_shards[{name!r}] must be a whole number of shards from 1 to 1024, not {n!r}")
        out[name] = n
    return out
