"""Redis key names. Every key of one queue carries the hash tag ``{queue}``, so
all of a queue's keys live in one Redis Cluster slot and every Lua script that
touches a queue touches one slot only. Result keys have no tag: they spread
over the cluster by task id.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import re

from ..exceptions import ImproperlyConfigured

#: Priorities run from 0 (lowest, the default) to 9 (highest).
PRIORITIES = range(10)
#: The consumer group every worker joins, on every stream.
CONSUMER_GROUP = "fastq"

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:@\-]{1,200}$")
#: Shard i of queue q is the queue "q~i" (``~`` is not allowed in queue names).
_SHARD = re.compile(r"^(?P<queue>.+)~\d{1,4}$")


def logical_queue(name: str) -> str:
    """The queue a shard belongs to ("default~3" -> "default"); other names unchanged."""
    m = _SHARD.match(name)
    return m["queue"] if m else name


def shard_names(name: str, shards: int) -> list[str]:
    return [f"{name}~{i}" for i in range(shards)]


def chord_keys(prefix: str, chord_id: str) -> tuple[str, str]:
    """A chord's state hash and results hash (one hash tag: one slot)."""
    base = f"{prefix}chord:{{{chord_id}}}"
    return f"{base}:m", f"{base}:r"


def validate_queue_name(name: str) -> str:
    if not isinstance(name, str) or not _QUEUE_NAME.match(logical_queue(name)):
        raise ImproperlyConfigured(
            f"invalid queue name {name!r}: use 1-200 of letters, digits and _ . : @ - (no braces or spaces)"
        )
    return name


class QueueKeys:
    """The keys of one queue."""

    __slots__ = ("by_name", "delayed", "dlq", "fetch_order", "name", "reap_lock", "returned", "returned_of", "streams")

    def __init__(self, prefix: str, name: str) -> None:
        validate_queue_name(name)
        base = f"{prefix}{{{name}}}"
        self.name = name
        #: streams[p] holds priority p's ready messages.
        self.streams = [f"{base}:s" if p == 0 else f"{base}:s{p}" for p in PRIORITIES]
        #: returned[p]: priority p's messages handed back unstarted (a warm stop, a dead
        #: pool child, a consumer that held them behind a long task). Served before
        #: the stream of the same priority and after every higher one, so a handed-back
        #: message keeps its place ahead of newer ones of its priority without
        #: overtaking a higher-priority message.
        self.returned = [f"{base}:ret" if p == 0 else f"{base}:ret{p}" for p in PRIORITIES]
        self.delayed = f"{base}:delayed"
        self.dlq = f"{base}:dlq"
        self.reap_lock = f"{base}:reap"
        #: The order fetch.lua serves streams in: returned 9, priority 9, ..., returned 0, priority 0.
        self.fetch_order = [k for p in reversed(PRIORITIES) for k in (self.returned[p], self.streams[p])]
        self.by_name = {k.encode(): k for k in self.fetch_order}
        #: stream -> the returned stream its messages are handed back to (the same priority)
        self.returned_of = {k: self.returned[p] for p in PRIORITIES for k in (self.returned[p], self.streams[p])}

    def stream(self, priority: int) -> str:
        return self.streams[priority]


class Keys:
    """All key names under one prefix (default ``fastq:``)."""

    def __init__(self, prefix: str = "fastq:") -> None:
        self.prefix = prefix
        self._queues: dict[str, QueueKeys] = {}
        self.queues_set = f"{prefix}queues"  #: every queue name ever used
        self.workers = f"{prefix}workers"  #: ZSET hostname -> last heartbeat
        self.revoked = f"{prefix}revoked"  #: ZSET task id -> expiry
        self.revoked_stamps = f"{prefix}revoked_stamps"  #: ZSET JSON [stamp name, value] -> expiry
        self.events = f"{prefix}events"  #: capped event stream
        self.control = f"{prefix}control"  #: pub/sub channel
        self.beat_leader = f"{prefix}beat:leader"  #: the leading beat's id, with a TTL
        self.rate_overrides = f"{prefix}rate_limits"  #: HASH task name -> rate set at run time ("0": none)

    def queue(self, name: str) -> QueueKeys:
        qk = self._queues.get(name)
        if qk is None:
            qk = self._queues[name] = QueueKeys(self.prefix, name)
        return qk

    def result(self, task_id: str) -> str:
        """Final result: a list whose first element is the first final state stored."""
        return f"{self.prefix}r:{task_id}"

    def state(self, task_id: str) -> str:
        """Latest non-final state (STARTED, RETRY, progress)."""
        return f"{self.prefix}st:{task_id}"

    def worker(self, hostname: str) -> str:
        return f"{self.prefix}worker:{hostname}"

    def unique_lock(self, queue: str, key: str) -> str:
        """A unique send's lock (its value: the holder's task id), in the queue's slot."""
        return f"{self.prefix}{{{queue}}}:u:{key}"

    def debounce_record(self, queue: str, key: str) -> str:
        """A debounce window's record (its task id and delayed member), in the queue's slot."""
        return f"{self.prefix}{{{queue}}}:db:{key}"

    def beat_state(self, queue: str, entry: str) -> str:
        """A periodic entry's HASH: the latest due time sent (``due``), when (``sent``),
        the task id (``id``). In its queue's hash slot, so the send script's keys
        live on one node of a cluster."""
        return f"{self.prefix}{{{queue}}}:beat:{entry}"

    def rate_bucket(self, kind: str, name: str) -> str:
        """The cluster-wide token bucket of a task or queue (``kind``) limit."""
        # The name is the hash tag: each bucket hashes on its own (Redis Cluster).
        return f"{self.prefix}rl:{kind}:{{{name}}}"
