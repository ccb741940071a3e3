"""The broker contract: what the producer, the worker and the tools may ask a broker.

``Broker`` names every operation the code above ``fastq.broker`` uses, each for
what it does (publish, renew a lease, dead-letter, claim a worker name), so a
second broker (RabbitMQ) is a second subclass, not a change to app, task,
canvas or worker code. ``RedisBroker`` is the first; ``tests/test_broker_contract.py``
fails when code above the broker uses a broker attribute this class does not name.

Two parts are still Redis-shaped, and say so:

- *Packed commands*: the hot path (the compiled core and the consumer loop)
  sends RESP commands packed once, and several sends are one round trip. The
  broker builds them (``publish_commands``, ``unique_publish_commands``, ...)
  and runs them (``execute_packed``); callers only carry them.
- *Connections of one's own* (``new_client``, ``new_channel``): a thread that
  blocks (a consumer's fetch, the event feed, the maintenance loop) takes a
  connection nobody else waits behind, and hands it back to the broker's
  methods (``client=``); a consumer's channel carries the packed commands
  above. Code above the broker only passes these on, closes them, or sends and
  reads what the broker built on a channel.

*Raw access* (``client``, ``keys``) is left only to ``fastq bench``, which
measures Redis itself (its memory use, a pipelined fill); the contract test
lists it, so the list can only shrink.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from typing import Any


class Broker(abc.ABC):
    """Queues, leases, dead letters and the worker registry, as fastq uses them.

    Terms: a *queue* is the name a task is routed to; it may stand for several
    *physical* queues (shards). A *lease* is a fetched message's in-flight record:
    its consumer renews it while the message waits or runs; an expired lease is
    *reaped* (the message goes back, or to the dead letters after too many
    deliveries). *Releasing* hands unstarted messages back at once."""

    #: the broker's URL (log it with ``safe_url``: it may hold a password)
    url: str
    #: the fair queues' gate settings by queue name (``task_queues``), read-only:
    #: read (and checked) when the broker is built
    fair: dict
    #: replicas that must confirm each send before it returns (0: none);
    #: the asyncio producer sends such messages on the sync path, which waits
    wait_replicas: int

    # --- connection -------------------------------------------------------------

    @abc.abstractmethod
    def check_connection(self, wait: float = 0.0) -> None:
        """Reach the server, retrying for up to ``wait`` s; else BrokerError (one line)."""

    @abc.abstractmethod
    def retrying(self) -> contextlib.AbstractContextManager[None]:
        """A block in which a lost connection becomes BrokerError naming the server."""

    @abc.abstractmethod
    def clock(self, key: str, client: Any = None) -> float:
        """Seconds since the epoch on the server holding ``key``: the clock that
        heartbeats and due times are measured on, whatever the hosts' clocks say."""

    @property
    @abc.abstractmethod
    def is_cluster(self) -> bool:
        """Whether keys are spread over several servers (commands route by key)."""

    @property
    @abc.abstractmethod
    def db(self) -> int:
        """The database number (0 on a cluster): part of the control channel's
        name, since pub/sub channels are shared by all databases of a server."""

    @abc.abstractmethod
    def connection_options(self) -> dict:
        """Timeouts and protocol options for a connection of one's own (the
        asyncio consumer opens its channels with them)."""

    # --- sending ------------------------------------------------------------------

    @abc.abstractmethod
    def publish(self, queue: str, priority: int, field: bytes, payload: bytes, due: float | None = None) -> None:
        """Send one encoded message (``due``: not before this epoch second)."""

    @abc.abstractmethod
    async def publish_async(self, queue: str, priority: int, field: bytes, payload: bytes,
                            due: float | None = None) -> None:
        """``publish`` for async code: the same commands, on the running loop's connection."""

    @abc.abstractmethod
    def publish_many(self, batch: list[tuple], field: bytes) -> None:
        """Send ``(queue, priority, due, payload)`` messages in as few round trips as possible."""

    @abc.abstractmethod
    def publish_commands(self, queue: str, priority: int, field: bytes, payload: bytes,
                         due: float | None = None) -> list[bytes]:
        """The packed commands that send one message (through a fair queue's gate
        when ``queue`` is fair); run them with ``execute_packed`` or join them to others."""

    @abc.abstractmethod
    def publish_many_commands(self, batch: list[tuple], field: bytes) -> list[bytes]:
        """``publish_many`` as packed commands."""

    @abc.abstractmethod
    def unique_lock(self, queue: str, key: str) -> str:
        """The name of a unique send's lock (the message carries it to the worker)."""

    @abc.abstractmethod
    def debounce_record(self, queue: str, key: str) -> str:
        """The name of a debounce window's record."""

    @abc.abstractmethod
    def unique_publish_commands(self, queue: str, priority: int, field: bytes, payload: bytes, due: float | None,
                                lock: str, ttl_ms: int, task_id: str) -> list[bytes]:
        """Send unless ``lock`` is held: the lock and the send in one atomic step
        (the reply is the holder's task id)."""

    @abc.abstractmethod
    def debounce_commands(self, queue: str, priority: int, field: bytes, payload: bytes, due: float,
                          record: str, record_ttl_ms: int, task_id: str) -> list[bytes]:
        """Send at ``due``, replacing the message still waiting in the window ``record`` names."""

    @abc.abstractmethod
    def beat_send_command(self, entry: str, queue: str, priority: int, field: bytes, payload: bytes,
                          due_ms: int, task_id: str) -> bytes:
        """Send a periodic task's message once per due time, whichever beat process asks first."""

    @abc.abstractmethod
    def execute_packed(self, commands: list[bytes], confirm: bool = False) -> list:
        """Run packed commands in one round trip, retrying lost connections
        (``confirm``: wait for the configured replicas, for sends)."""

    @abc.abstractmethod
    async def execute_packed_async(self, commands: list[bytes]) -> list:
        """``execute_packed`` for async code: the replies (an error reply is raised);
        concurrent calls on one event loop share round trips."""

    @abc.abstractmethod
    def start_packed(self, commands: list[bytes]) -> tuple:
        """Write packed commands now and read the replies later (``finish_packed``):
        the producer's bulk send overlaps its encoding with the round trip."""

    @abc.abstractmethod
    def finish_packed(self, handle: tuple) -> list:
        """The replies to what ``start_packed`` sent."""

    # --- queues ---------------------------------------------------------------------

    @abc.abstractmethod
    def ensure_queue(self, name: str, client: Any = None) -> Any:
        """Create the physical queue ``name`` if needed (idempotent); its keys."""

    @abc.abstractmethod
    def known_queues(self) -> list[str]:
        """Every queue some producer or worker has used."""

    @abc.abstractmethod
    def expand_queues(self, names: list[str]) -> list[str]:
        """Physical queues (shards) behind queue names."""

    @abc.abstractmethod
    def queue_stats(self, name: str) -> dict:
        """Waiting, in flight, delayed and dead-lettered counts of a queue."""

    @abc.abstractmethod
    def purge(self, name: str) -> int:
        """Delete a queue's waiting messages; how many."""

    @abc.abstractmethod
    def delete_prefixed(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (the benchmark's own namespace); how many."""

    # --- fetching (what a consumer sends on its own channel) ---------------------------

    @abc.abstractmethod
    def ping(self) -> None:
        """One round trip; raises the connection's error."""

    @abc.abstractmethod
    def streams_of(self, name: str) -> list[str]:
        """A queue's streams, in fetch order."""

    @abc.abstractmethod
    def output_command(self, out: Any, hostname: str, gates: dict | None,
                       with_results: bool = True) -> tuple[bytes, int, bool]:
        """A consumer's finished work as one write: (bytes, replies, in a transaction)."""

    @abc.abstractmethod
    def load_scripts(self) -> None:
        """Make the server-side scripts available again (after a server restart)."""

    @abc.abstractmethod
    def fetch_command(self, name: str, consumer: str, count: int) -> bytes:
        """Take up to ``count`` ready messages of a queue for ``consumer``, without waiting."""

    @abc.abstractmethod
    def blocking_fetch_commands(self, names: list[str], consumer: str, count: int, block_ms: int) -> list[bytes]:
        """Wait up to ``block_ms`` for messages of the queues (one command, or several taken in turn)."""

    @abc.abstractmethod
    def held_command(self, stream: str, consumer: str) -> bytes:
        """Read back what ``consumer`` holds on a stream (after a reconnect)."""

    @abc.abstractmethod
    def ack_entry(self, stream: str, entry_id: bytes, client: Any = None) -> None:
        """Acknowledge one message now, outside a consumer's flush."""

    # --- leases ---------------------------------------------------------------------

    @abc.abstractmethod
    def renew(self, name: str, consumers: list[str], min_idle_ms: int, client: Any = None) -> int:
        """Renew the leases of these consumers' messages; how many."""

    @abc.abstractmethod
    def reap(self, name: str, reaper: str, lease_ms: int, max_deliveries: int, lock_ms: int, client: Any = None):
        """Take back messages whose lease expired (dead letters past ``max_deliveries``)."""

    @abc.abstractmethod
    def promote(self, name: str, limit: int = 1000, client: Any = None) -> int:
        """Move delayed messages that are due into their queue; how many."""

    @abc.abstractmethod
    def promote_commands(self, names: list[str], limit: int = 1000) -> list[bytes]:
        """``promote`` for many queues, as packed commands to send in one write."""

    @abc.abstractmethod
    def release(self, stream: str, queue: str, consumer: str, ids: list, strike: bytes = b"",
                client: Any = None) -> list:
        """Hand back unstarted messages this consumer holds, to the front of their priority."""

    @abc.abstractmethod
    def pending_of(self, stream: str, consumer: str, client: Any = None) -> list[bytes]:
        """The message ids a consumer holds on one stream."""

    @abc.abstractmethod
    def release_consumer(self, name: str, consumer: str, strike: bytes = b"", client: Any = None) -> list:
        """Hand back everything one consumer holds on a queue."""

    @abc.abstractmethod
    def release_worker(self, name: str, worker: str, strike: bytes = b"*", client: Any = None) -> list:
        """Hand back everything a (dead or stopping) worker's consumers hold on a queue."""

    @abc.abstractmethod
    def read_entry(self, name: str, entry_id: bytes, client: Any = None) -> tuple[str, dict] | None:
        """One message by id, wherever it waits: (stream, fields), or None."""

    @abc.abstractmethod
    def gate_args(self, queue: str) -> tuple:
        """What the lease scripts take for ``queue``'s fair gate (none for a plain queue)."""

    # --- a message's end (added to the flush that acks it) ----------------------------

    @abc.abstractmethod
    def bury_command(self, stream: str, queue: str, consumer: str, entry_id: bytes, reason: str | bytes,
                     error: str | bytes) -> bytes:
        """Move one held message to the dead letters with a reason, atomically."""

    @abc.abstractmethod
    def retry_command(self, stream: str, queue: str, consumer: str, entry_id: bytes, priority: int, due: bytes,
                      arg5: bytes, arg6: bytes) -> bytes:
        """Move one held message to the delayed set, due at ``due`` (a retry, a rate-limit wait)."""

    @abc.abstractmethod
    def unique_release_command(self, lock: str, task_id: str) -> bytes:
        """Free a unique lock if ``task_id`` still holds it."""

    # --- chords ---------------------------------------------------------------------

    @abc.abstractmethod
    def chord_open_commands(self, chord_id: str, size: int | None, body: bytes, expires: int) -> list[bytes]:
        """Record a chord (its size and body) before its header tasks are sent; size
        None: not known yet (``chord_seal`` gives it), and until then it cannot complete."""

    @abc.abstractmethod
    def chord_done(self, chord_id: str, mode: bytes | str, index: int, value: bytes, expires: int,
                   redelivered: bool = False) -> list:
        """Count one header task's result or failure; the reply says whether this
        call decided the chord (then: the body, and the results or the error). The
        index that decided gets the decision again only from a ``redelivered``
        message (its first run died before acting on it)."""

    @abc.abstractmethod
    def chord_seal(self, chord_id: str, size: int, expires: int) -> list:
        """A chord opened with no size (its header a generator, sent as it yields)
        gets its size; the reply says whether every header task had finished
        already (then this call completed it: the body and the results)."""

    @abc.abstractmethod
    def chord_reopen_commands(self, chord_id: str) -> list[bytes]:
        """Forget a chord that ran to its end, so the same (frozen) chord can run again."""

    @abc.abstractmethod
    def chord_grow(self, chord_id: str) -> int:
        """Add one header task to a chord (its size grows by one); its header index."""

    @abc.abstractmethod
    def chord_sent_commands(self, chord_id: str) -> list[bytes]:
        """The chord's body went out: forget what a replay no longer needs."""

    # --- dead letters ---------------------------------------------------------------

    @abc.abstractmethod
    def dlq_list(self, name: str, limit: int = 100) -> list[dict]:
        """The newest dead letters of a queue, with their reasons."""

    @abc.abstractmethod
    def dlq_entries(self, physical: str, ids: list, client: Any = None) -> list[dict]:
        """Dead letters by id."""

    @abc.abstractmethod
    def dlq_requeue(self, name: str, ids: list[str] | None = None) -> int:
        """Send dead letters back to their queue (all when ``ids`` is None); how many."""

    @abc.abstractmethod
    def dlq_purge(self, name: str, ids: list[str] | None = None) -> int:
        """Delete dead letters (all when ``ids`` is None); how many."""

    # --- worker registry --------------------------------------------------------------

    @abc.abstractmethod
    def read_worker(self, name: str) -> tuple[bytes | None, int]:
        """Who holds the worker name ``name`` and for how many more milliseconds."""

    @abc.abstractmethod
    def claim_worker(self, name: str, expected: bytes | None, value: str, ttl: int) -> bool:
        """Take the name if its holder is still ``expected`` (compare and set)."""

    # --- fair queues ----------------------------------------------------------------------

    @abc.abstractmethod
    def heal_fair(self, name: str, holder: str, lock_ms: int, client: Any = None) -> int:
        """Recount a fair queue's gate from its streams and repair it (one worker per interval)."""

    @abc.abstractmethod
    def tenant_counts(self, name: str) -> dict[str, dict]:
        """Per tenant of a fair queue: ``{"active": n, "backlog": n}``."""

    @abc.abstractmethod
    def queues_with_gates(self, names: list[str]) -> list[str]:
        """Which of ``names`` some process used as fair queues."""

    # --- periodic tasks (beat) ------------------------------------------------------------

    @abc.abstractmethod
    def beat_lock(self, holder: str, ttl_ms: int) -> tuple[int, float]:
        """Take or keep leadership: (2 taken, 1 kept, 0 another leads; server clock, seconds)."""

    @abc.abstractmethod
    def beat_release(self, holder: str) -> None:
        """Give leadership up if ``holder`` has it."""

    @abc.abstractmethod
    def beat_leader(self) -> str | None:
        """Who leads now."""

    @abc.abstractmethod
    def register_queues(self, names: list[str]) -> None:
        """Record queues as in use before anything is sent to them."""

    @abc.abstractmethod
    def beat_due(self, queue: str, entry: str, anchor_ms: int | None = None) -> int | None:
        """The latest due time sent for an entry (a new one anchored at ``anchor_ms``)."""

    @abc.abstractmethod
    def beat_states(self, entries: list[tuple[str, str]]) -> list[dict[str, int | None]]:
        """Latest due time and send time of each (queue, entry)."""

    # --- failure e-mail -----------------------------------------------------------------

    @abc.abstractmethod
    def claim_mail_slot(self, task_name: str, holder: str, interval: float, client: Any = None) -> int | None:
        """Take a task's e-mail slot for ``interval`` s: failures folded since, or None if taken."""

    # --- rate limits ------------------------------------------------------------------

    @abc.abstractmethod
    def store_rate_limit(self, task_name: str, rate: float | None) -> None:
        """Set a task's rate for the whole cluster, at once (None: no limit)."""

    @abc.abstractmethod
    def rate_limit_overrides(self) -> dict[str, float | None]:
        """Rates set at run time, by task name (None: the limit was removed)."""

    @abc.abstractmethod
    def claim_rate(self, kind: str, name: str, rate: float, capacity: float, want: int) -> tuple[int, int]:
        """Take up to ``want`` tokens from a shared bucket: (granted, ms until the next)."""

    # --- events -----------------------------------------------------------------------

    @abc.abstractmethod
    def publish_events(self, hostname: str, batch: list) -> None:
        """Add a batch of events now."""

    @abc.abstractmethod
    def last_event_id(self) -> str:
        """Where a reader starting now reads on from."""

    @abc.abstractmethod
    def read_events(self, since: str, block_ms: int = 1000, count: int = 500,
                    client: Any = None) -> list[tuple[str, str, dict]]:
        """Batches after ``since``: (id, worker hostname, fields), waiting up to ``block_ms``."""

    @abc.abstractmethod
    def recent_events(self, count: int) -> list[tuple[str, str, dict]]:
        """The newest ``count`` batches, oldest first."""

    @abc.abstractmethod
    def workers_seen(self, window: float) -> tuple[float, list[tuple[str, float, bytes | None]]]:
        """Workers heard from in the last ``window`` s: (server now, [(name, last heartbeat, entry)])."""

    @abc.abstractmethod
    def heartbeat(self, hostname: str, info: str, ttl: int, client: Any = None) -> None:
        """A worker is alive; keep ``info`` as its registry entry for ``ttl`` s."""

    @abc.abstractmethod
    def deregister_worker(self, hostname: str, client: Any = None) -> None:
        """A worker stopped cleanly."""

    @abc.abstractmethod
    def last_heartbeat(self, hostname: str) -> float | None:
        """When a worker last said it is alive."""

    # --- remote control ---------------------------------------------------------------

    @property
    @abc.abstractmethod
    def control_channel(self) -> str:
        """Where control commands for this app's workers go."""

    @abc.abstractmethod
    def send_control(self, body: str) -> None:
        """Send a control command to the workers up now."""

    @abc.abstractmethod
    def ask_workers(self, body: str, reply_to: str, expected: int, timeout: float) -> list[bytes]:
        """Send a control command and collect the replies to ``reply_to`` for ``timeout`` s."""

    @abc.abstractmethod
    def subscribe_control(self) -> Any:
        """A worker's subscription: ``next(timeout)``, ``reply(reply_to, body)``, ``close()``, ``client``."""

    @abc.abstractmethod
    def held_entries(self, name: str, consumers: list[str], limit: int, client: Any = None) -> list[tuple[bytes, str]]:
        """(entry id, consumer) of the messages ``consumers`` hold."""

    @abc.abstractmethod
    def delayed_members(self, name: str, limit: int, client: Any = None) -> list[tuple[bytes, float]]:
        """The first delayed messages of a queue: (member, due epoch ms)."""

    @abc.abstractmethod
    def queue_totals(self, names: list[str]) -> dict[str, tuple[int, int] | None]:
        """queue -> (messages ever added, messages present), for rates."""

    @abc.abstractmethod
    def stream_entries(self, name: str, limit: int) -> Iterator[tuple[str, bytes, dict]]:
        """(stream, entry id, fields) of a queue's ready and held messages."""

    @abc.abstractmethod
    def is_held(self, stream: str, entry_id: bytes) -> bool:
        """Has a consumer fetched this message and not acked it?"""

    # --- revokes ------------------------------------------------------------------------

    @abc.abstractmethod
    def revoke(self, task_ids: list[str], until: float) -> None:
        """Keep tasks revoked until ``until`` (epoch seconds), for workers started later too."""

    @abc.abstractmethod
    def is_revoked(self, task_id: str) -> bool:
        """Is the task revoked now?"""

    @abc.abstractmethod
    def revoked(self, client: Any = None) -> dict[str, float]:
        """Every task revoked now, with when its revoke ends."""

    @abc.abstractmethod
    def revoke_stamps(self, stamps: dict[str, list], until: float) -> None:
        """Keep tasks stamped with these values (stamp name -> values) revoked until ``until``."""

    @abc.abstractmethod
    def revoked_stamps(self, client: Any = None) -> list[tuple[str, Any, float]]:
        """Every stamp value revoked now: (stamp name, value, when its revoke ends)."""

    # --- connections of one's own (see the module docstring) ---------------------------

    @abc.abstractmethod
    def new_client(self, **overrides: Any) -> Any:
        """A client of the server's own library, with its own connections."""

    @abc.abstractmethod
    def new_channel(self, **overrides: Any) -> Any:
        """A raw channel for packed commands, owned by the caller (one per consumer)."""

    @abc.abstractmethod
    def new_async_channel(self, **overrides: Any) -> Any:
        """The same for an asyncio consumer: ``await send``, ``read``, ``read_many``, ``close``."""


def contract_names() -> set[str]:
    """Every name the contract gives callers: its methods, properties and attributes,
    plus the raw-access attributes a subclass sets in ``__init__``."""
    names = {n for n in vars(Broker) if not n.startswith("_")}
    names |= set(Broker.__annotations__)
    return names | RAW_ATTRIBUTES


#: Attributes a broker sets in ``__init__`` that only ``fastq bench`` still reads:
#: the default client and the key names.
RAW_ATTRIBUTES = {"client", "keys"}


__all__ = ["RAW_ATTRIBUTES", "Broker", "contract_names"]
